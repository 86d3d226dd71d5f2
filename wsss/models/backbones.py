"""Backbones and the backbone contract every head codes against.

The contract (met by the ResNets, VGG-16 and ResNet-38 here; a ViT meets it with its patch tokens
reshaped to a stride-16 map, e.g. ``levels = {"tokens": (768, 16)}``, and the class token kept
out of the dict or as an extra tap):

* ``levels -> {name: (channels, stride)}``: the named feature maps heads choose from, in depth
  order (shallow first). ``stride`` is the input-to-feature downsampling factor. Heads pick the
  levels they need by stride (:func:`levels_with_stride`, :func:`deepest_levels`), never by a
  network's own layer names: AffinityNet takes the three deepest levels at stride >= 4 (PSA:
  ResNet-38 conv4/conv5/conv6), IRNet every level at stride >= 4 with at least one at stride 4
  (IRN: ResNet-50 stem..layer4), SEAM's PCM the two levels before ``last``.
* ``channels`` / ``strides``: ``{name: int}`` views of ``levels`` (they may hold extra taps that
  ``forward`` also returns, such as ResNet-38's b4..b6).
* ``forward(x) -> {name: tensor}`` for a normalised ``(B, 3, H, W)`` image, containing every level
  at shape ``(B, channels, ceil(H / stride), ceil(W / stride))``.
* ``last``: the name of the deepest level (the classifier's input); ``out_channels`` its width.
* Frozen and new parameters: a backbone's parameters are all pretrained ("backbone" lr group);
  frozen ones have ``requires_grad=False`` (``frozen_stages``) and are dropped from the optimiser;
  frozen BatchNorm layers are :class:`~wsss.models.norm.FrozenBatchNorm2d` (eval mode, buffers
  only, untouched by ``SyncBatchNorm.convert_sync_batchnorm``). New (10x lr) layers belong to
  the method heads, never to the backbone.
* ``mean`` / ``std``: the input normalisation its weights expect.
* Weights load strictly: a file that does not fit raises a ``KeyError`` listing every missing
  and unexpected key (:func:`load_weights`).

Built from ``conf/backbone/<name>.yaml`` (``_target_: wsss.models.backbones.build_backbone``,
``_partial_: true``): methods receive the partial and call :func:`create_backbone`, which also
accepts a plain kwargs mapping and per-head overrides such as ``output_stride=8``.

ResNets expose ``stem`` (stride 4, after max-pool) and ``layer1``..``layer4``; VGG-16 exposes
``conv3`` (stride 4), ``conv4`` (stride 8) and ``conv5`` (stride 8, dilated, DeepLab style);
ResNet-38 ``b2`` (2), ``b3`` (4), ``conv4``/``conv5``/``conv6`` (8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from wsss.models.norm import FrozenBatchNorm2d, freeze_batchnorm

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

    def __init__(self, name: str, output_stride: int, frozen_stages: int = 0, frozen_bn: bool = False,
                 dilate: bool = True) -> None:  # fmt: skip
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone.output_stride must be 8, 16 or 32 for {name}, got {output_stride}")
        # frozen_bn: every BatchNorm fixed (IRN's FixedBatchNorm); state_dict keys unchanged.
        norm = {"norm_layer": FrozenBatchNorm2d} if frozen_bn else {}
        net = getattr(torchvision.models, name)(weights=None, **norm)
        # torchvision's BasicBlock refuses dilation, so dilate after construction (works for both).
        # dilate=False only removes the stride (IRN's resnet50 strides=(2, 2, 2, 1), no dilation).
        if output_stride <= 16:
            _dilate(net.layer4, (2 if output_stride == 16 else 4) if dilate else 1)
        if output_stride == 8:
            _dilate(net.layer3, 2 if dilate else 1)
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
        # IRN freezes conv1..layer2 (the lowest stages learn little from image labels); the
        # BatchNorms of a frozen stage are frozen too (else their statistics still move).
        for stage in ["stem", "layer1", "layer2", "layer3"][: self.frozen_stages]:
            freeze_batchnorm(getattr(self, stage))
            for p in getattr(self, stage).parameters():
                p.requires_grad_(False)

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        return {name: (self.channels[name], self.strides[name]) for name in self.channels}

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

    def load_torchvision_state(self, state: dict[str, Tensor], source: str = "weights") -> None:
        """Load a torchvision ResNet state dict (``conv1``/``bn1`` names; ``fc.*`` dropped) or one
        saved from this class (``stem.*`` names), strictly."""
        mapped = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            for src, dst in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
                if key.startswith(src):
                    key = dst + key[len(src):]
            mapped[key] = value
        load_weights(self, mapped, source)


def _dilate(layer: nn.Module, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convs (DeepLab)."""
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation, module.padding = (dilation, dilation), (dilation, dilation)


class VGG16Backbone(nn.Module):
    """VGG-16 as in DeepLab-LargeFOV/OAA: pool4 stride 1, conv5 dilated 2, output stride 8.

    ``fc6_dilation`` (default ``None``: no fc layers) turns it into PSA's ``vgg16d`` trunk
    (``network/vgg16d.py``; needs ``deeplab_pools``): after conv5 come ``fc6`` (3x3 conv
    512 -> 1024, dilation ``fc6_dilation``: 1 in PSA's classifier, 4 in its AffinityNet) + ReLU
    + dropout 0.5, and ``fc7`` (1x1 conv 1024 -> 1024) + ReLU, a new level ``fc7`` (stride 8)
    that becomes ``last``; as in vgg16d's forward, DeepLab's pool5 and average pool are not used
    and the ``conv4`` level is conv4_3's output *before* pool4 (PSA's AffinityNet reads it).
    """

    def __init__(self, output_stride: int = 8, frozen_stages: int = 0, deeplab_pools: bool = False,
                 fc6_dilation: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if output_stride != 8:
            raise ValueError(f"backbone.output_stride for vgg16 must be 8, got {output_stride}")
        if fc6_dilation is not None and (not deeplab_pools or int(fc6_dilation) < 1):
            raise ValueError(
                f"backbone.fc6_dilation={fc6_dilation} (PSA's vgg16d) needs backbone.deeplab_pools=true "
                "and a dilation >= 1"
            )
        features = torchvision.models.vgg16(weights=None).features
        layers = list(features.children())
        if deeplab_pools:  # DeepLab-LargeFOV (SEC): 3x3 stride-2 pools with padding 1
            for index in (4, 9, 16):
                layers[index] = nn.MaxPool2d(3, 2, 1)
        # Indices of torchvision's vgg16.features: pool3 = 16, pool4 = 23, pool5 = 30.
        self.conv3 = nn.Sequential(*layers[:16])  # conv1..conv3_3, stride 4
        self.conv4 = nn.Sequential(*layers[16:23], nn.MaxPool2d(3, 1, 1))  # stride 8
        conv5 = []
        for layer in layers[24:30]:
            if isinstance(layer, nn.Conv2d):
                layer.dilation, layer.padding = (2, 2), (2, 2)
            conv5.append(layer)
        if deeplab_pools and fc6_dilation is None:  # DeepLab-LargeFOV pool5 (3x3, stride 1) and its 3x3 average pool
            conv5 += [nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1)]
        self.conv5 = nn.Sequential(*conv5)
        self.channels = {"conv3": 256, "conv4": 512, "conv5": 512}
        self.strides = {"conv3": 4, "conv4": 8, "conv5": 8}
        self.fc6_dilation = None if fc6_dilation is None else int(fc6_dilation)
        if self.fc6_dilation is not None:
            d = self.fc6_dilation
            self.fc6 = nn.Sequential(nn.Conv2d(512, 1024, 3, padding=d, dilation=d), nn.ReLU(inplace=True),
                                     nn.Dropout2d(0.5))  # fmt: skip
            self.fc7 = nn.Sequential(nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True))
            self.channels["fc7"], self.strides["fc7"] = 1024, 8
        self.out_channels = self.channels[self.last]
        for stage in ["conv3", "conv4"][:frozen_stages]:
            for p in getattr(self, stage).parameters():
                p.requires_grad_(False)

    @property
    def levels(self) -> dict[str, tuple[int, int]]:
        return {name: (self.channels[name], self.strides[name]) for name in self.channels}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"conv3": self.conv3(x)}
        if self.fc6_dilation is None:
            out["conv4"] = self.conv4(out["conv3"])
            out["conv5"] = self.conv5(out["conv4"])
            return out
        out["conv4"] = self.conv4[:-1](out["conv3"])  # PSA's vgg16d: conv4 before pool4
        out["conv5"] = self.conv5(self.conv4[-1](out["conv4"]))
        out["fc7"] = self.fc7(self.fc6(out["conv5"]))
        return out

    @property
    def last(self) -> str:
        return "conv5" if self.fc6_dilation is None else "fc7"

    def load_torchvision_state(self, state: dict[str, Tensor], source: str = "weights") -> None:
        """Load torchvision's ``vgg16`` state dict (``features.<i>.*``; ``classifier.*``, the
        ImageNet fc layers, dropped) or one saved from this class, strictly."""
        if any(k.startswith("features.") for k in state):
            ours = [name for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]
            theirs = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("features.")},
                            key=lambda k: int(k.split(".")[1]))  # fmt: skip
            rename = dict(zip(theirs, ours))
            mapped = {}
            for key, value in state.items():
                if key.startswith("classifier."):
                    continue
                module, _, param = key.rpartition(".")
                mapped[f"{rename[module]}.{param}" if module in rename else key] = value
            state = mapped
        load_weights(self, state, source)


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


