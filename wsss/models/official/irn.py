"""IRN (jiwoon-ahn/irn) releases: the ResNet-50 CAM network and IRNet.

``irn_cam``: ``res50_cam.pth`` (``net/resnet50_cam.py``) -> :class:`wsss.methods.cam.CAMModule`
with ``backbone.name=resnet50 backbone.output_stride=16 backbone.dilate=false``. The official
state dict names every backbone tensor three times (``resnet50.*``, ``stage1..4.*``,
``backbone.*``) and the classifier twice (``classifier``, ``newly_added.0``); aliases must agree.

``irn``: ``res50_irn.pth`` (``net/resnet50_irn.py``, saved by ``step/train_irn.py`` from
``AffinityDisplacementLoss``) -> :class:`wsss.methods.irnet.IRNetModule` with ``official=True``
and the same backbone. ``path_indices*`` and ``disp_target`` are derived from the pair radius
and are not loaded; ``mean_shift.running_mean`` goes to our ``mean_shift`` buffer.

IRN's layer4 has stride 1 *without* dilation; ours dilates by default, so both loaders refuse a
dilated backbone (the CAMs would differ by up to ~0.16 after normalisation on the same weights).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from wsss.models.official.strict import CheckpointMismatchError, load_mapped

__all__ = ["load_irn", "load_irn_cam"]

# CAM net: stage1 = (conv1, bn1, relu, maxpool, layer1); IRNet: stage1 = (conv1, bn1, relu,
# maxpool), stage2 = layer1. Index -> our backbone prefix.
_CAM_STAGES = {
    "0.0": "stem.0",
    "0.1": "stem.1",
    "0.4": "layer1",
    "1.0": "layer2",
    "2.0": "layer3",
    "3.0": "layer4",
}
_IRN_STAGES = {
    "0.0": "stem.0",
    "0.1": "stem.1",
    "1.0": "layer1",
    "2.0": "layer2",
    "3.0": "layer3",
    "4.0": "layer4",
}
_RESNET = {"conv1": "stem.0", "bn1": "stem.1"}
_LEVELS = ["stem", "layer1", "layer2", "layer3", "layer4"]


def _backbone_key(key: str, stages: dict[str, str]) -> str | None:
    m = re.fullmatch(r"resnet50\.(conv1|bn1|layer[1-4])\.(.+)", key)
    if m:
        return f"backbone.{_RESNET.get(m[1], m[1])}.{m[2]}"
    m = re.fullmatch(r"(?:stage(\d)|backbone\.(\d))\.(\d+)\.(.+)", key)
    if m:
        index = int(m[1]) - 1 if m[1] else int(m[2])
        prefix = stages.get(f"{index}.{m[3]}")
        return None if prefix is None else f"backbone.{prefix}.{m[4]}"
    return None


def _check_undilated(module: nn.Module, fmt: str) -> None:
    layer4 = getattr(getattr(module, "backbone", None), "layer4", None)
    if layer4 is None:
        raise CheckpointMismatchError(
            f"format {fmt!r} needs a ResNet-50 backbone (backbone.name=resnet50)"
        )
    dilations = {m.dilation for m in layer4.modules() if isinstance(m, nn.Conv2d)}
    if dilations != {(1, 1)}:
        raise CheckpointMismatchError(
            f"format {fmt!r}: IRN's layer4 has stride 1 without dilation, this backbone dilates it "
            f"{sorted(dilations)}; set backbone.output_stride=16 and +backbone.dilate=false"
        )


def _cam_key(key: str) -> str | None:
    if key in ("classifier.weight", "newly_added.0.weight"):
        return "classifier.weight"
    return _backbone_key(key, _CAM_STAGES)


def load_irn_cam(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """``res50_cam.pth`` -> CAMModule (ResNet-50, output stride 16, ``dilate=False``)."""
    _check_undilated(module, "irn_cam")
    return load_mapped(module, state, _cam_key, source=source, fmt="irn_cam")


def _irn_key(key: str) -> str | None:
    if key in ("mean_shift.running_mean", "fc_dp7.4.running_mean", "dp_layers.6.4.running_mean"):
        return "mean_shift"
    m = re.fullmatch(r"(?:fc_edge(\d)|edge_layers\.(\d))\.(.+)", key)
    if m:
        i = int(m[1]) - 1 if m[1] else int(m[2])
        return "edge_out." + m[3] if i == 5 else f"edge_branches.{_LEVELS[i]}.{m[3]}"
    m = re.fullmatch(r"(?:fc_dp(\d)|dp_layers\.(\d))\.(\d)\.(.+)", key)
    if m:
        i = int(m[1]) - 1 if m[1] else int(m[2])
        if i < 5:
            return f"dp_branches.{_LEVELS[i]}.{m[3]}.{m[4]}"
        if i == 5:  # fc_dp6: conv, GN, Upsample, ReLU
            return {"0": "dp_coarse", "1": "dp_coarse_norm"}.get(m[3], "?") + "." + m[4]
        return {"0": "dp_out.0.0", "1": "dp_out.0.1", "3": "dp_out.1"}.get(m[3], "?") + "." + m[4]
    return _backbone_key(key, _IRN_STAGES)


def load_irn(module: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """``res50_irn.pth`` -> IRNetModule(official=True) (ResNet-50, output stride 16, ``dilate=False``)."""
    if not getattr(module, "official", False):
        raise CheckpointMismatchError(
            "format 'irn' needs IRNetModule(official=True) (IRN's exact head)"
        )
    _check_undilated(module, "irn")
    return load_mapped(module, state, _irn_key, source=source, fmt="irn",
                       derived=[r"path_indices\d+", "disp_target"])  # fmt: skip
