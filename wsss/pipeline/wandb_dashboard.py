"""W&B as a dashboard: what each stage's run carries beyond the scalars Lightning logs.

One W&B run per stage (``conf/logger/wandb.yaml``). This module decides

- how the run is named and filed: ``group`` = the run directory relative to its parent
  (``runs/<time>`` or ``<multirun time>/<job>``, unique across sweeps), ``job_type`` = the stage,
  ``tags`` = method / backbone / data / pipeline / recipe, ``config`` = the whole resolved config with
  flattened keys (``stages.eval_cam.thresholds``, ``backbone.name``, ...) so runs filter and group
  by any hyper-parameter;
- what is logged when a stage finishes (:func:`log_stage`): its headline metrics and the
  ``config_hash`` of its manifest in the run summary, every ``per_class_*`` dict of its metrics as a ``wandb.Table`` (+ bar chart), label
  maps it wrote (pseudo-labels, predictions) and CAMs as ``wandb.Image`` with class-labelled
  segmentation masks (toggled in the W&B UI), and, when switched on, artifacts: ``model.pt`` of
  fit stages and the directories of label PNGs.

Options live under ``logger.wandb.dashboard`` and are removed before the logger is built.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

log = logging.getLogger(__name__)

# Metrics copied into the run summary unprefixed (``miou``), so the runs table compares stages.
HEADLINE = ("miou", "miou_crf", "miou_ms", "miou_full_split", "threshold", "holdout_miou",
            "val_mAP", "ap50", "cue_precision", "cue_coverage", "num_images", "num_evaluated",
            "seconds")
DEFAULTS: dict[str, Any] = {
    "num_images": 4,  # images per label / CAM directory shown with masks
    "cam_threshold": 0.25,  # background score of the CAM argmax mask
    "artifacts": {"checkpoints": False, "label_sets": False},
}
MODEL_FILE = "model.pt"


def is_wandb(node: Mapping[str, Any]) -> bool:
    return str(node.get("_target_", "")).endswith("WandbLogger")


def options(cfg: DictConfig) -> dict[str, Any]:
    """``logger.wandb.dashboard`` merged over :data:`DEFAULTS` (absent: the defaults)."""
    for node in (cfg.get("logger") or {}).values():
        if node is not None and is_wandb(node):
            given = node.get("dashboard") or {}
            merged = OmegaConf.merge(OmegaConf.create(DEFAULTS), given)
            return OmegaConf.to_container(merged, resolve=True)
    return dict(DEFAULTS)


def flat_config(cfg: DictConfig | Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """The resolved config as ``{"a.b.c": leaf}`` (lists stay lists; ``hydra`` is left out)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                walk(f"{prefix}{sep}{key}" if prefix else str(key), sub)
        else:
            out[prefix] = value

    walk("", {k: v for k, v in tree.items() if k != "hydra"})
    return out


def run_group(run_dir: Path) -> str:
    """``<parent>/<run>``: ``runs/2026-01-02_03-04-05`` or ``2026-01-02_03-04-05/3`` (job 3 of
    that multirun), so jobs of different sweeps never share a group."""
    run_dir = Path(run_dir).resolve()
    return f"{run_dir.parent.name}/{run_dir.name}"


def _choice(cfg: DictConfig, group: str) -> str | None:
    """The config-group option Hydra composed (``method=seam`` -> ``seam``), when known."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # not inside @hydra.main (tests, notebooks)
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _short(target: str | None, strip: str = "") -> str | None:
    if not target:
        return None
    name = str(target).rsplit(".", 1)[-1]
    return name[: -len(strip)].lower() if strip and name.endswith(strip) else name.lower()


def run_tags(cfg: DictConfig) -> list[str]:
    """``method:cam``, ``backbone:resnet18``, ``data:voc``, ``pipeline:cam``, ``recipe:small``
    (the last two when composed by ``train.py``), ``synthetic``."""
    method = _choice(cfg, "method") or _short(OmegaConf.select(cfg, "method._target_"), "Module")
    backbone = _choice(cfg, "backbone") or OmegaConf.select(cfg, "backbone.name")
    data = _choice(cfg, "data") or _short(OmegaConf.select(cfg, "data.source._target_"), "Source")
    pipeline, recipe = _choice(cfg, "pipeline"), _choice(cfg, "recipe")
    tags = [f"{k}:{v}" for k, v in (("method", method), ("backbone", backbone), ("data", data),
                                     ("pipeline", pipeline), ("recipe", recipe)) if v]
    if OmegaConf.select(cfg, "data.root") is None and OmegaConf.select(cfg, "data.synthetic"):
        tags.append("synthetic")
    return tags


def logger_kwargs(cfg: DictConfig, stage: str, run_dir: Path, node: Mapping[str, Any]) -> dict:
    """Arguments of ``WandbLogger`` for one stage (on top of ``logger.wandb``), and the node
    without the ``dashboard`` options (which are not ``wandb.init`` arguments)."""
    group = run_group(run_dir)
    config = flat_config(cfg)
    config.update({"wsss.stage": stage, "wsss.run_dir": str(Path(run_dir).resolve()),
                   "wsss.group": group})
    tags = list(node.get("tags") or []) + run_tags(cfg)
    return {"name": f"{group}/{stage}", "group": group, "job_type": stage, "tags": tags,
            "config": config, "save_dir": str(run_dir)}


def build_logger(cfg: DictConfig, stage: str, run_dir: Path, node: DictConfig) -> Logger:
    """The stage's ``WandbLogger`` from the ``logger.wandb`` node (see :func:`logger_kwargs`)."""
    from hydra.utils import get_class

    plain = OmegaConf.to_container(node, resolve=True)
    plain.pop("dashboard", None)
    extra = logger_kwargs(cfg, stage, run_dir, plain)
    plain.pop("tags", None)
    # Not hydra's instantiate: its first parameter is itself named ``config``.
    return get_class(plain.pop("_target_"))(**{**plain, **extra})


def _experiment(loggers: Iterable[Logger]) -> Any | None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.experiment
    return None


def log_stage(ctx: Any, metrics: Mapping[str, Any]) -> None:
    """After a stage ran: summary, per-class tables, masked images and artifacts (W&B only)."""
    run = _experiment(ctx.loggers)
    if run is None:
        return
    import wandb

    opts = options(ctx.cfg)
    out_dir = Path(ctx.out_dir)
    run.summary["stage"] = ctx.name
    # The hash its manifest.json records: runs with equal hashes were made with equal settings.
    from wsss.pipeline.manifest import fingerprint

    run.summary["config_hash"] = fingerprint(ctx.cfg, ctx.name)["config_hash"]
    for key in HEADLINE:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            run.summary[key] = value
    payload: dict[str, Any] = {}
    for key, table in per_class_tables(metrics).items():
        wb_table = wandb.Table(columns=["class", "value"], data=table)
        payload[f"{ctx.name}/{key}"] = wb_table
        payload[f"{ctx.name}/{key}_chart"] = wandb.plot.bar(wb_table, "class", "value",
                                                            title=f"{ctx.name} {key}")
    try:
        payload.update(masked_images(ctx, out_dir, int(opts["num_images"]), float(opts["cam_threshold"])))
    except (OSError, KeyError, ValueError) as err:  # a panel never fails a finished stage
        log.warning("W&B mask panels of stage %s skipped: %s", ctx.name, err)
    if payload:
        run.log(payload)
    _log_artifacts(run, ctx.name, out_dir, opts["artifacts"])


