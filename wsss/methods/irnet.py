"""IRNet (Ahn, Cho & Kwak 2019; docs/methods.md, "IRNet"): class boundaries + instance displacements.

A *frozen* backbone (every stage output detached, kept in eval mode) feeds two branches that
both output at stride 4 (``freeze_backbone=False``, not IRN, fine-tunes the backbone too: IRN
relies on ImageNet features, which a from-scratch backbone lacks):

* boundary: per level 1x1 conv -> GroupNorm -> ReLU, resized to stride 4, concatenated, 1x1 conv
  to one logit (B = sigmoid);
* displacement: per level 1x1 conv -> GN -> ReLU; the coarse levels (stride > 4) are resized to
  the finest coarse grid, fused by a 1x1 conv, resized to stride 4, concatenated with the
  stride-4 levels, then 1x1 conv -> GN -> ReLU -> 1x1 conv to 2 channels (dy, dx).

The IRN ResNet-50 channel plan is scaled by ``width`` (default ``out_channels / 2048``: 1 for
ResNet-50/101, 1/4 for ResNet-18). A ``mean_shift`` buffer (set by the calibration stage) is
subtracted from the displacement in eval mode only, as IRN's ``MeanShift``.

``official=True`` builds IRN's exact head (needed to reproduce a released ``res50_irn.pth``,
see :mod:`wsss.models.official.irn`): GroupNorm + ReLU after the coarse fusion
(``dp_coarse_norm``, IRN's ``fc_dp6``), no bias on the displacement output conv, and every
resize done IRN's way, i.e. ``Upsample(scale_factor)`` *before* the ReLU, then cropped to the
finer grid. The default (False) ReLUs before resizing to the exact grid size, which keeps the
resize well defined for sizes that are not multiples of the stride; the state-dict keys of the
default head are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.functional.irn import irn_losses, irn_total_loss
from wsss.methods.base import WSSSModule
from wsss.models.backbones import create_backbone, levels_with_stride

# IRN ResNet-50 channels per level, in backbone level order (stem, layer1..layer4).
_BOUNDARY = 32
_DISPLACEMENT = (64, 128, 256, 256, 256)
_FUSE = 256


def _ch(c: int, width: float) -> int:
    return max(8, round(c * width / 4) * 4)  # multiple of 4 keeps GroupNorm groups whole


def _block(cin: int, cout: int, groups: int | None = None) -> nn.Sequential:
    groups = groups or max(1, min(16, cout // 8))  # IRN: GN(4, 32), GN(8, 64), GN(16, 128/256)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout),
                         nn.ReLU(inplace=True))  # fmt: skip


def _upsample_relu(x: Tensor, factor: int, size: torch.Size) -> Tensor:
    """IRN's ``nn.Upsample(scale_factor=factor, bilinear)`` -> ReLU -> crop to ``size``."""
    if factor > 1:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return F.relu(x)[..., : size[0], : size[1]]


