"""Markdown table of the headline numbers of finished runs: ``python -m wsss.pipeline.report RUN...``.

Reads only the runs' ``stages/*/metrics.json`` files; a column is blank where a run lacks that stage
and ``n/a`` where the stage ran but had no GT masks to score against (``null`` in metrics.json).
A second table lists the phenomenon measures (``phenomena`` in metrics.json: partial activation,
context false positives, boundary F; docs/methods.md) of every stage that wrote them; for older
runs, or every output of a stage, ``python -m wsss.metrics.phenomena RUN...`` computes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.io import read_json
from wsss.pipeline.context import METRICS_FILE

# (column title, stage(s), metric key); of several stages the first present in a run wins
# (pipeline=eps_cam_saliency: the CAMs its labels come from are eval_eps_cam's).
COLUMNS = [
    ("CAM mIoU (train)", ("eval_eps_cam", "eval_cam"), "miou"),
    ("bg threshold", ("eval_eps_cam", "eval_cam"), "threshold"),
    ("CAM labels", "make_pseudo_labels", "miou"),
    ("CAM labels +CRF", "make_pseudo_labels", "miou_crf"),
    ("refined labels", ("random_walk", "make_sem_seg_labels"), "miou"),
    ("SEC cue precision", "make_cues", "cue_precision"),
    ("instances APr50", "make_ins_seg_labels", "ap50"),
    ("seg val mIoU", "eval_seg", "miou"),
    ("seg +ms/flip", "eval_seg", "miou_ms"),
    ("seg +CRF", "eval_seg", "miou_crf"),
]


def stage_metrics(run: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sorted(run.glob(f"stages/*/{METRICS_FILE}"))}


def table(runs: list[Path], names: list[str] | None = None) -> str:
    rows = ["| run | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for index, run in enumerate(runs):
        metrics = stage_metrics(run)
        cells = []
        for _, stages, key in COLUMNS:
            stages = (stages,) if isinstance(stages, str) else stages
            found = next((s for s in stages if key in metrics.get(s, {})), None)
            value = metrics[found][key] if found is not None else None
            cells.append("" if found is None else "n/a" if value is None else f"{value:.3f}")
        rows.append(f"| {names[index] if names else run.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# (column title, key of metrics["phenomena"])
PHENOMENA_COLUMNS = [("recall", "recall"), ("precision", "precision"), ("body recall", "body_recall"),
                     ("context FP", "context_fp"), ("ctx FP typical", "context_fp_typical"),
                     ("boundary F", "boundary_f")]  # fmt: skip


def phenomena_table(runs: list[Path], names: list[str] | None = None) -> str | None:
    """One row per stage with ``phenomena`` in its metrics.json (None when no stage has them)."""
    head = ["run", "stage", *(c[0] for c in PHENOMENA_COLUMNS)]
    rows = []
    for index, run in enumerate(runs):
        for stage, metrics in stage_metrics(run).items():
            for key in ("phenomena", "phenomena_ms", "phenomena_crf"):  # eval_seg: + post-processed
                values = metrics.get(key)
                if not isinstance(values, dict):
                    continue
                label = stage if key == "phenomena" else f"{stage} ({key.split('_')[1]})"
                cells = ["n/a" if values.get(k) is None else f"{values[k]:.3f}" for _, k in PHENOMENA_COLUMNS]
                rows.append(f"| {names[index] if names else run.name} | {label} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    return "\n".join(["| " + " | ".join(head) + " |", "|---" * len(head) + "|", *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (logs/runs/...)")
    parser.add_argument("--names", nargs="+", help="row labels, one per run")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "stages").is_dir()]
    if missing:
        parser.error(f"not run directories (no stages/ inside): {missing}")
    print(table(args.runs, args.names))
    extra = phenomena_table(args.runs, args.names)
    if extra:
        print("\nPhenomenon measures (docs/methods.md):\n" + extra)


if __name__ == "__main__":
    main()
