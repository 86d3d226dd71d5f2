"""Models of earlier fit stages, rebuilt from their config and saved weights, on the stage device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from wsss.io import load_npz
from wsss.pipeline.context import MODEL_FILE, StageContext, init_backbone, load_model

SHIFT_FILE = "mean_shift.npz"  # calibrate_irn's output: ``mean`` (2,) float32, dy then dx


@contextmanager
def torch_threads(num: int | None) -> Iterator[None]:
    """Run the block with ``num`` intra-op threads (None = leave torch's setting), then restore.

    Many small ops (pair losses, sparse random walks) on a small shared CPU suffer badly from
    thread oversubscription: one IRNet step went from ~50 s to ~1 s with 1 thread under load.
    """
    previous = torch.get_num_threads()
    if num:
        torch.set_num_threads(int(num))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def stage_module(ctx: StageContext, role: str) -> torch.nn.Module:
    """A fresh (untrained) network of the fit stage read under ``role``: its ``module`` node, or
    ``cfg.method`` for a stage without one (the classifier stage ``train_cls``)."""
    node = ctx.read_config(role).get("module")
    return instantiate(node if node is not None else ctx.cfg.method)


def load_stage_model(ctx: StageContext, role: str, to_device: bool = True) -> torch.nn.Module:
    """The network of the fit stage read under ``role`` with its ``model.pt``, in eval mode."""
    model = load_model(stage_module(ctx, role), ctx.read(role) / MODEL_FILE)
    return model.to(ctx.device()) if to_device else model


def init_from(ctx: StageContext, model: torch.nn.Module, role: str = "init") -> str | None:
    """Copy the backbone of the fit stage read under ``role`` (optional) into ``model``."""
    stage_dir = ctx.read_optional(role)
    if stage_dir is None:
        return None
    init_backbone(model, stage_dir / MODEL_FILE)
    return ctx.read_stage(role)


def load_calibrated_irn(ctx: StageContext) -> torch.nn.Module:
    """The IRNet of role ``model`` with the mean shift of role ``calibration`` (calibrate_irn)."""
    model = load_stage_model(ctx, "model")
    path = ctx.read("calibration") / SHIFT_FILE
    shift = load_npz(path)
    if "mean" not in shift or shift["mean"].shape != (2,):
        raise KeyError(f"{path} must hold 'mean' of shape (2,)")
    model.mean_shift.copy_(torch.from_numpy(shift["mean"].astype(np.float32)))
    return model


def fit_on_labels(ctx: StageContext, model: torch.nn.Module, labels: Path, checkpoint_dir: Path) -> torch.nn.Module:
    """Fit ``model`` (a segmenter) on the label PNGs in ``labels`` with the stage's ``split``,
    ``batch_size``, ``crop_size``, ``scale_range`` and ``max_epochs``, without validation; a fit
    killed midway resumes from ``checkpoint_dir/last.ckpt`` (self_train rounds, MCOF iterations)."""
    p = ctx.params
    datamodule = ctx.datamodule(mode="segmentation", train_split=p.split, label_dir=str(labels),
                                batch_size=p.batch_size, crop_size=p.crop_size,
                                scale_range=list(p.scale_range))  # fmt: skip
    ctx.fit(model, checkpoint_dir=checkpoint_dir,
            trainer_kwargs={"max_epochs": int(p.max_epochs), "limit_val_batches": 0, "logger": False},
            datamodule=datamodule)
    return model
