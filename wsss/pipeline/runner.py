"""Run the stages of ``cfg.pipeline.order`` in turn, each in its own directory with its metrics
and manifest; reuse finished stages only when their manifests match (see wsss.pipeline.manifest)."""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_method, instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from wsss import perf
from wsss.io import CorruptArtifactError, read_json, write_json
from wsss.pipeline import wandb_dashboard
from wsss.pipeline.context import (
    CKPT_DIR,
    METRICS_FILE,
    REUSED_FILE,
    StageContext,
    barrier,
    finish_stage,
    finished_stage_dir,
    is_finished,
    locate_stage,
    rank,
    read_metrics,
)
from wsss.pipeline.manifest import (
    MANIFEST_FILE,
    STARTED_FILE,
    build_manifest,
    digest,
    fingerprint,
    format_diff,
    read_manifest,
    reuse_diff,
    write_manifest,
)

log = logging.getLogger(__name__)

REPLACED_DIR = "replaced"  # <run>/replaced/<stage>-<time>: earlier attempts that no longer fit

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


@dataclass
class Step:
    """What the runner does with one stage of ``pipeline.order``.

    ``run``: run here (``replace``: this run's earlier copy no longer fits and is moved aside);
    ``reuse``: a finished copy (this run's or from_run's) fits and is used; ``report``: a stage not
    in ``pipeline.only`` whose finished copy is read and reported; ``absent``: not in
    ``pipeline.only`` and nowhere finished."""

    name: str
    action: str
    dir: Path | None = None
    replace: bool = False
    diff: list[str] = field(default_factory=list)


class ReuseMismatchError(ValueError):
    """A finished stage the run would reuse was made by a different config or from other inputs."""


