"""DeepLab segmentation stage trained on pseudo-labels: dilated backbone + ASPP head."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from wsss.data.labels import IGNORE
from wsss.methods.base import SegmentationValidation, WSSSModule
from wsss.metrics.segmentation import SegmentationMetric
from wsss.models.backbones import create_backbone


class DeepLabModule(SegmentationValidation, WSSSModule):
    """DeepLab-v3 style segmenter over ``num_classes`` foreground classes plus background."""

    def __init__(self, backbone: dict, num_classes: int, atrous_rates: Sequence[int],
                 optimizer: Callable, new_lr_mult: float, poly_power: float) -> None:
        super().__init__(optimizer, new_lr_mult, poly_power)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.num_classes = num_classes + 1
        self.backbone = create_backbone(backbone)
        self.head = DeepLabHead(self.backbone.out_channels, self.num_classes, list(atrous_rates))
        self.val_metric = SegmentationMetric(self.num_classes, sync=True)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_classes, H, W) logits at input resolution."""
        logits = self.head(self.backbone(images)[self.backbone.last])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def pretrained_parameters(self) -> Iterable[nn.Parameter]:
        return self.backbone.parameters()

    def new_parameters(self) -> Iterable[nn.Parameter]:
        return self.head.parameters()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["mask"], ignore_index=IGNORE)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss
