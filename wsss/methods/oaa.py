"""OAA (Jiang et al., ICCV 2019 / TPAMI 2021): online attention accumulation (docs/methods.md, "OAA").

* :class:`OAAModule`: OAA's classifier (backbone, three 3x3 conv + ReLU "extra convs", a 1x1
  conv to C class maps, logits = GAP), trained with the multilabel soft-margin loss.
* :class:`OAAAccumulation`: a Callback keeping an :class:`~wsss.functional.oaa.AttentionAccumulator`
  keyed by image id. Saved at the end of training as ``<default_root_dir>/accumulated/<id>.npz``
  (``keys`` (K,) int64, ``maps`` (K, h, w) float32 at feature resolution of the image resized to
  long side ``size``); ``accumulated_to_cams`` turns them into make_cam's format.
* :class:`IAMModule`: OAA+'s integral attention model, same network, trained on the maps.

Deviation, and why: OAA reads the maps from the training forward, which it can only do because
it trains without crops or flips (ResizeShort 224, batch 1). Our classifier keeps random
rescale/flip/crop, whose parameters callbacks never see, so at each epoch end the callback runs
the model (eval mode, no grad) once over every un-augmented training image (long side ``size``)
and fuses those maps: one snapshot per epoch, as in OAA, and independent of the data order. The
same pass also covers ``val`` (``include_val``) so the protocol's held-out threshold images get
accumulated maps from the same snapshots; their labels only pick which maps are kept.
The attention drop layer likewise cannot map stored un-augmented maps onto a random crop, so it
uses the attention of the pre-update weights on the crop itself (one no-grad pass).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Subset

from wsss.data.datasets import ClassificationDataset
from wsss.data.transforms import build_eval_transform
from wsss.functional.oaa import (
    AttentionAccumulator,
    attention_drop,
    normalize_attention,
    oaa_iam_loss,
    oaa_topk_filter,
)
from wsss.methods.cam import ClassifierModule
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

log = logging.getLogger(__name__)

ACCUMULATED_DIR = "accumulated"


class OAAModule(ClassifierModule):
    """OAA classifier; accumulation and attention drop come from :meth:`configure_callbacks`.

    Args:
        extra_convs / extra_channels: OAA's three 3x3 conv (512) + ReLU layers on the backbone.
        accumulate: Attach :class:`OAAAccumulation` during ``fit``.
        accumulate_size: Long side of the accumulation pass (None: the train crop size).
        include_val: Also accumulate the data module's ``val_split`` images.
        attention_drop / drop_threshold / drop_p: OAA-drop (``--drop_layer``, 0.6, 0.5).
        init_std: Std of the N(0, std) init of the new convs (OAA: 0.01, made for a pretrained
            VGG16). None: Kaiming-normal (fan_in, ReLU) instead; with a randomly initialised
            backbone the 0.01 init shrinks the signal through the four new layers so much that
            the classifier only learns the label priors (see ``conf/method/oaa.yaml``).
    """

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float, extra_convs: int = 3, extra_channels: int = 512,
                 accumulate: bool = True, accumulate_size: int | None = None,
                 include_val: bool = True, attention_drop: bool = False,
                 drop_threshold: float = 0.6, drop_p: float = 0.5,
                 init_std: float | None = 0.01) -> None:  # fmt: skip
        super().__init__(backbone, num_classes, optimizer, new_lr_mult, poly_power)
        layers: list[nn.Module] = []
        width = self.backbone.out_channels
        for _ in range(extra_convs):
            layers += [nn.Conv2d(width, extra_channels, 3, padding=1), nn.ReLU(inplace=True)]
            width = extra_channels
        self.extra = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        for m in [*self.extra.modules(), self.classifier]:
            if isinstance(m, nn.Conv2d):  # OAA: N(0, 0.01) for every new conv
                if init_std is None:  # variance-preserving, for a from-scratch backbone
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)
        self.accumulate, self.accumulate_size, self.include_val = accumulate, accumulate_size, include_val
        self.attention_drop, self.drop_threshold, self.drop_p = attention_drop, drop_threshold, drop_p

    def class_maps(self, images: Tensor) -> Tensor:
        return self.classifier(self.extra(self.backbone(images)[self.backbone.last]))

    def forward(self, images: Tensor) -> Tensor:
        return self.class_maps(images).mean(dim=(2, 3))

    def cam(self, images: Tensor) -> Tensor:
        return self.class_maps(images)

    def new_parameters(self) -> Iterable[nn.Parameter]:
        yield from self.extra.parameters()
        yield from self.classifier.parameters()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = F.multilabel_soft_margin_loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def configure_callbacks(self) -> list[L.Callback]:
        if not self.accumulate:
            return []
        return [OAAAccumulation(size=self.accumulate_size, include_val=self.include_val,
                                attention_drop=self.attention_drop,
                                drop_threshold=self.drop_threshold, drop_p=self.drop_p)]


@torch.no_grad()
def _eval_maps(module: OAAModule, images: Tensor) -> tuple[Tensor, Tensor]:
    """Class maps and logits in eval mode (BN statistics untouched), then the mode restored."""
    was_training = module.training
    module.eval()
    try:
        maps = module.class_maps(images)
    finally:
        module.train(was_training)
    return maps, maps.mean(dim=(2, 3))


class OAAAccumulation(L.Callback):
    """Online attention accumulation (and optionally attention drop) during ``fit``.

    Args:
        size: Long side of the un-augmented accumulation input (None: the data module's crop).
        include_val: Also accumulate the data module's ``val_split``.
        out_dir: Where ``<id>.npz`` go (None: ``<trainer.default_root_dir>/accumulated``).
        attention_drop / drop_threshold / drop_p: OAA-drop settings.
        seed: Seed of the drop draws.
    """

    def __init__(self, size: int | None = None, include_val: bool = True,
                 out_dir: str | Path | None = None, attention_drop: bool = False,
                 drop_threshold: float = 0.6, drop_p: float = 0.5, seed: int = 0) -> None:  # fmt: skip
        self.size, self.include_val, self.out_dir = size, include_val, out_dir
        self.attention_drop, self.drop_threshold, self.drop_p = attention_drop, drop_threshold, drop_p
        self.seed = seed
        self.accumulator = AttentionAccumulator()
        self._generator: torch.Generator | None = None
        self._loader: DataLoader | None = None

    # -- attention drop ---------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: OAAModule, batch: dict,
                             batch_idx: int) -> None:  # fmt: skip
        # OAA drops only where a previous map exists, i.e. from the second epoch on.
        if not self.attention_drop or trainer.current_epoch == 0:
            return
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + trainer.global_rank)
        maps, _ = _eval_maps(pl_module, batch["image"])
        att = normalize_attention(maps) * batch["labels"][:, :, None, None]  # gt classes only
        batch["image"] = attention_drop(batch["image"].cpu(), att.cpu(), self.drop_threshold,
                                        self.drop_p, self._generator).to(batch["image"].device)

    # -- accumulation -----------------------------------------------------------------------
    def _build_loader(self, trainer: L.Trainer) -> DataLoader:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "source"):
            raise RuntimeError("OAAAccumulation needs a VOCDataModule passed to trainer.fit")
        crop = dm.crop_size if isinstance(dm.crop_size, int) else max(dm.crop_size)
        transform = build_eval_transform(mean=dm.mean, std=dm.std,
                                         resize_long_side=int(self.size or crop))
        parts = [ClassificationDataset(dm.source(dm.train_split), transform)]
        if self.include_val and dm.val_split != dm.train_split:
            parts.append(ClassificationDataset(dm.source(dm.val_split, dm.val_mask_dir), transform))
        dataset = ConcatDataset(parts)
        # every rank takes a fixed shard, so each id always lands on the same rank
        shard = Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size))
        return DataLoader(shard, batch_size=1, shuffle=False, num_workers=dm.num_workers)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: OAAModule) -> None:
        if trainer.current_epoch == 0:  # OAA skips epoch 0
            return
        if self._loader is None:
            self._loader = self._build_loader(trainer)
        for batch in tqdm(self._loader, desc=f"oaa accumulate (epoch {trainer.current_epoch})",
                          leave=False, disable=not trainer.is_global_zero):  # fmt: skip
            maps, logits = _eval_maps(pl_module, batch["image"].to(pl_module.device))
            labels = batch["labels"].to(logits.device)
            self.accumulator.update(batch["name"], labels, maps, trainer.current_epoch,
                                    trainer.max_epochs - 1, oaa_topk_filter(logits, labels))

    def on_train_end(self, trainer: L.Trainer, pl_module: OAAModule) -> None:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list = [None] * trainer.world_size
            dist.all_gather_object(states, self.accumulator.state_dict())
            merged = AttentionAccumulator()
            for state in states:  # shards are disjoint, so the union is the full set
                part = AttentionAccumulator()
                part.load_state_dict(state)
                merged.maps.update(part.maps)
            self.accumulator = merged
        if trainer.is_global_zero:
            out = Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / ACCUMULATED_DIR
            paths = self.accumulator.save_npz(out)
            log.info("OAA: wrote %d accumulated attention files to %s", len(paths), out)

    def state_dict(self) -> dict:
        return self.accumulator.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.accumulator.load_state_dict(state_dict)


class IAMModule(OAAModule):
    """OAA+ integral attention model: OAA's network, its 20 maps regressed onto the accumulated
    attention with :func:`~wsss.functional.oaa.oaa_iam_loss` (batches carry ``target``
    (B, C, H, W) at input resolution, see ``train_iam``)."""

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float, extra_convs: int = 3, extra_channels: int = 512,
                 positive_threshold: float = 0.001, init_std: float | None = 0.01) -> None:  # fmt: skip
        super().__init__(backbone, num_classes, optimizer, new_lr_mult, poly_power, extra_convs,
                         extra_channels, accumulate=False, init_std=init_std)
        self.positive_threshold = positive_threshold

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        pred = self.class_maps(batch["image"])
        # OAA computes the loss at feature resolution: bring the target down to it
        target = F.interpolate(batch["target"], size=pred.shape[-2:], mode="bilinear",
                               align_corners=False)
        loss = oaa_iam_loss(pred, target, self.positive_threshold)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss
