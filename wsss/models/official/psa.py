"""PSA (jiwoon-ahn/psa) releases, ResNet-38: the classifier and AffinityNet.

``psa``: ``res38_cls.pth`` (``network/resnet38_cls.py``) -> :class:`wsss.methods.cam.CAMModule`
with ``backbone.name=resnet38``: the trunk's names are ours (``conv1a``, ``b2`` .. ``b7``,
``bn7``) under ``backbone.``, ``fc8`` is our ``classifier``.

``psa_aff``: ``res38_aff.pth`` (``network/resnet38_aff.py``) ->
:class:`wsss.methods.affinitynet.AffinityNetModule` with ``feature_levels=[conv4, conv5, conv6]``
and ``branch_channels=[64, 128, 256]``: ``f8_3``/``f8_4``/``f8_5`` are ``branches.0/1/2``, ``f9``
is ``embed``. PSA's walk only uses sources away from the bottom/left/right border; pass
``sources="psa"`` to the walk (``stages.random_walk.sources=psa``) to reproduce it.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.models.official.strict import CheckpointMismatchError, load_mapped

__all__ = ["load_psa_aff", "load_psa_cls"]

_AFF_HEAD = {"f8_3": "branches.0", "f8_4": "branches.1", "f8_5": "branches.2", "f9": "embed"}


def _check_resnet38(module: nn.Module, fmt: str) -> None:
    if type(getattr(module, "backbone", None)).__name__ != "ResNet38":
        raise CheckpointMismatchError(f"format {fmt!r} needs backbone.name=resnet38")


def _trunk_key(key: str) -> str | None:
    head = key.split(".", 1)[0]
    if head == "conv1a" or head == "bn7" or head.startswith("b") and head[1:2].isdigit():
        return "backbone." + key
    return None


def load_psa_cls(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """``res38_cls.pth`` -> CAMModule (ResNet-38)."""
    _check_resnet38(module, "psa")
    rename = lambda key: "classifier.weight" if key == "fc8.weight" else _trunk_key(key)
    return load_mapped(module, state, rename, source=source, fmt="psa")


def _aff_key(key: str) -> str | None:
    head, _, rest = key.partition(".")
    if head in _AFF_HEAD:
        return f"{_AFF_HEAD[head]}.{rest}"
    return _trunk_key(key)


def load_psa_aff(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """``res38_aff.pth`` -> AffinityNetModule (ResNet-38, levels conv4/conv5/conv6)."""
    _check_resnet38(module, "psa_aff")
    levels = list(getattr(module, "levels", []))
    if levels != ["conv4", "conv5", "conv6"]:
        raise CheckpointMismatchError(
            f"format 'psa_aff' needs feature_levels=[conv4, conv5, conv6] (PSA's f8_3/f8_4/f8_5), got {levels}"
        )
    return load_mapped(module, state, _aff_key, source=source, fmt="psa_aff")
