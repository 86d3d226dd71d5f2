"""Speed settings of network forwards (config node ``perf``), applied in one place.

Methods (LightningModules) know nothing about memory formats or compilation. The runner calls
:func:`configure` with ``cfg.perf`` once per run; then

* every Trainer built by ``StageContext.trainer`` gets :class:`PerfCallback`, which converts the
  module (and each batch's ``image``) to ``channels_last`` when fitting / predicting as set, and
  optionally ``torch.compile``\\ s the backbone;
* every model loaded for inference (``wsss.pipeline.context.load_model``: CAMs outside
  ``make_cam``, evaluation, walks, ...) goes through :func:`prepare_for_inference`.

``channels_last`` (NHWC) changes only the memory layout: the same convolutions run with other
kernels, so results agree to float rounding (CAMs: max abs diff ~1e-6 of maps of order 1, see
``tests/test_perf.py``) and identical arg-max labels in practice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["PerfCallback", "PerfSettings", "callbacks", "configure", "prepare_for_inference",
           "settings", "to_channels_last"]


@dataclass(frozen=True)
class PerfSettings:
    """``perf`` config node. Defaults follow bench/run_all.py measurements (README, Performance).

    Attributes:
        channels_last_fit: NHWC network + inputs during Trainer fits (CPU, ResNet-18 at 112 px
            crops: 1.07x the time of NCHW, hence off by default).
        channels_last_predict: NHWC for inference (CAMs, evaluation, walks): ResNet-50 MS+flip
            CAMs on CPU take 0.69x the time of NCHW at 500x375, 0.97x at 250x188.
        compile: ``torch.compile`` the backbone for fits and Trainer predictions (GPU; needs
            a C++ toolchain on CPU, pays off only for long runs).
    """

    channels_last_fit: bool = False
    channels_last_predict: bool = True
    compile: bool = False


_SETTINGS = PerfSettings()


def configure(node: Mapping[str, Any] | None) -> PerfSettings:
    """Set the run's settings from ``cfg.perf`` (``None``/missing keys keep the defaults).

    ``channels_last`` may be a bool (both phases) or ``{fit: bool, predict: bool}``.
    """
    global _SETTINGS
    node = dict(node or {})
    unknown = set(node) - {"channels_last", "compile"}
    if unknown:
        raise KeyError(f"perf has unknown keys {sorted(unknown)}; expected channels_last, compile")
    fit, predict = PerfSettings.channels_last_fit, PerfSettings.channels_last_predict
    value = node.get("channels_last")
    if isinstance(value, bool):
        fit = predict = value
    elif value is not None:
        value = dict(value)
        if set(value) - {"fit", "predict"}:
            raise KeyError(f"perf.channels_last takes fit / predict, got {sorted(value)}")
        fit, predict = bool(value.get("fit", fit)), bool(value.get("predict", predict))
    _SETTINGS = PerfSettings(channels_last_fit=fit, channels_last_predict=predict,
                             compile=bool(node.get("compile", False)))
    return _SETTINGS


def settings() -> PerfSettings:
    return _SETTINGS


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert a module's 4-D parameters and buffers to NHWC in place (returns the module)."""
    return module.to(memory_format=torch.channels_last)


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """Apply the inference settings to a loaded model (in place; returns it)."""
    if _SETTINGS.channels_last_predict:
        to_channels_last(module)
    return module


def _images_to_channels_last(batch: Any) -> None:
    if isinstance(batch, dict):
        image = batch.get("image")
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            batch["image"] = image.contiguous(memory_format=torch.channels_last)


class PerfCallback(L.Callback):
    """Applies :class:`PerfSettings` to a Trainer's module and batches."""

    def __init__(self, perf: PerfSettings | None = None) -> None:
        self.perf = perf or _SETTINGS
        self._phase_cl = False

    def _setup(self, pl_module: L.LightningModule, channels_last: bool) -> None:
        self._phase_cl = channels_last
        if channels_last:
            to_channels_last(pl_module)
        else:  # a module converted for an earlier phase goes back to NCHW
            pl_module.to(memory_format=torch.contiguous_format)
        backbone = getattr(pl_module, "backbone", None)
        if self.perf.compile and isinstance(backbone, nn.Module) and not getattr(backbone, "_wsss_compiled", False):
            backbone.compile()
            backbone._wsss_compiled = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._setup(pl_module, self.perf.channels_last_fit)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._setup(pl_module, self.perf.channels_last_predict)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._phase_cl:
            _images_to_channels_last(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._phase_cl:
            _images_to_channels_last(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._phase_cl:
            _images_to_channels_last(batch)


def callbacks() -> list[L.Callback]:
    """The callbacks ``StageContext.trainer`` adds to every Trainer."""
    return [PerfCallback(_SETTINGS)]
