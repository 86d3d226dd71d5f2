"""CAM baseline (Zhou et al. 2016): backbone + GAP + 1x1 classifier, multilabel soft-margin loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MultilabelAveragePrecision

from wsss.functional.cam import cam
from wsss.methods.base import WSSSModule
from wsss.models.backbones import create_backbone


class ClassifierModule(WSSSModule):
    """Base for classifier methods whose CAMs feed the pseudo-label stages.

    Subclasses must implement :meth:`cam`: (B, 3, H, W) normalised images -> (B, C, h, w) raw
    foreground CAMs (no background channel, no ReLU needed: `make_cam` applies ReLU).
    """

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float) -> None:
        super().__init__(optimizer, new_lr_mult, poly_power)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.num_classes = num_classes
        self.backbone = create_backbone(backbone)
        self.val_map = MultilabelAveragePrecision(num_labels=num_classes, average=None)
        self._val_positives = torch.zeros(num_classes)

    def cam(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def pretrained_parameters(self) -> Iterable[nn.Parameter]:
        return self.backbone.parameters()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = F.multilabel_soft_margin_loss(logits, batch["labels"])
        self.log("val/loss", loss, batch_size=len(logits), sync_dist=True)
        self.val_map.update(logits.sigmoid(), batch["labels"].long())
        self._val_positives += batch["labels"].sum(0).cpu()

    def on_validation_epoch_end(self) -> None:
        per_class = self.val_map.compute().cpu()
        present = self._val_positives > 0  # AP is undefined for classes with no positive image
        if present.any():
            self.log("val/mAP", per_class[present].nanmean(), sync_dist=True)
        self.val_map.reset()
        self._val_positives.zero_()


class CAMModule(ClassifierModule):
    """The CAM baseline: logits = W · GAP(f), CAM_c = w_c · f(u) (docs/methods.md, "CAM baseline").

    ``sqrt_cam`` (default False): :meth:`cam` returns ``sqrt(relu(CAM))``, as PSA's VGG-16
    classifier does (``vgg16_cls.forward_cam``); the logits are unchanged.
    """

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float, sqrt_cam: bool = False) -> None:
        super().__init__(backbone, num_classes, optimizer, new_lr_mult, poly_power)
        self.sqrt_cam = bool(sqrt_cam)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def features(self, images: Tensor) -> Tensor:
        return self.backbone(images)[self.backbone.last]

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        pooled = self.features(images).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cam(self, images: Tensor) -> Tensor:
        maps = cam(self.features(images), self.classifier.weight)
        return F.relu(maps).sqrt() if self.sqrt_cam else maps

    def new_parameters(self) -> Iterable[nn.Parameter]:
        return self.classifier.parameters()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = F.multilabel_soft_margin_loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss
