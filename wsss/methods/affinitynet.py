"""AffinityNet (PSA, Ahn & Kwak 2018; docs/methods.md, "PSA / AffinityNet"): a feature embedding whose L1 distances
predict whether two nearby pixels share a label.

Multi-level backbone features each go through a 1x1 conv + ELU branch, are resized to the finest
level's grid, concatenated and mixed by a 1x1 conv + ELU (the embedding). PSA uses ResNet-38
conv4/conv5/conv6 (all stride 8, 64/128/256 channels); here any backbone levels can be named.
Training pairs come from affinity-label crops (0 = bg, c + 1 = class, 255 = ignore) pooled to
the feature grid, and the loss is :func:`wsss.functional.affinity.affinity_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.labels import IGNORE
from wsss.functional.affinity import affinity_loss
from wsss.methods.base import WSSSModule
from wsss.models.backbones import create_backbone, deepest_levels


def majority_pool_label(label: Tensor, size: tuple[int, int], num_values: int = 21) -> Tensor:
    """Downscale a label map to ``size`` by a per-cell majority vote (ignore counts as a value).

    PSA average-pools its CRF *scores* 8x8 before the argmax; our affinity labels are stored as
    full-resolution PNGs (so they crop/flip with the image), and the vote over the cell is the
    closest label-space equivalent. Cells whose majority is ``255`` stay ignored.

    Shape:
        - label: ``(B, H, W)`` int, values in ``[0, num_values)`` or 255
        - output: ``(B, h, w)`` int64
    """
    index = torch.where(label == IGNORE, torch.full_like(label, num_values), label).long()
    one_hot = F.one_hot(index, num_values + 1).permute(0, 3, 1, 2).float()
    votes = F.adaptive_avg_pool2d(one_hot, size)
    winner = votes.argmax(dim=1)
    return torch.where(winner == num_values, torch.full_like(winner, IGNORE), winner)


class AffinityNetModule(WSSSModule):
    """Backbone + PSA affinity head; ``forward`` returns the embedding ``(B, D, h, w)``.

    Args:
        backbone: ``cfg.backbone`` (see :func:`~wsss.models.backbones.create_backbone`).
        feature_levels: Backbone levels feeding the branches; ``None`` = the three deepest
            levels of the backbone contract at stride >= 4 (PSA: ResNet-38 conv4/conv5/conv6;
            ResNet layer2..4; VGG-16 conv3..5).
        branch_channels: Output channels of each level's 1x1 branch (PSA: 64, 128, 256).
        output_stride: Overrides ``backbone.output_stride`` (PSA works at stride 8).
        radius: Pair radius of the loss (PSA: 5).
        branch_norm_groups: GroupNorm groups after each branch conv (``None``: no norm, PSA's
            ResNet-38 AffinityNet; PSA's VGG-16 AffinityNet: ``[8, 16, 32]``).
        backbone_overrides: :func:`~wsss.models.backbones.build_backbone` kwargs replacing the
            ``backbone`` config's (PSA's VGG-16 AffinityNet: ``{fc6_dilation: 4}`` while its
            classifier uses 1).
        optimizer, new_lr_mult, poly_power: see :class:`WSSSModule` (head at ``new_lr_mult``).
    """

    def __init__(self, backbone: dict, feature_levels: Sequence[str] | None, branch_channels: Sequence[int],
                 optimizer: Callable, new_lr_mult: float, poly_power: float,
                 output_stride: int | None = None, radius: int = 5,
                 branch_norm_groups: Sequence[int] | None = None,
                 backbone_overrides: dict | None = None) -> None:  # fmt: skip
        super().__init__(optimizer, new_lr_mult, poly_power)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        overrides = dict(backbone_overrides or {})
        if output_stride is not None:
            overrides["output_stride"] = output_stride
        self.backbone = create_backbone(backbone, **overrides)
        if feature_levels is None:
            feature_levels = deepest_levels(self.backbone, len(branch_channels), min_stride=4)
        if len(feature_levels) != len(branch_channels):
            raise ValueError(f"feature_levels {list(feature_levels)} and branch_channels "
                             f"{list(branch_channels)} must have the same length")  # fmt: skip
        unknown = [lv for lv in feature_levels if lv not in self.backbone.channels]
        if unknown:
            raise KeyError(f"feature_levels {unknown} not among backbone levels {list(self.backbone.channels)}")
        self.levels = list(feature_levels)
        self.radius = radius
        self.stride = min(self.backbone.strides[lv] for lv in self.levels)
        self.branches = nn.ModuleList(
            nn.Conv2d(self.backbone.channels[lv], c, 1, bias=False)
            for lv, c in zip(self.levels, branch_channels)
        )
        if branch_norm_groups is not None:
            if len(branch_norm_groups) != len(branch_channels):
                raise ValueError(f"branch_norm_groups {list(branch_norm_groups)} and branch_channels "
                                 f"{list(branch_channels)} must have the same length")  # fmt: skip
            self.branch_norms = nn.ModuleList(
                nn.GroupNorm(int(g), int(c)) for g, c in zip(branch_norm_groups, branch_channels)
            )
        else:
            self.branch_norms = None
        dim = int(sum(branch_channels))
        self.embed = nn.Conv2d(dim, dim, 1, bias=False)
        for conv in self.branches:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.embed.weight, gain=4)  # PSA f9 init

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, D, ceil(H/s), ceil(W/s)) embedding, s = stride."""
        feats = self.backbone(images)
        size = feats[min(self.levels, key=lambda lv: self.backbone.strides[lv])].shape[-2:]
        outs = []
        for i, (level, branch) in enumerate(zip(self.levels, self.branches)):
            out = branch(feats[level])
            if self.branch_norms is not None:
                out = self.branch_norms[i](out)
            out = F.elu(out)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            outs.append(out)
        return F.elu(self.embed(torch.cat(outs, dim=1)))

    def pretrained_parameters(self) -> Iterable[nn.Parameter]:
        return self.backbone.parameters()

    def new_parameters(self) -> Iterable[nn.Parameter]:
        norms = [] if self.branch_norms is None else list(self.branch_norms.parameters())
        return [*self.branches.parameters(), *norms, *self.embed.parameters()]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        features = self(batch["image"])
        label = majority_pool_label(batch["mask"], tuple(features.shape[-2:]))
        loss = affinity_loss(features, label, self.radius)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(features))
        return loss
