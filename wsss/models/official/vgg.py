"""VGG-16 releases: OAA/OAA+ (PengtaoJiang/OAA-PyTorch) and SEC (halbielee/SEC_pytorch).

Both number their trunk as one ``features`` Sequential whose indices equal torchvision's
``vgg16.features`` up to conv5_3's ReLU (29), so ``features.i`` maps onto our
:class:`~wsss.models.backbones.VGG16Backbone` stages: ``conv3.i`` (i < 16), ``conv4.(i - 16)``
(16 <= i < 23), ``conv5.(i - 24)`` (24 <= i < 30).

``oaa``: OAA's classifier (``models/vgg.py``, ``vgg16`` with cfg ``D1``: 2x2 pools, pool4
3x3/1, conv5 dilated 2) -> :class:`wsss.methods.oaa.OAAModule` (``backbone.name=vgg16``):
``extra_convs.0/2/4`` are ``extra.0/2/4``, ``extra_convs.6`` is ``classifier``. OAA+ trains
its integral attention model with the same network (``IAMModule``, same format).

``sec``: SEC_pytorch's DeepLab-LargeFOV (``network/DeepLab_LargeFOV.py``) ->
:class:`wsss.methods.sec.SECModule` with ``backbone.name=vgg16 +backbone.deeplab_pools=true``
(SEC's 3x3/2 pools and pool5 + average pool): ``fc6``/``fc7``/``fc8`` are ``head.fc6/7/8``.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from wsss.models.official.strict import CheckpointMismatchError, load_mapped

__all__ = ["load_oaa", "load_sec"]


def _features_key(key: str) -> str | None:
    m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
    if not m:
        return None
    i = int(m[1])
    if i < 16:
        return f"backbone.conv3.{i}.{m[2]}"
    if i < 23:
        return f"backbone.conv4.{i - 16}.{m[2]}"
    if 24 <= i < 30:
        return f"backbone.conv5.{i - 24}.{m[2]}"
    return None


def _deeplab_pools(module: nn.Module, fmt: str) -> bool:
    backbone = getattr(module, "backbone", None)
    if type(backbone).__name__ != "VGG16Backbone":
        raise CheckpointMismatchError(f"format {fmt!r} needs backbone.name=vgg16")
    return isinstance(backbone.conv5[-1], nn.AvgPool2d)


def load_oaa(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """OAA's released classifier -> OAAModule (VGG-16, torchvision pools)."""
    if _deeplab_pools(module, "oaa"):
        raise CheckpointMismatchError(
            "format 'oaa': OAA's VGG-16 uses 2x2 pools; unset backbone.deeplab_pools"
        )

    def rename(key: str) -> str | None:
        m = re.fullmatch(r"extra_convs\.(\d+)\.(weight|bias)", key)
        if m:
            return f"classifier.{m[2]}" if m[1] == "6" else f"extra.{m[1]}.{m[2]}"
        return _features_key(key)

    return load_mapped(module, state, rename, source=source, fmt="oaa")


def load_sec(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """SEC_pytorch's DeepLab-LargeFOV -> SECModule (VGG-16 with DeepLab pools)."""
    if not _deeplab_pools(module, "sec"):
        raise CheckpointMismatchError(
            "format 'sec': SEC's DeepLab-LargeFOV needs +backbone.deeplab_pools=true"
        )

    def rename(key: str) -> str | None:
        head = key.split(".", 1)[0]
        return f"head.{key}" if head in ("fc6", "fc7", "fc8") else _features_key(key)

    return load_mapped(module, state, rename, source=source, fmt="sec")