class InputArtifactError(RuntimeError):
    """A stage failed to load an artifact of a stage it reads (names the file and its stage)."""


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict[str, dict]:
    """Run the pipeline; returns {stage: metrics}.

    Before any work: every stage to reuse is checked against its manifest (``from_run`` copies
    that do not fit stop the run with the differing keys unless ``pipeline.reuse=force``), and
    each stage to run gets its module's ``preflight(ctx)`` called, if it has one."""
    L.seed_everything(cfg.seed, workers=True)
    perf.configure(cfg.get("perf"))
    check_num_classes(cfg)
    pipe = cfg.pipeline
    unknown = [s for s in (pipe.only or []) if s not in pipe.order]
    if unknown:
        raise KeyError(f"pipeline.only names stages {unknown} not in pipeline.order {list(pipe.order)}")
    for name in pipe.order:
        if name not in cfg.stages:
            raise KeyError(f"pipeline.order names stage {name!r} but cfg.stages has no such entry")
    steps, forced = plan_pipeline(cfg, run_dir)
    sources: dict[tuple, Any] = {}  # dataset readers shared by this run's stages
    for step in steps:
        if step.action == "run":
            preflight = getattr(_stage_module(cfg, step.name), "preflight", None)
            if preflight is not None:
                preflight(StageContext(cfg, step.name, run_dir, sources=sources))

    results: dict[str, dict] = {}
    reused: dict[str, str] = {}
    reused_written = False
    for step in steps:
        name = step.name
        stage_dir = run_dir / "stages" / name
        if step.action in ("reuse", "report"):
            results[name] = read_metrics(step.dir)
            if step.dir != stage_dir:
                reused[name] = str(step.dir.resolve())
            continue
        if step.action == "absent":
            continue
        if reused and not reused_written and rank() == 0:
            write_json(run_dir / REUSED_FILE, reused)  # before any stage here can need it
        reused_written = True
        all_ranks = bool(cfg.stages[name].get("all_ranks", False))
        if rank() == 0:
            prepare_stage_dir(cfg, run_dir, name, replace=step.replace)
        barrier()  # the directory is ready (old copies moved aside) before any rank looks at it
        if rank() != 0 and not all_ranks:
            results[name] = _wait_for_rank_zero(stage_dir, float(pipe.get("rank_wait_s", 86400)))
            continue
        log.info("stage %s", name)
        ctx = StageContext(cfg, name, run_dir, loggers=make_loggers(cfg, name, run_dir),
                           sources=sources)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        try:
            metrics = _run_stage(cfg, ctx)
            metrics["seconds"] = round(time.perf_counter() - start, 1)
            log.info("stage %s done in %.1f s wall, %.1f s CPU (this process + finished workers)",
                     name, metrics["seconds"], _cpu_seconds() - cpu_start)
            # Every scalar a stage reports also reaches its loggers (CSV / W&B summary).
            ctx.log_metrics({k: v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
            wandb_dashboard.log_stage(ctx, metrics)  # summary, tables, masks, artifacts
        finally:
            _close(ctx.loggers)
        if all_ranks:
            barrier()  # every rank's share (e.g. predicted CAMs) is on disk before the marker
        if rank() == 0:
            finish_stage(ctx, metrics)
            for ckpt_dir in sorted(ctx.out_dir.rglob(CKPT_DIR)):  # resume state, not output
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            write_manifest(ctx.out_dir, stage_manifest(cfg, ctx, forced))
        results[name] = {"stage": name, **metrics}  # the same dict metrics.json holds
    if reused and not reused_written and rank() == 0:
        write_json(run_dir / REUSED_FILE, reused)  # every stage was reused
    print_summary(results)
    return results


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (loader workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _stage_module(cfg: DictConfig, name: str) -> Any:
    target = str(cfg.stages[name]["_target_"])
    return importlib.import_module(target.rsplit(".", 1)[0])


def _run_stage(cfg: DictConfig, ctx: StageContext) -> dict:
    """Call the stage; a failure to load one of its inputs' files names the file's stage."""
    try:
        return get_method(cfg.stages[ctx.name]["_target_"])(ctx)
    except (CorruptArtifactError, FileNotFoundError, KeyError, ValueError) as err:
        text = str(err)
        for role, (stage, path) in ctx.used_inputs.items():
            if str(path) in text:
                raise InputArtifactError(
                    f"stage {ctx.name!r} failed to load an artifact of stage {stage!r} (read as "
                    f"{role!r}, from {path}): {text}. That stage's files are damaged or incomplete: "
                    f"delete {path} (or the file named) and rerun stage {stage!r}."
                ) from err
        raise


def plan_pipeline(cfg: DictConfig, run_dir: Path) -> tuple[list[Step], dict[str, list[str]]]:
    """Decide per stage: run, reuse, report or absent (see :class:`Step`). Raises
    :class:`ReuseMismatchError` when a ``from_run`` (or, with ``pipeline.only``, any) finished copy
    to reuse does not match the config or inputs, unless ``pipeline.reuse=force``; returns the
    forced reuses ``{stage: diff}`` too."""
    pipe = cfg.pipeline
    reuse_mode = str(pipe.get("reuse") or "check")
    if reuse_mode not in ("check", "force"):
        raise ValueError(f"pipeline.reuse must be 'check' or 'force', got {reuse_mode!r}")
    from_run = Path(pipe.from_run) if pipe.get("from_run") else None
    only = list(pipe.only or [])
    steps: list[Step] = []
    hashes: dict[str, str | None] = {}  # manifest hash of each stage whose finished copy is used
    changed: set[str] = set()  # stages (re)run here, or not reported: their outputs will differ
    problems: dict[str, list[str]] = {}
    forced: dict[str, list[str]] = {}

    def input_hash(stage: str) -> str | None:
        if stage in hashes:
            return hashes[stage]
        if stage in changed:
            return None
        found = locate_stage(cfg, run_dir, stage)
        manifest = read_manifest(found) if found is not None else None
        return manifest.get("manifest_hash") if manifest else None

    def check(name: str, found: Path) -> list[str]:
        manifest = read_manifest(found) or {}
        needed = {v.get("stage") for v in (manifest.get("inputs") or {}).values()}
        diff = reuse_diff(manifest, cfg, name, {s: input_hash(s) for s in needed if s})
        return diff + check_artifacts(found, manifest)

    prefix = True
    for name in pipe.order:
        stage_dir = run_dir / "stages" / name
        own = stage_dir if pipe.skip_done and is_finished(stage_dir) else None
        remote = finished_stage_dir(from_run, name) if (prefix and from_run is not None) else None
        reads = {str(s) for s in (cfg.stages[name].get("reads") or {}).values() if s is not None}
        if only and name not in only:
            found = own or (remote if prefix else None)
            if found is None or reads & changed:  # its finished copy was made from older inputs
                changed.add(name)
                steps.append(Step(name, "absent"))
                continue
            diff = check(name, found)
            if diff:
                (forced if reuse_mode == "force" else problems)[name] = diff
            hashes[name] = (read_manifest(found) or {}).get("manifest_hash")
            steps.append(Step(name, "report", found, diff=diff))
            continue
        step = Step(name, "run", replace=stage_dir.exists())
        if only:
            pass  # a stage named in pipeline.only always runs
        elif own is not None and not (reads & changed):
            diff = check(name, own)
            if not diff:
                step = Step(name, "reuse", own)
            else:
                log.warning("stage %s: this run's finished copy does not fit the config any more; "
                            "rerunning it (the old one moves to %s/):\n%s", name, REPLACED_DIR,
                            "\n".join(f"  {line}" for line in diff))
        elif remote is not None and own is None:
            diff = check(name, remote)
            if diff:
                (forced if reuse_mode == "force" else problems)[name] = diff
            step = Step(name, "reuse", remote, diff=diff)
        if step.action == "run":
            changed.add(name)
        if step.action == "run" or step.dir == own:
            # from_run is a prefix of the chain: once a stage is run or reused from this run (a
            # resumed run), later stages of the earlier run were made from other inputs.
            prefix = False
        if step.action != "run":
            hashes[name] = (read_manifest(step.dir) or {}).get("manifest_hash")
        steps.append(step)
    if problems:
        where = f"pipeline.from_run={from_run}" if from_run else "this run"
        raise ReuseMismatchError(
            f"stages to reuse from {where} were made with a different config or from different "
            f"inputs; nothing was run. Keys that differ (finished copy -> now):\n"
            f"{format_diff(problems, str(from_run or run_dir))}\n"
            "Rerun without pipeline.from_run (or from a matching run), or set pipeline.reuse=force to "
            "reuse them anyway (recorded in the manifests of the stages run here)."
        )
    for name, diff in forced.items():
        log.warning("stage %s reused despite differences (pipeline.reuse=force):\n%s", name,
                    "\n".join(f"  {line}" for line in diff))
    return steps, forced


def check_artifacts(stage_dir: Path, manifest: dict) -> list[str]:
    """Artifacts of a finished stage that are missing or changed size since its manifest (a
    cheap check of every file, done before reuse)."""
    bad = []
    for item in manifest.get("artifacts") or []:
        path = stage_dir / item["path"]
        if not path.is_file():
            bad.append(f"artifact {path} (written by stage {stage_dir.name}) is missing")
        elif path.stat().st_size != item["bytes"]:
            bad.append(f"artifact {path} (written by stage {stage_dir.name}) has "
                       f"{path.stat().st_size} bytes, its manifest says {item['bytes']}: changed or corrupt")
        if len(bad) >= 5:
            bad.append("... (further files not checked)")
            break
    return bad


def prepare_stage_dir(cfg: DictConfig, run_dir: Path, name: str, replace: bool) -> None:
    """Keep a stage directory's partial artifacts (per-image resume, fit checkpoints) only when
    they were started by the same config and inputs (``started.json``); move anything else aside
    to ``<run>/replaced/``. Then record what this attempt starts from.

    A finished copy that is run again is moved aside too, unless the stage module lists
    ``RESUME_IGNORES`` (stage keys that may change between attempts, e.g. self_train's
    ``rounds``): then its work is kept for the stage to reuse (self_train's finished rounds)."""
    stage_dir = run_dir / "stages" / name
    ignores = getattr(_stage_module(cfg, name), "RESUME_IGNORES", None)
    config = fingerprint(cfg, name)["config"]
    config["stage"] = {k: v for k, v in config["stage"].items() if k not in (ignores or ())}
    started = {"config_hash": digest(config), "inputs": _declared_input_hashes(cfg, run_dir, name)}
    if stage_dir.exists():
        previous = None
        if (stage_dir / STARTED_FILE).is_file():
            try:
                previous = read_json(stage_dir / STARTED_FILE)
            except ValueError:
                previous = None
        finished = is_finished(stage_dir)
        if previous != started or (finished and (replace and ignores is None)):
            target = run_dir / REPLACED_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(stage_dir), str(target))
            log.warning("stage %s: moved the earlier (different or finished) attempt to %s", name, target)
        else:
            for marker in (MANIFEST_FILE, METRICS_FILE):  # unfinished again until this attempt ends
                (stage_dir / marker).unlink(missing_ok=True)
            log.info("stage %s: resuming the earlier attempt in %s", name, stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / STARTED_FILE, started)


def _declared_input_hashes(cfg: DictConfig, run_dir: Path, name: str) -> dict[str, str | None]:
    out = {}
    for role, stage in sorted((cfg.stages[name].get("reads") or {}).items()):
        if stage is None:
            continue
        found = locate_stage(cfg, run_dir, str(stage))
        manifest = read_manifest(found) if found is not None else None
        out[str(role)] = manifest.get("manifest_hash") if manifest else None
    return out


def stage_manifest(cfg: DictConfig, ctx: StageContext, forced: dict[str, list[str]]) -> dict:
    inputs = {}
    for role, (stage, path) in ctx.used_inputs.items():
        manifest = read_manifest(path) or {}
        inputs[role] = {"stage": stage, "dir": str(Path(path).resolve()),
                        "manifest_hash": manifest.get("manifest_hash")}
    extra: dict[str, Any] = {"run_dir": str(ctx.run_dir.resolve())}
    if ctx.resumed:
        extra["resumed"] = ctx.resumed
    if forced:
        extra["reuse_forced"] = forced  # pipeline.reuse=force reused these despite the differences
    return build_manifest(cfg, ctx.name, ctx.out_dir, inputs, extra,
                          content_hash=bool(cfg.pipeline.get("content_hash", True)))


def _wait_for_rank_zero(stage_dir: Path, timeout_s: float, poll_s: float = 2.0) -> dict:
    """Under DDP only stages with ``all_ranks: true`` (those that fit or predict with a Trainer,
    and per-image stages that shard their images) run on every rank; the others run on rank 0
    while the rest wait for its manifest."""
    deadline = time.monotonic() + timeout_s
    while not is_finished(stage_dir):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()}: rank 0 did not finish {stage_dir} within "
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
