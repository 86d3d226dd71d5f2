"""SEAM (Wang et al., CVPR 2020): self-supervised equivariant attention (docs/methods.md, "SEAM").

Wires the pure ops of :mod:`wsss.functional.seam` into a classifier: a ``C + 1`` channel CAM head
(background slot FIRST, as in ``SEAM:network/resnet38_SEAM.py``) and a pixel correlation module
(PCM) on detached lower-level features plus the image. Training uses two views, the crop and
its ``view_scale`` downscale (0.3 in SEAM), and the losses of ``SEAM:train_SEAM.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.functional.seam import (
    adaptive_min_pooling_loss,
    equivariant_cross_regularization,
    equivariant_regularization,
    max_norm,
    pcm,
)
from wsss.methods.cam import ClassifierModule


def default_pcm_layers(backbone: nn.Module) -> list[str]:
    """The two levels feeding SEAM's PCM: the two contract levels before ``last`` (ResNet-38:
    conv4/conv5 as SEAM; ResNet: layer2/layer3; VGG-16: conv3/conv4)."""
    names = list(backbone.levels)
    before = names[: names.index(backbone.last)]
    if len(before) < 2:
        raise ValueError(f"backbone has too few stages for the PCM: {names}; set method.pcm_layers")
    return before[-2:]


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    # SEAM resizes every map with bilinear align_corners=True
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class SEAMModule(ClassifierModule):
    """SEAM classifier: L = L_cls (+ L_rvmin) + L_ER + L_ECR, all weights 1.

    Args:
        view_scale: Downscale factor of the second view (SEAM 0.3).
        pcm_layers: Backbone feature names for the PCM (None: :func:`default_pcm_layers`).
        pcm_channels: Projection widths of those features (SEAM f8_3/f8_4: 64, 128).
        pcm_dim: Width of the PCM embedding (SEAM f9: 192).
        dropout: Dropout2d before the CAM head (SEAM 0.5).
        min_pool_loss: Add SEAM's code-only adaptive min-pooling term on the PCM output.
        ecr_topk: Fraction of hardest channel-pixels averaged in ECR (SEAM 0.2).
    """

    def __init__(self, backbone: dict, num_classes: int, optimizer: Callable, new_lr_mult: float,
                 poly_power: float, view_scale: float = 0.3, pcm_layers: Sequence[str] | None = None,
                 pcm_channels: Sequence[int] = (64, 128), pcm_dim: int = 192, dropout: float = 0.5,
                 min_pool_loss: bool = True, ecr_topk: float = 0.2) -> None:  # fmt: skip
        super().__init__(backbone, num_classes, optimizer, new_lr_mult, poly_power)
        self.view_scale, self.min_pool_loss, self.ecr_topk = view_scale, min_pool_loss, ecr_topk
        self.pcm_layers = list(pcm_layers) if pcm_layers else default_pcm_layers(self.backbone)
        if len(self.pcm_layers) != len(pcm_channels):
            raise ValueError(f"pcm_layers {self.pcm_layers} and pcm_channels {list(pcm_channels)} "
                             "must have the same length")
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes + 1, 1, bias=False)
        self.pcm_proj = nn.ModuleList(
            nn.Conv2d(self.backbone.channels[name], width, 1, bias=False)
            for name, width in zip(self.pcm_layers, pcm_channels)
        )
        self.pcm_fuse = nn.Conv2d(3 + sum(pcm_channels), pcm_dim, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        for proj in self.pcm_proj:
            nn.init.kaiming_normal_(proj.weight)
        nn.init.xavier_uniform_(self.pcm_fuse.weight, gain=4)  # SEAM's f9 init

    def maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw CAM and PCM output at feature resolution, both ``(B, C + 1, h, w)``, bg first."""
        feats = self.backbone(images)
        top = feats[self.backbone.last]
        cam = self.classifier(self.dropout(top))
        size = top.shape[-2:]
        parts = [_resize(images, size)]
        for name, proj in zip(self.pcm_layers, self.pcm_proj):
            # the PCM must not reshape the backbone: its inputs are detached, as in SEAM
            parts.append(F.relu(proj(_resize(feats[name].detach(), size))))
        return cam, pcm(cam, self.pcm_fuse(torch.cat(parts, dim=1)))

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) logits: GAP of the raw CAM's foreground channels."""
        return self.maps(images)[0].mean(dim=(2, 3))[:, 1:]

    def cam(self, images: Tensor) -> Tensor:
        """PCM-refined foreground maps (B, C, h, w), non-negative (SEAM infers from the PCM).

        SEAM min-max normalises these; ``make_cam`` max-normalises instead (after its ReLU).
        Since the PCM output is a non-negative propagation its minimum is usually ~0, so the
        two differ little; the background threshold absorbs the rest.
        """
        return self.maps(images)[1][:, 1:]

    def new_parameters(self) -> Iterable[nn.Parameter]:
        yield from self.classifier.parameters()
        yield from self.pcm_proj.parameters()
        yield from self.pcm_fuse.parameters()

    def _view(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cam, rv = self.maps(images)
        size = images.shape[-2:]
        return _resize(cam, size), _resize(rv, size)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        img1, labels = batch["image"], batch["labels"]
        img2 = F.interpolate(img1, scale_factor=self.view_scale, mode="bilinear",
                             align_corners=True)  # view 2 = A(view 1)
        cam1, rv1 = self._view(img1)
        cam2, rv2 = self._view(img2)
        loss_cls = 0.5 * (F.multilabel_soft_margin_loss(cam1.mean(dim=(2, 3))[:, 1:], labels)
                          + F.multilabel_soft_margin_loss(cam2.mean(dim=(2, 3))[:, 1:], labels))
        loss_min = cam1.new_zeros(())
        if self.min_pool_loss:
            loss_min = 0.5 * (adaptive_min_pooling_loss(rv1, labels)
                              + adaptive_min_pooling_loss(rv2, labels))
        mask = torch.cat([labels.new_ones(len(labels), 1), labels], dim=1)[:, :, None, None]
        size2 = img2.shape[-2:]
        y1 = _resize(max_norm(cam1), size2) * mask  # A(max_norm(y_o))
        p1 = _resize(max_norm(rv1), size2) * mask
        y2, p2 = max_norm(cam2) * mask, max_norm(rv2) * mask
        loss_er = equivariant_regularization(y1, y2)
        loss_ecr = (equivariant_cross_regularization(y2, p1, self.ecr_topk)
                    + equivariant_cross_regularization(y1, p2, self.ecr_topk))
        loss = loss_cls + loss_min + loss_er + loss_ecr
        n = len(labels)
        self.log_dict({"train/loss_cls": loss_cls, "train/loss_rvmin": loss_min,
                       "train/loss_er": loss_er, "train/loss_ecr": loss_ecr}, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss
