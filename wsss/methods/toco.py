"""ToCo (Ru et al., CVPR 2023): single-stage WSSS on a ViT with token contrast.

One network, trained from image labels only:
- a classifier (global max pooling + 1x1 conv) on the final patch tokens and an auxiliary one on
  the tokens of an intermediate block (``aux_layers``; block -3 in the paper);
- patch-token contrast (PTC) on the final tokens, supervised by the auxiliary CAM's confident labels;
- class-token contrast (CTC) between two global views and 8 local crops (positives: crops with
  uncertain CAM, negatives: crops that are mostly confident), through a projection head and its
  EMA teacher;
- a LargeFOV segmentation head trained (after ``seg_start_step``) on online pseudo-labels: the
  multi-scale CAM, thresholded and refined with PAR (:mod:`wsss.functional.par`).
``forward`` returns the segmentation logits, so ``eval_seg`` scores the head directly; ``cam`` gives
the final-layer CAMs for the usual make_cam -> DeepLab chain. Functional parts: wsss.functional.toco.
Not ported: the optional regularised (dense-CRF energy) loss, which needs a compiled C++ extension.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MultilabelAveragePrecision
from torchvision.transforms import v2

from wsss.functional import toco as T
from wsss.methods.base import WSSSModule
from wsss.models.backbones import create_backbone


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV head: two 3x3 convs (dilation 5) of ``width`` channels + 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ProjectionHead(nn.Module):
    """DINO-style head: MLP (GELU) -> L2 normalise -> linear layer with unit-norm rows (weight norm, g = 1)."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.kaiming_uniform_(self.last, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return F.linear(x, F.normalize(self.last, dim=1))


def warmup_poly_lambda(warmup_steps: int, total_steps: int, warmup_ratio: float, power: float) -> Callable[[int], float]:
    """ToCo's PolyWarmupAdamW: linear warmup from ``warmup_ratio`` x lr, then (1 - t/T)^power."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 1 - (1 - step / warmup_steps) * (1 - warmup_ratio)
        return max(1 - min(step, total_steps) / max(total_steps, 1), 0.0) ** power

    return factor


class ToCoModule(WSSSModule):
    def __init__(self, backbone, num_classes: int, optimizer: Callable, new_lr_mult: float = 10.0,
                 poly_power: float = 0.9, warmup_steps: int = 1500, warmup_ratio: float = 1e-6,
                 bkg_thre: float = 0.5, high_thre: float = 0.7, low_thre: float = 0.25,
                 cam_scales: Sequence[float] = (1.0, 0.5, 1.5), w_ptc: float = 0.2, w_ctc: float = 0.5,
                 w_seg: float = 0.1, seg_start_step: int = 2000, temp: float = 0.5, momentum: float = 0.9,
                 num_local_crops: int = 8, local_crop_size: int = 96, global_crop_scale: Sequence[float] = (0.4, 1.0),
                 proj_dim: int = 1024, proj_hidden_dim: int = 2048, proj_bottleneck_dim: int = 256,
                 decoder_width: int = 512, par_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                 par_iters: int = 10) -> None:
        super().__init__(optimizer, new_lr_mult, poly_power)
        self.save_hyperparameters(ignore=["optimizer", "backbone"], logger=False)
        self.backbone = create_backbone(backbone)
        aux = [k for k in self.backbone.channels if k != self.backbone.last]
        if not aux:
            raise ValueError("ToCo needs an intermediate ViT level for its auxiliary CAM: set backbone.aux_layers "
                             "(the paper: [-3])")
        self.aux_level = aux[0]
        dim = self.backbone.out_channels
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.decoder = LargeFOV(dim, num_classes + 1, decoder_width)
        self.proj_head = ProjectionHead(dim, proj_dim, proj_hidden_dim, proj_bottleneck_dim)
        self.proj_head_t = copy.deepcopy(self.proj_head).requires_grad_(False)
        self.val_map = MultilabelAveragePrecision(num_labels=num_classes, average=None)
        self._val_positives = torch.zeros(num_classes)
        mean, std = getattr(self.backbone, "mean", None), getattr(self.backbone, "std", None)
        self.register_buffer("mean", torch.tensor(mean or (0.485, 0.456, 0.406)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (0.229, 0.224, 0.225)).view(1, 3, 1, 1), persistent=False)

    # ---- inference ---------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C + 1, H/16, W/16) segmentation logits of the auxiliary head."""
        return self.decoder(self.backbone(images)[self.backbone.last])

    def cam(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16) raw CAMs of the final-layer classifier."""
        return F.conv2d(self.backbone(images)[self.backbone.last], self.classifier.weight)

    def _cams(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.backbone(images)
        return (F.conv2d(feats[self.backbone.last], self.classifier.weight),
                F.conv2d(feats[self.aux_level], self.aux_classifier.weight))

    @torch.no_grad()
    def multiscale_cams(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """ToCo's training-time CAMs: per scale max over flips, ReLU, summed over scales, min-max per map.

        Shape: (B, 3, H, W) -> two (B, C, H, W) maps in [0, 1] (final layer, auxiliary layer).
        """
        b, _, h, w = images.shape
        totals = [0.0, 0.0]
        for scale in self.hparams.cam_scales:
            x = images if scale == 1.0 else F.interpolate(images, size=(int(scale * h), int(scale * w)),
                                                          mode="bilinear", align_corners=False)
            outs = self._cams(torch.cat([x, x.flip(-1)]))
            for k, cam in enumerate(outs):
                cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
                totals[k] = totals[k] + F.relu(torch.max(cam[:b], cam[b:].flip(-1)))
        result = []
        for cam in totals:
            cam = cam - cam.amin(dim=(2, 3), keepdim=True)
            cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
            result.append(cam)
        return result[0], result[1]

    # ---- training ----------------------------------------------------------------------------
    def _pool_logits(self, feats: Tensor, head: nn.Conv2d) -> Tensor:
        return head(F.adaptive_max_pool2d(feats, 1)).flatten(1)

    @torch.no_grad()
    def _ema_update(self) -> None:
        m = self.hparams.momentum
        for p, p_t in zip(self.proj_head.parameters(), self.proj_head_t.parameters()):
            p_t.mul_(m).add_(p.detach(), alpha=1 - m)

    def _second_global_view(self, images: Tensor) -> Tensor:
        """A random resized crop (scale range ``global_crop_scale``) + flip of each image, same size."""
        h, w = images.shape[-2:]
        crop = v2.RandomResizedCrop((h, w), scale=tuple(self.hparams.global_crop_scale), antialias=True)
        views = [crop(img) for img in images]
        return torch.stack([v.flip(-1) if torch.rand(()) < 0.5 else v for v in views])

    def _denormalise(self, images: Tensor) -> Tensor:
        rgb = (images * self.std + self.mean).clamp(0, 1)
        return torch.floor(rgb * 255) / 255  # ToCo quantises to uint8 before PAR

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        hp = self.hparams
        images, labels = batch["image"], batch["labels"].float()
        valid = images.abs().amax(dim=1) > 0  # padding is exactly 0 after normalisation
        cams, cams_aux = self.multiscale_cams(images)
        roi = T.roi_mask(cams_aux, labels, hp.low_thre, hp.high_thre)
        local, flags = T.crop_local_views(images, roi, hp.num_local_crops, hp.local_crop_size)

        feats = self.backbone(images)
        tokens, tokens_aux = feats[self.backbone.last], feats[self.aux_level]
        logits = self._pool_logits(tokens, self.classifier)
        logits_aux = self._pool_logits(tokens_aux, self.aux_classifier)
        segs = self.decoder(tokens)

        # Class-token contrast: teacher on the two global views, student on global + local views.
        self._ema_update()
        cls_global = torch.cat([feats["cls"], self.backbone(self._second_global_view(images))["cls"]])
        cls_local = self.backbone(local.flatten(0, 1))["cls"]
        out_t = self.proj_head_t(cls_global.detach())
        out_s = self.proj_head(torch.cat([cls_global, cls_local]))
        loss_ctc = T.ctc_loss(out_s, out_t, flags, hp.temp)

        # Online pseudo-labels (PAR-refined) for the segmentation head.
        masked, _ = T.cam_to_label(cams, labels, hp.bkg_thre, hp.high_thre, hp.low_thre, ignore_mid=True,
                                   valid=valid)
        pseudo = T.refine_cams_with_bkg(self._denormalise(images), masked, labels, hp.high_thre, hp.low_thre,
                                        valid=valid, dilations=hp.par_dilations, num_iter=hp.par_iters)
        segs_full = F.interpolate(segs, size=pseudo.shape[-2:], mode="bilinear", align_corners=False)
        loss_seg = T.balanced_seg_loss(segs_full, pseudo)

        # Patch-token contrast, supervised by the auxiliary CAM's confident labels at token resolution.
        small_aux = F.interpolate(cams_aux, size=tokens.shape[-2:], mode="bilinear", align_corners=False)
        small_valid = F.interpolate(valid[:, None].float(), size=tokens.shape[-2:], mode="nearest")[:, 0] > 0
        _, label_aux = T.cam_to_label(small_aux, labels, hp.bkg_thre, hp.high_thre, hp.low_thre, ignore_mid=True,
                                      valid=small_valid)
        loss_ptc = T.masked_ptc_loss(tokens, T.label_to_aff_mask(label_aux))

        loss_cls = F.multilabel_soft_margin_loss(logits, labels)
        loss_cls_aux = F.multilabel_soft_margin_loss(logits_aux, labels)
        w_seg = hp.w_seg if self.global_step > hp.seg_start_step else 0.0
        loss = loss_cls + loss_cls_aux + hp.w_ptc * loss_ptc + hp.w_ctc * loss_ctc + w_seg * loss_seg
        n = len(images)
        for name, value in (("loss", loss), ("cls", loss_cls), ("cls_aux", loss_cls_aux), ("ptc", loss_ptc),
                            ("ctc", loss_ctc), ("seg", loss_seg)):
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=n)
        return loss

    # ---- validation: classification mAP (the seg head is scored by eval_seg) ------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        tokens = self.backbone(batch["image"])[self.backbone.last]
        logits = self._pool_logits(tokens, self.classifier)
        self.val_map.update(logits.sigmoid(), batch["labels"].long())
        self._val_positives += batch["labels"].sum(0).cpu()

    def on_validation_epoch_end(self) -> None:
        per_class = self.val_map.compute().cpu()
        present = self._val_positives > 0
        if present.any():
            self.log("val/mAP", per_class[present].nanmean(), sync_dist=True)
        self.val_map.reset()
        self._val_positives.zero_()

    # ---- optimisation: AdamW, 10x lr on new layers, linear warmup then poly ---------------------
    def pretrained_parameters(self) -> Iterable[nn.Parameter]:
        return self.backbone.parameters()

    def new_parameters(self) -> Iterable[nn.Parameter]:
        for module in (self.classifier, self.aux_classifier, self.proj_head, self.decoder):
            yield from module.parameters()

    def lr_lambda(self, total_steps: int):
        """ToCo's linear warmup, then poly decay (the base module builds the optimizer groups)."""
        return warmup_poly_lambda(self.hparams.warmup_steps, total_steps, self.hparams.warmup_ratio,
                                  self.poly_power)