class IRNetModule(WSSSModule):
    """Frozen backbone + boundary and displacement branches; see the module docstring.

    ``forward(images) -> (boundary_logits (B, 1, h, w), displacement (B, 2, h, w))`` at stride 4.

    Args:
        backbone: ``cfg.backbone`` (IRN: ImageNet ResNet-50, output stride 16); every contract
            level at stride >= 4 feeds both branches, at least one must be at stride 4.
        optimizer: Partial SGD; the boundary branch gets its lr, the displacement branch
            ``new_lr_mult`` times it (IRN: 0.1 / 1.0).
        official: IRN's exact head and resizing (see the module docstring); default False.
        pad_to: :meth:`edge_displacement` zero-pads the normalised image bottom/right to a
            square of this side (IRN: 512, ``EdgeDisplacement(crop_size=512)``) and crops the
            outputs back; GroupNorm statistics then include the padding, so IRN's released
            IRNet needs it to give IRN's outputs. None (default): no padding.
        new_lr_mult, poly_power: see :class:`WSSSModule`.
        radius: Pair radius of the training losses (IRN: 10).
        width: Channel multiplier of the IRN plan; ``None`` = ``out_channels / 2048``.
        freeze_backbone: IRN's frozen backbone (True). False trains it with the boundary
            branch's learning rate; BatchNorm statistics stay frozen either way.
    """

    def __init__(self, backbone: dict, optimizer: Callable, new_lr_mult: float, poly_power: float,
                 radius: int = 10, width: float | None = None, freeze_backbone: bool = True,
                 official: bool = False, pad_to: int | None = None) -> None:  # fmt: skip
        super().__init__(optimizer, new_lr_mult, poly_power)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.backbone = create_backbone(backbone)
        self.freeze_backbone = freeze_backbone
        for param in self.backbone.parameters():
            param.requires_grad_(not freeze_backbone)
        self.radius = radius
        width = width if width is not None else self.backbone.out_channels / 2048
        # The backbone contract's levels at stride >= 4 (IRN: ResNet-50 stem, layer1..layer4;
        # ResNet-38: b3, conv4, conv5, conv6; finer levels such as ResNet-38's b2 are not used).
        strides = {name: stride for name, (_, stride) in self.backbone.levels.items() if stride >= 4}
        self.levels = list(strides)
        if not levels_with_stride(self.backbone, 4):
            raise ValueError(f"IRNet needs a stride-4 backbone level, got levels {dict(self.backbone.levels)}")
        self.fine = [lv for lv in self.levels if strides[lv] == 4]
        self.coarse = [lv for lv in self.levels if strides[lv] > 4]
        if not self.coarse:
            raise ValueError(f"IRNet needs backbone levels coarser than stride 4, got {strides}")
        chans = self.backbone.channels
        edge = _ch(_BOUNDARY, width)
        self.edge_branches = nn.ModuleDict({lv: _block(chans[lv], edge, 4 if edge >= 16 else 1)
                                            for lv in self.levels})  # fmt: skip
        self.edge_out = nn.Conv2d(edge * len(self.levels), 1, 1, bias=True)
        # Level i takes the i-th entry of IRN's plan (the last entry repeats for deeper backbones).
        plan = {lv: _ch(_DISPLACEMENT[min(i, len(_DISPLACEMENT) - 1)], width) for i, lv in enumerate(self.levels)}
        fuse = _ch(_FUSE, width)
        self.dp_branches = nn.ModuleDict({lv: _block(chans[lv], plan[lv]) for lv in self.levels})
        self.dp_coarse = nn.Conv2d(sum(plan[lv] for lv in self.coarse), fuse, 1, bias=False)
        self.official = official
        self.pad_to = pad_to
        if official:  # IRN fc_dp6: conv -> GN -> Upsample -> ReLU
            self.dp_coarse_norm = nn.GroupNorm(max(1, min(16, fuse // 8)), fuse)
        self.dp_out = nn.Sequential(_block(sum(plan[lv] for lv in self.fine) + fuse, fuse),
                                    nn.Conv2d(fuse, 2, 1, bias=not official))  # fmt: skip
        self.register_buffer("mean_shift", torch.zeros(2))

    def train(self, mode: bool = True) -> IRNetModule:
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics frozen (IRN), also when fine-tuning
        return self

    def features(self, images: Tensor) -> dict[str, Tensor]:
        if not self.freeze_backbone:
            return self.backbone(images)
        with torch.no_grad():  # IRN detaches every stage output
            return {k: v.detach() for k, v in self.backbone(images).items()}

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(images)
        if self.official:
            return self._forward_official(feats)
        size = feats[self.fine[0]].shape[-2:]
        edges = [self._resize(self.edge_branches[lv](feats[lv]), size) for lv in self.levels]
        boundary = self.edge_out(torch.cat(edges, dim=1))
        coarse_size = feats[min(self.coarse, key=lambda lv: self.backbone.strides[lv])].shape[-2:]
        coarse = [self._resize(self.dp_branches[lv](feats[lv]), coarse_size) for lv in self.coarse]
        fused = self._resize(self.dp_coarse(torch.cat(coarse, dim=1)), size)
        fine = [self.dp_branches[lv](feats[lv]) for lv in self.fine]
        displacement = self.dp_out(torch.cat([*fine, fused], dim=1))
        if not self.training:
            displacement = displacement - self.mean_shift.view(1, 2, 1, 1)
        return boundary, displacement

    def _forward_official(self, feats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """IRN ``resnet50_irn.Net.forward``: conv -> GN -> Upsample(x factor) -> ReLU -> crop."""
        strides = self.backbone.strides
        size = feats[self.fine[0]].shape[-2:]
        edges = [_upsample_relu(self.edge_branches[lv][:2](feats[lv]), strides[lv] // 4, size)
                 for lv in self.levels]  # fmt: skip
        boundary = self.edge_out(torch.cat(edges, dim=1))
        base = min(strides[lv] for lv in self.coarse)
        coarse_size = next(feats[lv].shape[-2:] for lv in self.coarse if strides[lv] == base)
        coarse = [_upsample_relu(self.dp_branches[lv][:2](feats[lv]), strides[lv] // base, coarse_size)
                  for lv in self.coarse]  # fmt: skip
        fused = self.dp_coarse_norm(self.dp_coarse(torch.cat(coarse, dim=1)))
        fused = _upsample_relu(fused, base // 4, size)
        fine = [self.dp_branches[lv](feats[lv]) for lv in self.fine]
        displacement = self.dp_out(torch.cat([*fine, fused], dim=1))
        if not self.training:
            displacement = displacement - self.mean_shift.view(1, 2, 1, 1)
        return boundary, displacement

    @staticmethod
    def _resize(x: Tensor, size: torch.Size) -> Tensor:
        if x.shape[-2:] == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def boundary_parameters(self) -> list[nn.Parameter]:
        return [*self.edge_branches.parameters(), *self.edge_out.parameters()]

    def displacement_parameters(self) -> list[nn.Parameter]:
        extra = [*self.dp_coarse_norm.parameters()] if self.official else []
        return [*self.dp_branches.parameters(), *self.dp_coarse.parameters(), *extra, *self.dp_out.parameters()]

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        # IRN's two groups: boundary 1x, displacement 10x; a frozen backbone is not optimised
        # (configure_optimizers drops parameters without gradients).
        return [([*self.backbone.parameters(), *self.boundary_parameters()], 1.0),
                (self.displacement_parameters(), self.new_lr_mult)]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        boundary, displacement = self(batch["image"])
        # IRN downscales the relation label x0.25 with nearest sampling.
        label = F.interpolate(batch["mask"][:, None].float(), size=boundary.shape[-2:], mode="nearest")
        losses = irn_losses(boundary.sigmoid(), displacement, label[:, 0].long(), self.radius)
        loss = irn_total_loss(losses)
        size = len(boundary)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=size)
        return loss

    @torch.no_grad()
    def edge_displacement(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """IRN ``EdgeDisplacement`` inference of one image: boundary probabilities ``(h, w)`` from
        the flip-averaged logits and the displacement ``(2, h, w)`` of the unflipped image (mean
        shift applied in eval mode), both on the CPU. ``pad_to`` (init) pads as IRN does.

        Shape:
            - image: ``(3, H, W)`` normalised
        """
        batch = torch.stack([image, image.flip(-1)]).to(self.mean_shift.device)
        height, width = image.shape[-2:]
        if self.pad_to:
            if max(height, width) > self.pad_to:
                raise ValueError(f"IRNet pad_to={self.pad_to} is smaller than the image ({height}x{width})")
            batch = F.pad(batch, [0, self.pad_to - width, 0, self.pad_to - height])
        logits, displacement = self(batch)
        if self.pad_to:  # IRN: feat_size = (H - 1) // 4 + 1
            grid = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
            logits, displacement = logits[..., : grid[0], : grid[1]], displacement[..., : grid[0], : grid[1]]
        boundary = torch.sigmoid((logits[0, 0] + logits[1, 0].flip(-1)) / 2)
        return boundary.cpu(), displacement[0].cpu()

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per image of a batch: ``{name, boundary (h, w), displacement (2, h, w)}`` (CPU)."""
        out = []
        for i, name in enumerate(batch["name"]):
            boundary, displacement = self.edge_displacement(batch["image"][i])
            out.append({"name": name, "boundary": boundary, "displacement": displacement})
        return out


@torch.no_grad()
def image_displacements(model: IRNetModule, images) -> Tensor:
    """Per image, the mean raw displacement of ``model``: ``(N, 2)`` over an iterable of
    ``(1, 3, H, W)`` images (eval mode, the stored mean shift reset to 0); ``(0, 2)`` for none."""
    model.eval()
    model.mean_shift.zero_()
    device = model.mean_shift.device
    means = []
    for image in images:
        _, displacement = model(image.to(device))
        means.append(displacement.mean(dim=(0, 2, 3)).cpu())
    return torch.stack(means) if means else torch.zeros(0, 2)


def mean_displacement(model: IRNetModule, images) -> Tensor:
    """Mean raw displacement ``(2,)`` of ``model`` over an iterable of ``(1, 3, H, W)`` images
    (IRN's mean-shift calibration: the mean of :func:`image_displacements`)."""
    per_image = image_displacements(model, images)
    if not len(per_image):
        raise ValueError("calibrate_irn: no images to average over")
    return per_image.mean(dim=0)