BACKBONES = (*_RESNETS, "vgg16", "resnet38")


def build_backbone(
    name: str, output_stride: int, weights: str | None = None, frozen_stages: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    frozen_bn: bool = False, dilate: bool = True, deeplab_pools: bool = False,
    fc6_dilation: int | None = None,
) -> nn.Module:
    """Build a backbone by name (the ``_target_`` of ``conf/backbone/*.yaml``).

    Args:
        name: ``resnet18``, ``resnet50``, ``resnet101``, ``vgg16`` or ``resnet38``.
        output_stride: total stride of the last stage (8/16/32 for ResNets, 8 for VGG/ResNet-38).
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's release; fails fast offline
            with instructions) or a path to a state dict (``torch.load(weights_only=True)``),
            loaded strictly (:func:`load_weights`).
        frozen_stages: number of early stages whose parameters get no gradient (and whose
            BatchNorms are frozen). ResNet: stem, layer1, layer2, layer3; VGG: conv3, conv4;
            ResNet-38: conv1a, b2-b2_2, b3-b3_2, ... (PSA/SEAM/EPS: 2).
        mean, std: input normalisation the weights expect; kept on the module as ``mean``/``std``
            so data configs can interpolate them (``${backbone.mean}``).
        frozen_bn: every BatchNorm frozen (:class:`FrozenBatchNorm2d`; IRN's ResNet-50). ResNet-38's
            BatchNorms are always frozen (PSA/SEAM/EPS).
        dilate: ResNets only: dilate the stages made stride 1 by ``output_stride`` (DeepLab, the
            default: keeps each 3x3 kernel's ImageNet field of view). False only drops their
            stride, as IRN's ResNet-50 (``strides=(2, 2, 2, 1)``); needed to reproduce IRN's
            released CAM/IRNet weights (``+backbone.dilate=false``).
        deeplab_pools: VGG-16 only: DeepLab-LargeFOV's pooling (3x3 stride-2 pools with padding
            1, and after conv5 a 3x3 stride-1 max pool and a 3x3 average pool), as SEC's
            network; no parameters change. Default False (torchvision's 2x2 pools).
        fc6_dilation: VGG-16 only: PSA's ``vgg16d`` fc6/fc7 layers with this fc6 dilation (1:
            PSA's VGG-16 classifier, 4: its AffinityNet; needs ``deeplab_pools``), see
            :class:`VGG16Backbone`. Default None (no fc layers).
    """
    if name == "efficientnet_lite0":  # conf/backbone/efficientnet_lite0.yaml targets it directly
        from wsss.models.efficientnet import build_efficientnet_lite0

        return build_efficientnet_lite0(output_stride, weights, frozen_stages, mean, std, name, frozen_bn,
                                        dilate, deeplab_pools)
    if fc6_dilation is not None and name != "vgg16":
        raise ValueError(f"backbone.fc6_dilation is for vgg16 (PSA's vgg16d), not {name!r}")
    model = _build(name, output_stride, weights, frozen_stages, frozen_bn, dilate, deeplab_pools, fc6_dilation)
    model.mean, model.std = tuple(mean), tuple(std)
    return model


