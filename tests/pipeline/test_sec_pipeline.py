"""The SEC chain (classifier -> CAMs -> cues -> SEC segmenter -> eval) on a tiny generated tree."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wsss.io import load_label_png
from wsss.pipeline.runner import run_pipeline

STAGES = ["train_cls", "make_cam", "eval_cam", "make_cues", "train_sec", "eval_seg"]
TINY_SEC = [
    "pipeline=sec",
    "stages.train_sec.max_epochs=1",
    "stages.train_sec.input_size=48",
    "stages.train_sec.batch_size=8",
    "stages.train_sec.module.head_channels=32",
    "stages.train_sec.module.crf_workers=1",  # exercises the CRF process pool
    "stages.make_cues.grid_size=6",  # 48 / stride 8
    "stages.make_cues.num_workers=0",
    "stages.train_sec.num_workers=0",
    "stages.eval_seg.num_examples=0",
    "stages.eval_seg.scales=[1.0]",  # SEC deploy: single scale (the tiny defaults add 0.5)
]


def _in_unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


@pytest.mark.slow
def test_sec_chain_writes_cues_model_and_metrics(tiny_cfg, tmp_path) -> None:
    run_dir = tmp_path / "run"
    results = run_pipeline(tiny_cfg(*TINY_SEC), run_dir)
    assert list(results) == STAGES
    for stage in STAGES:
        metrics = json.loads((run_dir / "stages" / stage / "metrics.json").read_text())
        assert metrics["stage"] == stage

    cues = results["make_cues"]
    assert cues["saliency"] == "png" and cues["grid_size"] == 6
    for key in ("cue_coverage", "cue_precision", "cue_bg_coverage", "cue_fg_coverage", "coverage_split",
                "fg_coverage_split"):
        assert _in_unit(cues[key]), key
    assert cues["cue_coverage"] > 0
    assert math.isnan(cues["cue_bg_precision"]) or _in_unit(cues["cue_bg_precision"])
    files = sorted((run_dir / "stages/make_cues/cues").glob("*.png"))
    assert len(files) == cues["num_images"] > 0
    label = load_label_png(files[0])
    assert label.shape == (6, 6)
    assert set(np.unique(label).tolist()) <= set(range(21)) | {255}

    sec = results["train_sec"]
    assert (run_dir / "stages/train_sec/model.pt").is_file()
    assert sec["steps"] >= 1 and sec["grid_size"] == 6
    for key in ("train_loss", "train_seed", "train_expand", "train_constrain"):
        assert math.isfinite(sec[key]) and sec[key] >= 0, key
    assert _in_unit(sec["collapse_label_fg_fraction"]) and _in_unit(sec["collapse_pred_fg_fraction"])
    # cues are sparse: the guard's reference is the foreground cues' share of all pixels
    assert sec["collapse_label_fraction_of"] == "all pixels (sparse labels)"
    assert sec["collapse_label_fg_fraction"] == pytest.approx(cues["fg_coverage_split"])
    assert sec["init_from"] == "train_cls"  # recipe small: the classifier's backbone starts SEC

    seg = results["eval_seg"]
    for key in ("miou", "miou_crf", "miou_full_split"):
        assert _in_unit(seg[key]), key
    assert "miou_ms" not in seg  # SEC evaluates single-scale
    assert len(list((run_dir / "stages/eval_seg/predictions").glob("*.png"))) > 0

    # Gradient saliency of the classifier (SEC's background cue) instead of the saliency PNGs.
    rerun = tiny_cfg(*TINY_SEC, "pipeline.only=[make_cues]", "stages.make_cues.saliency=gradient",
                     f"pipeline.from_run={run_dir}")
    again = run_pipeline(rerun, tmp_path / "rerun")["make_cues"]
    assert again["saliency"] == "gradient" and _in_unit(again["cue_coverage"])
    assert _in_unit(again["cue_bg_coverage"]) and again["cue_bg_coverage"] > 0


def test_make_cues_rejects_unknown_saliency(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(*TINY_SEC, "pipeline.only=[make_cues]", "stages.make_cues.saliency=magic")
    with pytest.raises(ValueError, match="saliency"):
        run_pipeline(cfg, tmp_path / "x")
