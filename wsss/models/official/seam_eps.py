"""SEAM (YudeWang/SEAM) and EPS (halbielee/EPS) releases: ResNet-38 classifiers with C + 1 maps.

``seam``: ``resnet38_SEAM.pth`` (``network/resnet38_SEAM.py``) ->
:class:`wsss.methods.seam.SEAMModule` (``backbone.name=resnet38``, PCM on conv4/conv5 with 64/128
channels, 192-d): ``fc8`` (21 maps, background first) is ``classifier``, ``f8_3``/``f8_4`` are
``pcm_proj.0/1``, ``f9`` is ``pcm_fuse``.

``eps``: the EPS checkpoint (``network/resnet38_eps.py``, ``Net(num_classes + 1)``) ->
:class:`wsss.methods.eps.EPSModule` (``backbone.name=resnet38``): ``fc8`` (background last) is
``classifier``.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.models.official.psa import _check_resnet38, _trunk_key
from wsss.models.official.strict import load_mapped

__all__ = ["load_eps", "load_seam"]

_SEAM_HEAD = {"fc8": "classifier", "f8_3": "pcm_proj.0", "f8_4": "pcm_proj.1", "f9": "pcm_fuse"}


def _seam_key(key: str) -> str | None:
    head, _, rest = key.partition(".")
    return f"{_SEAM_HEAD[head]}.{rest}" if head in _SEAM_HEAD else _trunk_key(key)


def load_seam(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """SEAM's released weights -> SEAMModule (ResNet-38)."""
    _check_resnet38(module, "seam")
    return load_mapped(module, state, _seam_key, source=source, fmt="seam")


def load_eps(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """EPS's released weights -> EPSModule (ResNet-38)."""
    _check_resnet38(module, "eps")
    rename = lambda key: "classifier.weight" if key == "fc8.weight" else _trunk_key(key)
    return load_mapped(module, state, rename, source=source, fmt="eps")
