"""Wider ResNet-38 (model A1 of Wu et al.), the PSA/SEAM/EPS backbone (docs/methods.md, "Conventions").

Architecture facts follow ``psa:network/resnet38d.py``: pre-activation residual blocks, three
stride-2 stages (b2, b3, b4: output stride 8), then b5 with dilation 2 and the bottleneck blocks
b6/b7 with dilation 4 and Dropout2d 0.3 / 0.5. ``conv6`` = ReLU(bn7(b7)) has 4,096 channels.
Parameter names equal the converted MXNet keys (:mod:`wsss.models.convert_mxnet`), e.g.
``b4_3.bn_branch2b1.running_var`` or ``b6.conv_branch2b2.weight``.

All BatchNorm layers are frozen (:class:`~wsss.models.norm.FrozenBatchNorm2d`, same state_dict
keys as ``nn.BatchNorm2d``): no gradients, always eval mode, untouched by
``SyncBatchNorm.convert_sync_batchnorm``, so running statistics stay the ImageNet ones whatever the
batch size or the number of GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wsss.models.norm import FrozenBatchNorm2d

__all__ = ["STAGES", "ResNet38"]

# Top-level modules per stage, for ``frozen_stages`` (PSA/SEAM/EPS heads freeze stages 1-2).
STAGES = (("conv1a",), ("b2", "b2_1", "b2_2"), ("b3", "b3_1", "b3_2"),
          ("b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"), ("b5", "b5_1", "b5_2"), ("b6",), ("b7", "bn7"))


class ResBlock(nn.Module):
    """Two 3x3 convs, pre-activation; the shortcut is a 1x1 conv when the shape changes."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        first_dilation = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = FrozenBatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride,
                                       padding=first_dilation, dilation=first_dilation, bias=False)
        self.bn_branch2b1 = FrozenBatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(output, BN-ReLU of the input)``; the latter is PSA's conv4/conv5 feature."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        branch = self.conv_branch2a(pre)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch, pre


class ResBlockBottleneck(nn.Module):
    """1x1 -> 3x3 (dilated) -> 1x1 pre-activation bottleneck with Dropout2d before the last two."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.bn_branch2a = FrozenBatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, bias=False)
        self.bn_branch2b1 = FrozenBatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = FrozenBatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(pre)
        branch = self.conv_branch2a(pre)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch, pre


class ResNet38(nn.Module):
    """Wider ResNet-38 trunk with output stride 8 and frozen BatchNorm.

    Args:
        frozen: Names of top-level modules whose parameters never train. Default ``("conv1a",)``
            as PSA's trunk; the PSA/SEAM/EPS cls, aff and SEAM heads use
            ``("conv1a", "b2", "b2_1", "b2_2")`` (``conf/backbone/resnet38.yaml``: frozen_stages 2).
        dropout_b6: Dropout2d rate inside b6. Default 0.3.
        dropout_b7: Dropout2d rate inside b7. Default 0.5.

    Attributes:
        channels: Feature name -> channels: ``b2`` 128, ``b3`` 256, ``b4`` 512, ``b5`` 1024,
            ``b6`` 2048 (raw residual sums), ``conv4`` 512 (BN-ReLU of b4, PSA's conv4),
            ``conv5`` 1024 (BN-ReLU of b5, PSA's conv5), ``conv6`` 4096 (ReLU(bn7(b7))).
        strides: Feature name -> stride: b2 2, b3 4, everything else 8.
        levels: The backbone contract's levels (:mod:`wsss.models.backbones`), in depth order:
            ``b2`` (128, 2), ``b3`` (256, 4), ``conv4`` (512, 8), ``conv5`` (1024, 8),
            ``conv6`` (4096, 8): the stage outputs heads choose from (PSA's AffinityNet takes
            conv4/conv5/conv6, SEAM's PCM conv4/conv5, IRNet the stride >= 4 ones). ``b4``..``b6``
            are extra taps of :meth:`forward`.

    Shape:
        - x: ``(B, 3, H, W)`` ImageNet-normalised RGB
        - output: dict of ``(B, channels[k], ceil(H / strides[k]), ceil(W / strides[k]))``
    """

    def __init__(
        self,
        frozen: Sequence[str] = ("conv1a",),
        dropout_b6: float = 0.3,
        dropout_b7: float = 0.5,
    ) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        for i in range(1, 6):
            self.add_module(f"b4_{i}", ResBlock(512, 512, 512))
        # b5 keeps stride 1 and dilates instead (DeepLab-style output stride 8).
        self.b5 = ResBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = ResBlockBottleneck(1024, 2048, dilation=4, dropout=dropout_b6)
        self.b7 = ResBlockBottleneck(2048, 4096, dilation=4, dropout=dropout_b7)
        self.bn7 = FrozenBatchNorm2d(4096)

        unknown = set(frozen) - {name for name, _ in self.named_children()}
        if unknown:
            raise ValueError(f"unknown ResNet-38 modules to freeze: {sorted(unknown)}")
        self.frozen = tuple(frozen)
        self.channels = {"b2": 128, "b3": 256, "b4": 512, "b5": 1024, "b6": 2048,
                         "conv4": 512, "conv5": 1024, "conv6": 4096}
        self.strides = {k: 8 for k in self.channels} | {"b2": 2, "b3": 4}
        self.out_channels = 4096
        self._freeze()

    @property
    def last(self) -> str:
        return "conv6"

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        return {name: (self.channels[name], self.strides[name]) for name in ("b2", "b3", "conv4", "conv5", "conv6")}

    def _freeze(self) -> None:
        for name in self.frozen:
            getattr(self, name).requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet38:
        """Set the train/eval mode; every BatchNorm is a FrozenBatchNorm2d and stays in eval."""
        super().train(mode)
        # PSA re-freezes on every train() call, so a stray requires_grad_(True) cannot leak in.
        self._freeze()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        x = self.conv1a(x)
        x, _ = self.b2(x)
        x, _ = self.b2_1(x)
        out["b2"], _ = self.b2_2(x)
        x, _ = self.b3(out["b2"])
        x, _ = self.b3_1(x)
        out["b3"], _ = self.b3_2(x)
        x, _ = self.b4(out["b3"])
        for i in range(1, 6):
            x, _ = getattr(self, f"b4_{i}")(x)
        out["b4"] = x
        x, out["conv4"] = self.b5(x)
        x, _ = self.b5_1(x)
        out["b5"], _ = self.b5_2(x)
        out["b6"], out["conv5"] = self.b6(out["b5"])
        x, _ = self.b7(out["b6"])
        out["conv6"] = F.relu(self.bn7(x))
        return out
