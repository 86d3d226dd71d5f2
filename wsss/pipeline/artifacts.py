"""Where a finished stage keeps its per-image artifacts (named in its metrics.json), and how to
find them from a stage directory. Stages read other stages' outputs only through these."""

from __future__ import annotations

from pathlib import Path

from wsss.pipeline.context import read_metrics


def output_dir(stage_dir: Path, key: str) -> Path:
    """``stage_dir / metrics[key]``: the folder a finished stage says holds its artifacts."""
    metrics = read_metrics(stage_dir)
    if key not in metrics:
        raise KeyError(f"{stage_dir}/metrics.json has no {key!r}: stage {stage_dir.name!r} does not "
                       f"write the artifacts asked for (keys: {sorted(metrics)[:12]} ...)")
    return stage_dir / metrics[key]


def cam_dir_of(stage_dir: Path) -> Path:
    """CAM files ``<id>.npz`` (keys, cams) of a make_cam-format stage."""
    return output_dir(stage_dir, "cam_dir")


def label_dir(stage_dir: Path) -> Path:
    """The label PNGs a finished label stage says downstream should train on."""
    return output_dir(stage_dir, "label_dir")


def cue_dir_of(stage_dir: Path) -> Path:
    """The cue PNGs of a finished make_cues stage."""
    return output_dir(stage_dir, "cue_dir")
