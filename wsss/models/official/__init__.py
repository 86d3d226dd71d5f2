"""Loaders for the authors' released checkpoints.

``load_official(module, path, fmt)`` reads ``path`` (pickle-free) and maps it strictly onto
``module`` (:func:`wsss.models.official.strict.load_mapped`). Formats:

=========== ================================ =============================================
format      release file                     our module
=========== ================================ =============================================
``irn_cam`` IRN ``res50_cam.pth``            CAMModule, resnet50 os16, ``dilate=false``
``irn``     IRN ``res50_irn.pth``            IRNetModule(official=True), same backbone
``psa``     PSA ``res38_cls.pth``            CAMModule, resnet38
``psa_aff`` PSA ``res38_aff.pth``            AffinityNetModule, resnet38 conv4/conv5/conv6
``seam``    SEAM ``resnet38_SEAM.pth``         SEAMModule, resnet38
``eps``     EPS VOC/COCO checkpoint          EPSModule, resnet38
``oaa``     OAA / OAA+ VGG-16 classifier     OAAModule / IAMModule, vgg16
``sec``     SEC_pytorch DeepLab-LargeFOV     SECModule, vgg16 ``deeplab_pools=true``
=========== ================================ =============================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from wsss.models.official.strict import CheckpointMismatchError, read_checkpoint

__all__ = ["FORMATS", "CheckpointMismatchError", "load_official"]


def _irn_cam(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.irn import load_irn_cam

    return load_irn_cam(module, state, source)


def _irn(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.irn import load_irn

    return load_irn(module, state, source)


def _psa(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.psa import load_psa_cls

    return load_psa_cls(module, state, source)


def _psa_aff(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.psa import load_psa_aff

    return load_psa_aff(module, state, source)


def _seam(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.seam_eps import load_seam

    return load_seam(module, state, source)


def _eps(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.seam_eps import load_eps

    return load_eps(module, state, source)


def _oaa(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.vgg import load_oaa

    return load_oaa(module, state, source)


def _sec(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    from wsss.models.official.vgg import load_sec

    return load_sec(module, state, source)


FORMATS: dict[str, Callable[[nn.Module, dict[str, Tensor], str], nn.Module]] = {
    "irn_cam": _irn_cam,
    "irn": _irn,
    "psa": _psa,
    "psa_aff": _psa_aff,
    "seam": _seam,
    "eps": _eps,
    "oaa": _oaa,
    "sec": _sec,
}


def load_official(module: nn.Module, path: str | Path, fmt: str) -> nn.Module:
    """Load the released checkpoint ``path`` of format ``fmt`` into ``module`` (strict)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint_format {fmt!r}; expected one of {sorted(FORMATS)}")
    state = read_checkpoint(path, fmt)
    return FORMATS[fmt](module, state, str(path))
