"""PSA (jiwoon-ahn/psa) releases, ResNet-38: the classifier and AffinityNet.

``psa``: ``res38_cls.pth`` (``network/resnet38_cls.py``) -> :class:`wsss.methods.cam.CAMModule`
with ``backbone.name=resnet38``: the trunk's names are ours (``conv1a``, ``b2`` .. ``b7``,
``bn7``) under ``backbone.``, ``fc8`` is our ``classifier``.

``psa_aff``: ``res38_aff.pth`` (``network/resnet38_aff.py``) ->
:class:`wsss.methods.affinitynet.AffinityNetModule` with ``feature_levels=[conv4, conv5, conv6]``
and ``branch_channels=[64, 128, 256]``: ``f8_3``/``f8_4``/``f8_5`` are ``branches.0/1/2``, ``f9``
is ``embed``. PSA's walk only uses sources away from the bottom/left/right border; pass
``sources="psa"`` to the walk (``stages.random_walk.sources=psa``) to reproduce it.

PSA's VGG-16 variants (``network/vgg16d.py``) -> ``backbone.name=vgg16 +backbone.deeplab_pools=true``
with ``+backbone.fc6_dilation`` (:class:`~wsss.models.backbones.VGG16Backbone`): ``conv<a>_<b>``
are torchvision's ``features`` convs, ``fc6``/``fc7`` are ``backbone.fc6.0``/``backbone.fc7.0``.
vgg16d feeds BGR images minus the Caffe mean (0..255, no std); the loaders reorder
``conv1_1``'s input channels to RGB, so our RGB data pipeline with ``backbone.mean`` =
``PSA_VGG_MEAN`` and ``backbone.std`` = ``PSA_VGG_STD`` computes the very same numbers.

``psa_vgg``: ``vgg16_cls.py`` -> CAMModule with ``fc6_dilation=1`` and ``sqrt_cam=true`` (its
``forward_cam`` is ``sqrt(relu(fc8))``); ``fc8`` is ``classifier``.

``psa_aff_vgg``: ``vgg16_aff.py`` -> AffinityNetModule with ``fc6_dilation=4``,
``feature_levels=[conv4, conv5, fc7]``, ``branch_channels=[64, 128, 256]`` and
``branch_norm_groups=[8, 16, 32]``: ``f8_3/4/5`` are ``branches.0/1/2``, ``gn8_3/4/5`` are
``branch_norms.0/1/2``, ``f9`` is ``embed``.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.models.official.strict import CheckpointMismatchError, load_mapped
from wsss.models.official.vgg import _features_key

__all__ = ["PSA_VGG_MEAN", "PSA_VGG_STD", "load_psa_aff", "load_psa_aff_vgg", "load_psa_cls", "load_psa_vgg"]

# vgg16d.Normalize: x - (122.675, 116.669, 104.008) on 0..255 RGB values, as [0, 1] mean/std.
PSA_VGG_MEAN = (122.675 / 255, 116.669 / 255, 104.008 / 255)
PSA_VGG_STD = (1 / 255, 1 / 255, 1 / 255)
# vgg16d's conv names -> torchvision vgg16.features indices.
_VGG_CONVS = dict(zip(
    [f"conv{a}_{b}" for a, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for b in range(1, n + 1)],
    [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
))  # fmt: skip

_AFF_HEAD = {"f8_3": "branches.0", "f8_4": "branches.1", "f8_5": "branches.2", "f9": "embed"}
_VGG_AFF_HEAD = {**_AFF_HEAD, "gn8_3": "branch_norms.0", "gn8_4": "branch_norms.1", "gn8_5": "branch_norms.2"}


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


def _vgg_trunk_key(key: str) -> str | None:
    head, _, rest = key.partition(".")
    if head in _VGG_CONVS:
        return _features_key(f"features.{_VGG_CONVS[head]}.{rest}")
    if head in ("fc6", "fc7"):
        return f"backbone.{head}.0.{rest}"
    return None


def _bgr_to_rgb(ours: str, value: Tensor) -> Tensor:
    # conv1_1 read B, G, R; our images are R, G, B.
    return value.flip(1) if ours == "backbone.conv3.0.weight" else value


def _check_vgg16d(module: nn.Module, fmt: str, fc6_dilation: int) -> None:
    backbone = getattr(module, "backbone", None)
    if type(backbone).__name__ != "VGG16Backbone" or backbone.fc6_dilation != fc6_dilation:
        raise CheckpointMismatchError(
            f"format {fmt!r} needs PSA's vgg16d: backbone.name=vgg16 +backbone.deeplab_pools=true "
            f"+backbone.fc6_dilation={fc6_dilation}"
        )
    mean, std = getattr(backbone, "mean", None), getattr(backbone, "std", None)
    if mean is not None and (
        max(abs(a - b) for a, b in zip(mean, PSA_VGG_MEAN)) > 1e-6
        or max(abs(a / b - 1) for a, b in zip(std, PSA_VGG_STD)) > 1e-5
    ):
        raise CheckpointMismatchError(
            f"format {fmt!r}: PSA's VGG-16 expects Caffe-mean-subtracted 0..255 images; set "
            f"backbone.mean={[round(m, 6) for m in PSA_VGG_MEAN]} backbone.std=[1/255]*3 "
            f"(experiment=psa_release_vgg16 does), got mean={list(mean)} std={list(std)}"
        )


def load_psa_vgg(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """PSA's VGG-16 classifier (``vgg16_cls.py``) -> CAMModule (vgg16d, fc6 dilation 1)."""
    _check_vgg16d(module, "psa_vgg", 1)
    if not getattr(module, "sqrt_cam", False):
        raise CheckpointMismatchError(
            "format 'psa_vgg': PSA's VGG-16 CAMs are sqrt(relu(fc8)); set method.sqrt_cam=true"
        )
    rename = lambda key: "classifier.weight" if key == "fc8.weight" else _vgg_trunk_key(key)
    return load_mapped(module, state, rename, source=source, fmt="psa_vgg", transform=_bgr_to_rgb)


def load_psa_aff_vgg(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """PSA's VGG-16 AffinityNet (``vgg16_aff.py``) -> AffinityNetModule (vgg16d, fc6 dilation 4)."""
    _check_vgg16d(module, "psa_aff_vgg", 4)
    levels = list(getattr(module, "levels", []))
    norms = getattr(module, "branch_norms", None)
    groups = None if norms is None else [n.num_groups for n in norms]
    if levels != ["conv4", "conv5", "fc7"] or groups != [8, 16, 32]:
        raise CheckpointMismatchError(
            "format 'psa_aff_vgg' needs feature_levels=[conv4, conv5, fc7] and "
            f"branch_norm_groups=[8, 16, 32] (PSA's f8_3/f8_4/f8_5 + gn8_*), got {levels} and {groups}"
        )

    def rename(key: str) -> str | None:
        head, _, rest = key.partition(".")
        return f"{_VGG_AFF_HEAD[head]}.{rest}" if head in _VGG_AFF_HEAD else _vgg_trunk_key(key)

    return load_mapped(module, state, rename, source=source, fmt="psa_aff_vgg", transform=_bgr_to_rgb)