def per_class_tables(metrics: Mapping[str, Any]) -> dict[str, list[list]]:
    """``per_class_iou`` (and any other ``per_class_*``) -> rows ``[class, value]``, sorted by class."""
    tables = {}
    for key, value in metrics.items():
        if key.startswith("per_class") and isinstance(value, Mapping) and value:
            rows = [[str(c), float(v)] for c, v in sorted(value.items())
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if rows:
                tables[key] = rows
    return tables


def _label_dirs(out_dir: Path) -> list[Path]:
    """Sub-directories holding palette label PNGs (pseudo-labels, predictions)."""
    found = []
    for sub in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        first = next(iter(sorted(sub.glob("*.png"))), None)
        if first is not None:
            with Image.open(first) as im:
                if im.mode in ("P", "L"):
                    found.append(sub)
    return found


def _cam_dirs(out_dir: Path) -> list[Path]:
    return [sub for sub in sorted(p for p in out_dir.iterdir() if p.is_dir())
            if next(iter(sub.glob("*.npz")), None) is not None]


class _Images:
    """RGB and GT of an image id from whichever split of the dataset holds it."""

    def __init__(self, ctx: Any) -> None:
        from wsss.pipeline.image_sets import source

        cfg = ctx.cfg
        splits = dict.fromkeys(str(s) for s in (
            cfg.protocol.eval_split, cfg.protocol.holdout_split, cfg.data.module.train_split,
            cfg.data.module.val_split) if s)
        self.sources = []
        for split in splits:
            try:
                self.sources.append(source(ctx, split, for_eval=True, check_images=False))
            except (FileNotFoundError, KeyError, ValueError):
                continue

    def find(self, image_id: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        for src in self.sources:
            if image_id in set(src.ids):
                rgb = np.ascontiguousarray(src.load_image(image_id), dtype=np.uint8)
                gt = src.load_mask(image_id) if src.has_mask(image_id) else None
                return rgb, gt
        return None, None

    @property
    def class_labels(self) -> dict[int, str]:
        names = self.sources[0].class_names if self.sources else ()
        labels = {0: "background", **{i + 1: n for i, n in enumerate(names)}}
        labels[255] = "ignore"
        return labels


def masked_images(ctx: Any, out_dir: Path, num_images: int, cam_threshold: float) -> dict[str, list]:
    """``{"<stage>/masks/<dir>": [wandb.Image]}``: the first ``num_images`` of each label / CAM
    directory of the stage, with the label map (and the GT mask when there is one) as masks."""
    import wandb

    if num_images <= 0 or not out_dir.is_dir():
        return {}
    images = _Images(ctx)
    labels = images.class_labels
    out: dict[str, list] = {}

    def mask(data: np.ndarray) -> dict:
        return {"mask_data": data.astype(np.uint8), "class_labels": labels}

    for sub in _label_dirs(out_dir):
        panel = []
        for path in sorted(sub.glob("*.png"))[:num_images]:
            from wsss.io import load_label_png

            rgb, gt = images.find(path.stem)
            label = load_label_png(path)
            if rgb is None or rgb.shape[:2] != label.shape:
                continue
            masks = {sub.name: mask(label)}
            if gt is not None and gt.shape == label.shape:
                masks["ground_truth"] = mask(gt)
            panel.append(wandb.Image(rgb, masks=masks, caption=path.stem))
        if panel:
            out[f"{ctx.name}/masks/{sub.name}"] = panel
    for sub in _cam_dirs(out_dir):
        panel = []
        for path in sorted(sub.glob("*.npz"))[:num_images]:
            from wsss.pipeline.image_sets import load_cams
            from wsss.pipeline.visualize import heatmap

            try:
                cams, keys = load_cams(sub, path.stem)
            except (KeyError, ValueError):
                break  # not a CAM directory
            rgb, gt = images.find(path.stem)
            if rgb is None or rgb.shape[:2] != cams.shape[1:] or not len(cams):
                continue
            overlay = (0.5 * rgb + 0.5 * heatmap(cams.max(axis=0))).astype(np.uint8)
            masks = {"cam_argmax": mask(cam_label(cams, keys, cam_threshold))}
            if gt is not None and gt.shape == rgb.shape[:2]:
                masks["ground_truth"] = mask(gt)
            panel.append(wandb.Image(overlay, masks=masks, caption=path.stem))
        if panel:
            out[f"{ctx.name}/masks/{sub.name}"] = panel
    return out


def cam_label(cams: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """(K, H, W) CAMs in [0, 1] of classes ``keys`` -> (H, W) labels: ``keys[argmax] + 1``, 0 where
    every CAM is below ``threshold``."""
    best = cams.argmax(axis=0)
    label = np.asarray(keys)[best] + 1
    label[cams.max(axis=0) < threshold] = 0
    return label.astype(np.uint8)


def _artifact_name(stage: str, group: str, kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{group}-{stage}-{kind}").strip("-")


def _log_artifacts(run: Any, stage: str, out_dir: Path, switches: Mapping[str, bool]) -> None:
    import wandb

    group = str(run.group or "run")
    if switches.get("checkpoints") and (out_dir / MODEL_FILE).is_file():
        art = wandb.Artifact(_artifact_name(stage, group, "model"), type="model",
                             metadata={"stage": stage, "format": "state_dict (weights_only)"})
        art.add_file(str(out_dir / MODEL_FILE))
        run.log_artifact(art)
    if switches.get("label_sets"):
        for sub in _label_dirs(out_dir):
            art = wandb.Artifact(_artifact_name(stage, group, sub.name), type="pseudo_labels",
                                 metadata={"stage": stage, "dir": sub.name,
                                           "num_files": len(list(sub.glob("*.png")))})
            art.add_dir(str(sub))
            run.log_artifact(art)
