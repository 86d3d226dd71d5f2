"""Loaders for the authors' released checkpoints.

``load_official(module, path, fmt)`` reads ``path`` (pickle-free) and maps it strictly onto
``module`` (:func:`wsss.models.official.strict.load_mapped`). Formats:

=============== ================================== =============================================
format          release file                       our module
=============== ================================== =============================================
``irn_cam``     IRN ``res50_cam.pth``              CAMModule, resnet50 os16, ``dilate=false``
``irn``         IRN ``res50_irn.pth``              IRNetModule(official=True), same backbone
``psa``         PSA ``res38_cls.pth``              CAMModule, resnet38
``psa_aff``     PSA ``res38_aff.pth``              AffinityNetModule, resnet38 conv4/conv5/conv6
``psa_vgg``     PSA VGG-16 classifier (vgg16_cls)  CAMModule(sqrt_cam), vgg16 ``fc6_dilation=1``
``psa_aff_vgg`` PSA VGG-16 AffinityNet (vgg16_aff) AffinityNetModule, vgg16 ``fc6_dilation=4``
``seam``        SEAM ``resnet38_SEAM.pth``         SEAMModule, resnet38
``eps``         EPS VOC/COCO checkpoint            EPSModule, resnet38
``oaa``         OAA / OAA+ VGG-16 classifier       OAAModule / IAMModule, vgg16
``sec``         SEC_pytorch DeepLab-LargeFOV       SECModule, vgg16 ``deeplab_pools=true``
=============== ================================== =============================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from wsss.models.official.strict import CheckpointMismatchError, read_checkpoint

__all__ = ["FORMATS", "CheckpointMismatchError", "load_official"]


# format -> "module:function" of its loader, imported on use (each loader pulls in its own code).
_LOADERS = {
    "irn_cam": "irn:load_irn_cam",
    "irn": "irn:load_irn",
    "psa": "psa:load_psa_cls",
    "psa_aff": "psa:load_psa_aff",
    "psa_vgg": "psa:load_psa_vgg",
    "psa_aff_vgg": "psa:load_psa_aff_vgg",
    "seam": "seam_eps:load_seam",
    "eps": "seam_eps:load_eps",
    "oaa": "vgg:load_oaa",
    "sec": "vgg:load_sec",
}


def _loader(fmt: str) -> Callable[[nn.Module, dict[str, Tensor], str], nn.Module]:
    module, name = _LOADERS[fmt].split(":")
    return getattr(importlib.import_module(f"wsss.models.official.{module}"), name)


FORMATS: dict[str, Callable[[nn.Module, dict[str, Tensor], str], nn.Module]] = {
    fmt: (lambda module, state, source, fmt=fmt: _loader(fmt)(module, state, source)) for fmt in _LOADERS
}


def load_official(module: nn.Module, path: str | Path, fmt: str) -> nn.Module:
    """Load the released checkpoint ``path`` of format ``fmt`` into ``module`` (strict)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint_format {fmt!r}; expected one of {sorted(FORMATS)}")
    state = read_checkpoint(path, fmt)
    return FORMATS[fmt](module, state, str(path))
