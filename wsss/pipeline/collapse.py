"""Collapse guard for every stage that trains a segmenter (train_seg, self_train, train_sec, mcof).

After training, the stage calls :func:`collapse_guard`: it predicts (single scale, argmax) the
validation images, compares the predicted foreground fraction with the foreground fraction of
the training labels (:func:`wsss.metrics.collapse.collapse_verdict`) and returns the numbers for
the stage's ``metrics.json``. Config ``collapse_guard`` (``conf/train.yaml``):

* ``mode``: ``warn`` (log a warning, ``collapse_collapsed: true`` in metrics.json), ``fail``
  (write ``collapse.json`` into the stage directory and raise :class:`SegmenterCollapse`, so the
  stage is not marked finished) or ``off``;
* ``min_ratio``: collapsed when predicted / label foreground fraction < min_ratio;
* ``max_images``: at most this many validation images (evenly spaced) are predicted.

No ground truth is needed: the guard also runs on folders without masks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from wsss.functional.segmentation import multiscale_probs
from wsss.io import load_label_png, write_json
from wsss.metrics.collapse import ForegroundCounter, collapse_verdict
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import stage_images

log = logging.getLogger(__name__)

COLLAPSE_FILE = "collapse.json"
MODES = ("warn", "fail", "off")


class SegmenterCollapse(RuntimeError):
    """A trained segmenter predicts (almost) only background; see ``collapse.json``."""


def label_foreground_fraction(label_dir: Path, ids: Iterable[str], sparse: bool = False) -> float | None:
    """Foreground fraction of the label PNGs ``label_dir/<id>.png`` that exist: of the labelled
    pixels (255 not counted), or of all pixels when the labels are ``sparse`` (cues)."""
    counter = ForegroundCounter(count_ignored=sparse)
    for name in ids:
        path = Path(label_dir) / f"{name}.png"
        if path.is_file():
            counter.update(load_label_png(path))
    return counter.fraction


@torch.no_grad()
def predicted_foreground_fraction(model: nn.Module, dataset, max_images: int | None = None) -> float | None:
    """Foreground fraction of ``model``'s single-scale argmax over ``dataset`` (dicts with
    ``image`` (3, H, W) normalised); ``max_images`` evenly spaced images at most."""
    n = len(dataset)
    if max_images is not None and n > max_images:
        dataset = Subset(dataset, np.linspace(0, n - 1, max_images).round().astype(int).tolist())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = ForegroundCounter()
    try:
        for i in range(len(dataset)):
            image = dataset[i]["image"][None].to(device)
            counter.update(multiscale_probs(model, image).argmax(0).cpu())
    finally:
        model.train(was_training)
    return counter.fraction


def guard_settings(ctx: StageContext) -> dict:
    cfg = ctx.cfg.get("collapse_guard") or {}
    settings = {"mode": str(cfg.get("mode", "warn")), "min_ratio": float(cfg.get("min_ratio", 0.25)),
                "max_images": cfg.get("max_images", 200)}
    if settings["mode"] not in MODES:
        raise ValueError(f"collapse_guard.mode must be one of {MODES}, got {settings['mode']!r}")
    return settings


def collapse_guard(ctx: StageContext, model: nn.Module, label_dir: Path, label_ids: Iterable[str],
                   tag: str = "", sparse_labels: bool = False) -> dict:  # fmt: skip
    """Measure and act on a collapse of ``model`` trained on ``label_dir`` (ids ``label_ids``).

    ``sparse_labels``: the labels mark only some pixels (SEC's cues); their foreground fraction is
    then taken over all pixels. Of the cued pixels only it would be set by the cue rules (SEC's
    background cues are the 10 % least salient pixels, so ~70 % of cued pixels are foreground
    while objects cover ~10 % of the synthetic images) and flag even a segmenter that predicts
    the ground truth.

    Returns ``{"collapse_pred_fg_fraction", "collapse_label_fg_fraction", "collapse_fg_ratio",
    "collapse_min_ratio", "collapse_collapsed", "collapse_split"}`` for metrics.json (``{}`` with
    mode ``off``). ``tag`` names the model in messages (e.g. ``round 2``).
    """
    settings = guard_settings(ctx)
    if settings["mode"] == "off":
        return {}
    split = ctx.cfg.data.module.val_split
    dataset = stage_images(ctx, [split], include_holdout=True)
    verdict = collapse_verdict(predicted_foreground_fraction(model, dataset, settings["max_images"]),
                               label_foreground_fraction(label_dir, label_ids, sparse_labels),
                               settings["min_ratio"])  # fmt: skip
    out = {f"collapse_{k}": v for k, v in verdict.items()}
    out["collapse_split"] = split
    out["collapse_label_fraction_of"] = "all pixels (sparse labels)" if sparse_labels else "labelled pixels"
    if verdict["collapsed"]:
        what = f"stage {ctx.name!r}{' ' + tag if tag else ''}"
        of_all = " (of all pixels)" if sparse_labels else ""
        message = (f"{what}: the segmenter collapsed towards background: it predicts "
                   f"{verdict['pred_fg_fraction']:.4f} foreground on {split!r} but was trained on labels "
                   f"with {verdict['label_fg_fraction']:.4f} foreground{of_all} (ratio {verdict['fg_ratio']:.3f} "
                   f"< collapse_guard.min_ratio={settings['min_ratio']}). Its labels are in {label_dir}.")
        if settings["mode"] == "fail":
            write_json(ctx.out_dir / COLLAPSE_FILE, {"stage": ctx.name, "tag": tag, **out, "message": message})
            raise SegmenterCollapse(message + " (collapse_guard.mode=fail; =warn to continue)")
        log.warning("%s", message)
    return out
