"""Fit stages that load an authors' release instead of training (``from_checkpoint``).

A fit stage (``train_cls``, ``train_irn``, ``train_affinity``) with
``stages.<stage>.from_checkpoint=/path/to/release.pth`` and ``checkpoint_format=<format>``
(:data:`wsss.models.official.FORMATS`) builds its module as usual, loads the release through
the strict loader, writes ``model.pt`` and fits nothing; every later stage then runs on the
release's weights with our protocol.
"""

from __future__ import annotations

from typing import Any

import torch

from wsss.models.official import FORMATS, load_official
from wsss.pipeline.context import MODEL_FILE, StageContext, save_model


def load_release(ctx: StageContext, model: torch.nn.Module) -> dict[str, Any] | None:
    """Load ``from_checkpoint`` into ``model`` and save it as this stage's model; the stage's
    metrics, or ``None`` when the stage has no ``from_checkpoint`` (train as usual)."""
    p = ctx.params
    path = p.get("from_checkpoint")
    if not path:
        return None
    fmt = p.get("checkpoint_format")
    if fmt not in FORMATS:
        raise ValueError(
            f"stages.{ctx.name}.from_checkpoint={path} needs stages.{ctx.name}.checkpoint_format "
            f"set to one of {sorted(FORMATS)}, got {fmt!r}"
        )
    load_official(model, path, fmt)
    save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {"from_checkpoint": str(path), "checkpoint_format": fmt, "epochs": 0,
               "includes": f"released weights ({fmt}), not trained here"}  # fmt: skip
    shift = getattr(model, "mean_shift", None)
    if isinstance(shift, torch.Tensor):  # IRN: the displacement mean shift train_irn.py stored
        metrics["mean_shift"] = [float(v) for v in shift.flatten()]
    return metrics