def create_backbone(spec: Callable[..., nn.Module] | Mapping[str, Any] | nn.Module, **overrides: Any) -> nn.Module:
    """A backbone from what a method config receives as ``backbone``.

    ``spec`` is the partial Hydra builds from ``conf/backbone/*.yaml`` (``_partial_: true``), a
    mapping of :func:`build_backbone` kwargs (with or without ``_target_``/``_partial_``; tests and
    older configs), or an already built module (returned as is; ``overrides`` must then be empty).
    ``overrides`` replace keys, e.g. ``output_stride=8`` for heads that need stride 8.
    """
    if isinstance(spec, nn.Module):
        if overrides:
            raise ValueError(f"cannot apply {overrides} to an already built backbone")
        return spec
    if callable(spec):
        return spec(**overrides)
    kwargs = {k: v for k, v in dict(spec).items() if k not in ("_target_", "_partial_", "_recursive_")}
    target = dict(spec).get("_target_")
    if target not in (None, f"{__name__}.build_backbone"):
        from hydra.utils import get_method

        return get_method(target)(**{**kwargs, **overrides})
    return build_backbone(**{**kwargs, **overrides})


def levels_with_stride(backbone: nn.Module, stride: int) -> list[str]:
    """Names of the contract levels of ``backbone`` at exactly ``stride``, shallow first."""
    return [name for name, (_, s) in backbone.levels.items() if s == stride]


def deepest_levels(backbone: nn.Module, count: int, min_stride: int = 1) -> list[str]:
    """The ``count`` deepest contract levels with stride >= ``min_stride``, shallow first.

    Raises a ``ValueError`` naming the backbone's levels when it has fewer.
    """
    names = [name for name, (_, s) in backbone.levels.items() if s >= min_stride]
    if len(names) < count:
        raise ValueError(f"need {count} backbone levels at stride >= {min_stride}, "
                         f"got {dict(backbone.levels)}")  # fmt: skip
    return names[-count:]


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = "weights") -> None:
    """``model.load_state_dict(state, strict=True)`` with one clear error naming every key.

    Raises:
        KeyError: listing all missing keys (the model has, the file lacks) and all unexpected keys
            (the file has, the model lacks), and shape mismatches, prefixed by ``source``.
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    # FrozenBatchNorm2d fills in a missing num_batches_tracked itself
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))  # fmt: skip
    if missing or unexpected or shapes:
        raise KeyError(
            f"{source} do not fit {type(model).__name__}: {len(missing)} missing keys {missing}, "
            f"{len(unexpected)} unexpected keys {unexpected}"
            + (f", {len(shapes)} shape mismatches {shapes}" if shapes else "")
        )
    # Every key was checked above; strict=False only lets an absent num_batches_tracked through.
    model.load_state_dict(dict(state), strict=False)


def _build(name: str, output_stride: int, weights: str | None, frozen_stages: int,
           frozen_bn: bool, dilate: bool = True, deeplab_pools: bool = False,
           fc6_dilation: int | None = None) -> nn.Module:  # fmt: skip
    if name in _RESNETS:
        model: nn.Module = ResNetBackbone(name, output_stride, frozen_stages, frozen_bn, dilate)
    elif name == "vgg16":
        model = VGG16Backbone(output_stride, frozen_stages, deeplab_pools, fc6_dilation)
    elif name == "resnet38":
        from wsss.models.resnet38 import STAGES, ResNet38

        if output_stride != 8:
            raise ValueError(f"backbone.output_stride for resnet38 must be 8, got {output_stride}")
        model = ResNet38(frozen=[m for stage in STAGES[: max(frozen_stages, 1)] for m in stage])
        if weights == "imagenet":
            raise ValueError(
                "ResNet-38 ImageNet weights are the MXNet release ilsvrc-cls_rna-a1_cls1000_ep-0001.params; "
                "convert them with `python -m wsss.models.convert_mxnet FILE.params out.pth` and pass "
                "backbone.weights=out.pth"
            )
        if weights is not None:
            load_weights(model, _load_state_file(weights), f"backbone.weights={weights}")
        return model
    else:
        raise ValueError(f"unknown backbone.name {name!r}; expected one of {sorted(BACKBONES)}")
    if weights == "imagenet":
        model.load_torchvision_state(_imagenet_state(name), f"ImageNet weights for {name}")
    elif weights is not None:
        model.load_torchvision_state(_load_state_file(weights), f"backbone.weights={weights}")
    return model


def _load_state_file(path: str) -> dict[str, Tensor]:
    from wsss.io import load_weights

    path_ = Path(path).expanduser()
    state = load_weights(path_, "backbone.weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"{path_}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state
