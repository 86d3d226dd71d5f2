"""Run the stages of ``cfg.pipeline.order`` in turn, each in its own directory with its metrics."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_method, instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from wsss.io import write_json
from wsss.pipeline import wandb_dashboard
from wsss.pipeline.context import (
    METRICS_FILE,
    REUSED_FILE,
    StageContext,
    finish_stage,
    finished_stage_dir,
    read_metrics,
)

log = logging.getLogger(__name__)

# The figures the end-of-run table shows, per stage, when present.
HEADLINE = ("miou", "miou_crf", "miou_ms", "threshold", "holdout_miou", "val_mAP", "ap50",
            "cue_precision", "cue_coverage")


def make_loggers(cfg: DictConfig, stage: str, run_dir: Path) -> list[Logger]:
    """One logger set per stage: CSV under the stage dir; W&B runs grouped by the run dir."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        if wandb_dashboard.is_wandb(node):  # config, group, tags: see wandb_dashboard
            loggers.append(wandb_dashboard.build_logger(cfg, stage, run_dir, node))
            continue
        loggers.append(instantiate(node, save_dir=str(run_dir / "stages" / stage), name="csv", version=""))
    return loggers


def _close(loggers: list[Logger]) -> None:
    for logger in loggers:
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()  # one W&B run per stage


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict[str, dict]:
    """Run the pipeline; returns {stage: metrics}. Finished stages are reused with ``skip_done``."""
    L.seed_everything(cfg.seed, workers=True)
    check_num_classes(cfg)
    pipe = cfg.pipeline
    unknown = [s for s in (pipe.only or []) if s not in pipe.order]
    if unknown:
        raise KeyError(f"pipeline.only names stages {unknown} not in pipeline.order {list(pipe.order)}")
    check_threshold_protocol(cfg, run_dir)
    results: dict[str, dict] = {}
    reused: dict[str, str] = {}
    sources: dict[tuple, Any] = {}  # dataset readers shared by this run's stages
    # from_run stages are reused only as a prefix of the order: once a stage runs here, later
    # stages depend on it and must run here too, even if from_run has a stage of that name.
    prefix = True
    for name in pipe.order:
        if name not in cfg.stages:
            raise KeyError(f"pipeline.order names stage {name!r} but cfg.stages has no such entry")
        stage_dir = run_dir / "stages" / name
        reusable = _finished_elsewhere(cfg, name, stage_dir, from_run=prefix)
        if (pipe.only and name not in pipe.only) or (reusable is not None and not pipe.only):
            if reusable is not None:
                results[name] = read_metrics(reusable)
                if reusable != stage_dir:
                    reused[name] = str(reusable.resolve())
            continue
        if prefix and reused and _rank() == 0:
            write_json(run_dir / REUSED_FILE, reused)  # before any stage here can need it
        prefix = False
        all_ranks = bool(cfg.stages[name].get("all_ranks", False))
        if _rank() != 0 and not all_ranks:
            results[name] = _wait_for_rank_zero(stage_dir, float(pipe.get("rank_wait_s", 86400)))
            continue
        log.info("stage %s", name)
        ctx = StageContext(cfg, name, run_dir, loggers=make_loggers(cfg, name, run_dir),
                           sources=sources)
        start = time.perf_counter()
        try:
            metrics = get_method(cfg.stages[name]["_target_"])(ctx)
            metrics["seconds"] = round(time.perf_counter() - start, 1)
            # Every scalar a stage reports also reaches its loggers (CSV / W&B summary).
            ctx.log_metrics({k: v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
            wandb_dashboard.log_stage(ctx, metrics)  # summary, tables, masks, artifacts
        finally:
            _close(ctx.loggers)
        if all_ranks:
            _barrier()  # every rank's share (e.g. predicted CAMs) is on disk before the marker
        if _rank() == 0:
            finish_stage(ctx, metrics)
        results[name] = {"stage": name, **metrics}  # the same dict metrics.json holds
    if prefix and reused and _rank() == 0:
        write_json(run_dir / REUSED_FILE, reused)  # every stage was reused
    print_summary(results)
    return results


def _rank() -> int:
    """Global rank (0 without DDP); Lightning sets it from the launcher's environment."""
    return int(L.fabric.utilities.rank_zero.rank_zero_only.rank)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _wait_for_rank_zero(stage_dir: Path, timeout_s: float, poll_s: float = 2.0) -> dict:
    """Under DDP only stages with ``all_ranks: true`` (those that fit or predict with a Trainer)
    run on every rank; the others run on rank 0 while the rest wait for its metrics.json."""
    deadline = time.monotonic() + timeout_s
    marker = stage_dir / METRICS_FILE
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {_rank()}: rank 0 did not finish {stage_dir} within "
                               f"{timeout_s:.0f} s (pipeline.rank_wait_s)")
        time.sleep(poll_s)
    return read_metrics(stage_dir)


def check_num_classes(cfg: DictConfig) -> None:
    """``data.num_classes`` sizes every network head; it must be the dataset's class count."""
    from wsss.data.sources import open_source
    from wsss.pipeline.context import resolve_data_root

    data = cfg.data
    src = open_source(data.get("source"), resolve_data_root(cfg), cfg.protocol.eval_split,
                      splits=data.get("splits"), check_images=False)  # fmt: skip
    if int(data.num_classes) != src.num_classes:
        raise ValueError(
            f"data.num_classes={data.num_classes} but {src!r} has {src.num_classes} classes "
            f"({', '.join(src.class_names[:5])}, ...); set data.num_classes={src.num_classes}"
        )


def check_threshold_protocol(cfg: DictConfig, run_dir: Path) -> None:
    """Fail before any training when ``eval_cam`` will run with a ``protocol.threshold_mode``
    that needs GT masks the data lacks (e.g. ``holdout`` on a folder without masks)."""
    pipe, name = cfg.pipeline, "eval_cam"
    if name not in pipe.order or name not in cfg.stages or (pipe.only and name not in pipe.only):
        return
    if not pipe.only and _finished_elsewhere(cfg, name, run_dir / "stages" / name, from_run=True):
        return  # reused, not run
    if cfg.stages[name].get("_target_") != "wsss.pipeline.stages.eval_cam.run":
        return
    from wsss.pipeline.stages.eval_cam import threshold_plan

    threshold_plan(StageContext(cfg, name, run_dir))


def _finished_elsewhere(cfg: DictConfig, name: str, stage_dir: Path, from_run: bool) -> Path | None:
    """A finished copy of this stage to reuse: this run's (``skip_done``) or ``from_run``'s."""
    pipe = cfg.pipeline
    candidates = [stage_dir] if pipe.skip_done else []
    found = next((c for c in candidates if (c / METRICS_FILE).is_file()), None)
    if found is None and from_run and pipe.get("from_run"):
        found = finished_stage_dir(Path(pipe.from_run), name)
    return found


def print_summary(results: dict[str, dict]) -> None:
    """The HEADLINE figures per stage; ``null`` ones (no GT masks to score against) show as n/a."""
    table = Table(title="wsss results")
    for column in ("stage", "metric", "value", "includes"):
        table.add_column(column)
    for stage, metrics in results.items():
        for key in HEADLINE:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                table.add_row(stage, key, f"{value:.4f}", str(metrics.get("includes", ""))[:60])
            elif key in metrics and value is None:
                table.add_row(stage, key, "n/a", "no GT masks to score against")
    Console().print(table)
