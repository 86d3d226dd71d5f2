"""One table of every job's final metrics in a sweep directory (CSV + markdown).

Written automatically at the end of ``python train.py -m ...`` (the Hydra callback
:class:`SweepSummary`, registered in ``conf/train.yaml``), or by hand::

    python -m wsss.pipeline.sweep_summary logs/multiruns/<time>

Rows: one per job directory (``<sweep>/<job>/``), with the job's overrides (the swept values),
the sweep's ``objective`` value when the config names one, and ``<stage>/<metric>`` for the
headline metrics of each stage the job ran or reused. Files: ``<sweep>/sweep_summary.csv`` and
``<sweep>/sweep_summary.md`` (best objective first).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wsss.io import atomic_path, read_json

log = logging.getLogger(__name__)

CSV_FILE, MD_FILE = "sweep_summary.csv", "sweep_summary.md"
METRICS = ("miou", "miou_crf", "miou_ms", "miou_full_split", "threshold", "holdout_miou",
           "val_mAP", "ap50", "cue_precision", "cue_coverage", "seconds")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir()
            if p.is_dir() and ((p / ".hydra" / "overrides.yaml").is_file() or (p / "stages").is_dir())]
    return sorted(jobs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def _stage_dirs(job: Path) -> dict[str, Path]:
    """Stages the job ran (``stages/<s>/metrics.json``) and those it reused (``reused.json``)."""
    found: dict[str, Path] = {}
    reused = job / "reused.json"
    if reused.is_file():
        found.update({s: Path(d) for s, d in read_json(reused).items()})
    for metrics in sorted((job / "stages").glob("*/metrics.json")):
        found[metrics.parent.name] = metrics.parent
    return found


def objective_of(cfg: DictConfig | None) -> tuple[str | None, str]:
    """(stage or None = the last stage, metric) the sweep optimises (``objective`` in the config)."""
    node = OmegaConf.select(cfg, "objective") if cfg is not None else None
    if not node:
        return None, "miou"
    return node.get("stage"), str(node.get("metric") or "miou")


def job_row(job: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"job": job.name}
    overrides_file = job / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    row["overrides"] = " ".join(str(o) for o in overrides)
    config_file = job / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config_file) if config_file.is_file() else None
    stages = _stage_dirs(job)
    metrics: dict[str, dict] = {}
    for stage, stage_dir in stages.items():
        if (stage_dir / "metrics.json").is_file():
            metrics[stage] = read_json(stage_dir / "metrics.json")
    order = list(OmegaConf.select(cfg, "pipeline.order") or []) if cfg is not None else []
    order = [s for s in order if s in metrics] + [s for s in metrics if s not in order]
    stage, metric = objective_of(cfg)
    stage = stage or (order[-1] if order else None)
    value = metrics.get(stage, {}).get(metric) if stage else None
    row["objective"] = f"{stage}/{metric}" if stage else ""
    row["objective_value"] = value if isinstance(value, (int, float)) else None
    for name in order:
        for key in METRICS:
            value = metrics[name].get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{name}/{key}"] = value
    return row


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise NotADirectoryError(f"{sweep_dir}: not a sweep directory (logs/multiruns/<time>)")
    return [job_row(job) for job in _job_dirs(sweep_dir)]


def _columns(rows: Sequence[dict]) -> list[str]:
    columns = ["job", "overrides", "objective", "objective_value"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def to_markdown(rows: Sequence[dict]) -> str:
    """Markdown table, best ``objective_value`` first (unfinished / None last)."""
    columns = _columns(rows)
    ranked = sorted(rows, key=lambda r: (r.get("objective_value") is None,
                                         -(r.get("objective_value") or 0.0)))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in ranked:
        cells = [_fmt(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write ``sweep_summary.csv`` and ``sweep_summary.md`` into ``sweep_dir``; returns both."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    paths = sweep_dir / CSV_FILE, sweep_dir / MD_FILE
    with atomic_path(paths[0], suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_path(paths[1], suffix=".md") as tmp:
        tmp.write_text(f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n" + to_markdown(rows))
    return paths


try:  # the callback needs Hydra's base class; the module stays importable without it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class SweepSummary(Callback):  # type: ignore[misc]
    """Hydra callback: the sweep's summary table once every job of a multirun returned."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            csv_path, md_path = write_summary(sweep_dir)
            log.info("sweep summary: %s, %s", csv_path, md_path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wsss-sweep-summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. logs/multiruns/<time>")
    args = parser.parse_args(argv)
    csv_path, md_path = write_summary(args.sweep_dir)
    print(md_path.read_text())
    print(f"written: {csv_path}, {md_path}")


if __name__ == "__main__":
    main()
