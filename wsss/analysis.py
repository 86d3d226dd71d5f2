"""What the notebooks compute, as plain functions (no logic lives only in a notebook).

``notebooks/explore_dataset.ipynb``: :func:`compose_config`, :func:`open_split`,
:func:`class_counts`, :func:`cooccurrence`; ``inspect_run.ipynb``: :func:`run_config`,
:func:`run_metrics`, :func:`per_image_miou`; ``compare_runs.ipynb``: :func:`compare`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from wsss.conf import register_resolvers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
HEADLINE = ("miou", "miou_crf", "miou_ms", "threshold", "holdout_miou", "val_mAP", "ap50")


def compose_config(overrides: Sequence[str] = (), conf_dir: str | Path | None = None) -> DictConfig:
    """``conf/train.yaml`` composed like ``python train.py OVERRIDES`` (without running)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(conf_dir or CONF_DIR).resolve()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_config(run_dir: str | Path) -> DictConfig:
    """The composed config a run was started with (``<run>/.hydra/config.yaml``)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a run directory written by train.py")
    register_resolvers()
    return OmegaConf.load(path)


def open_split(cfg: DictConfig, split: str, for_eval: bool = True) -> Any:
    """The dataset reader (``wsss.data.sources``) of ``split``; ``for_eval``: the evaluation masks."""
    from wsss.data.sources import open_source
    from wsss.pipeline.context import resolve_data_root

    data = cfg.data
    mask_dir = data.get("eval_mask_dir") if for_eval else data.module.get("mask_dir")
    return open_source(data.get("source"), resolve_data_root(cfg), split, splits=data.get("splits"),
                       mask_dir=mask_dir, check_images=False)


def class_counts(src: Any) -> dict[str, int]:
    """Images per class (image-level labels) of a reader, in class order."""
    counts = src.label_matrix().sum(axis=0).astype(int)
    return {name: int(n) for name, n in zip(src.class_names, counts, strict=True)}


def cooccurrence(src: Any) -> np.ndarray:
    """(C, C) int: images holding both class i and class j (diagonal: images with class i)."""
    labels = (src.label_matrix() > 0).astype(np.int64)
    return labels.T @ labels


def run_metrics(run_dir: str | Path, order: Iterable[str] | None = None) -> dict[str, dict]:
    """``{stage: metrics.json}`` of a run, its reused stages (``reused.json``) included."""
    from wsss.pipeline.context import finished_stage_dir, read_metrics

    run_dir = Path(run_dir)
    names = list(order) if order is not None else []
    if not names:
        config = run_dir / ".hydra" / "config.yaml"
        if config.is_file():
            names = list(OmegaConf.select(OmegaConf.load(config), "pipeline.order") or [])
        names += sorted(p.name for p in (run_dir / "stages").glob("*") if p.name not in names)
    found = {}
    for name in names:
        stage_dir = finished_stage_dir(run_dir, name)
        if stage_dir is not None:
            found[name] = read_metrics(stage_dir)
    return found


def compare(run_dirs: Sequence[str | Path], keys: Sequence[str] = HEADLINE) -> list[dict[str, Any]]:
    """One row per (run, stage) with the headline metrics present: the side-by-side table."""
    rows = []
    for run_dir in run_dirs:
        for stage, metrics in run_metrics(run_dir).items():
            values = {k: metrics[k] for k in keys
                      if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)}
            if values:
                rows.append({"run": Path(run_dir).name, "stage": stage, **values})
    return rows


def per_image_miou(label_dir: str | Path, src: Any, num_classes: int) -> list[tuple[str, float]]:
    """(id, mIoU) of every label PNG in ``label_dir`` that has a GT mask in ``src``, worst first.

    ``num_classes`` counts background. Per image, classes absent from both GT and prediction are
    left out of the mean (the split-level convention applied to one image); unsure (255)
    predictions count as background, void GT pixels are ignored.
    """
    from wsss.data.labels import IGNORE
    from wsss.io import load_label_png
    from wsss.metrics.segmentation import scores_from_confusion

    scores = []
    for path in sorted(Path(label_dir).glob("*.png")):
        if path.stem not in set(src.ids) or not src.has_mask(path.stem):
            continue
        pred, gt = load_label_png(path).astype(np.int64), src.load_mask(path.stem).astype(np.int64)
        pred[pred == IGNORE] = 0  # unsure pseudo-label pixels count as background (as in the stages)
        keep = gt != IGNORE
        confusion = np.bincount(gt[keep] * num_classes + pred[keep],
                                minlength=num_classes**2).reshape(num_classes, num_classes)
        scores.append((path.stem, scores_from_confusion(confusion)["miou"]))
    return sorted(scores, key=lambda item: item[1])


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts as a markdown table (floats with 4 decimals)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
                 for v in (row.get(c) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
