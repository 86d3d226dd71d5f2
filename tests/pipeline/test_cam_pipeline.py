"""The whole CAM baseline chain on a tiny generated VOC tree, then one stage rerun alone."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from omegaconf import open_dict

from wsss.io import load_label_png, load_npz
from wsss.pipeline.runner import run_pipeline

STAGES = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"]


@pytest.mark.slow
def test_cam_chain_writes_every_artifact(tiny_cfg, tmp_path, caplog) -> None:
    cfg = tiny_cfg()
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="wsss.pipeline.runner")
    results = run_pipeline(cfg, run_dir)
    assert list(results) == STAGES
    for stage in STAGES:
        metrics = json.loads((run_dir / "stages" / stage / "metrics.json").read_text())
        assert metrics["stage"] == stage
        # train.log says how long every stage took
        assert re.search(rf"stage {stage} done in {metrics['seconds']:.1f} s wall, \d+\.\d s CPU", caplog.text)
    assert (run_dir / "stages/train_cls/model.pt").is_file()

    cams = sorted((run_dir / "stages/make_cam/cams").glob("*.npz"))
    assert len(cams) == results["make_cam"]["num_images"] > 0
    arrays = load_npz(cams[0])
    assert arrays["cams"].dtype == np.float32 and arrays["cams"].ndim == 3
    assert arrays["cams"].max() <= 1.0 and arrays["cams"].min() >= 0.0
    assert len(arrays["keys"]) == len(arrays["cams"])

    cam_metrics = results["eval_cam"]
    assert cam_metrics["threshold"] in [float(t) for t in cfg.stages.eval_cam.thresholds]
    assert cam_metrics["threshold_source"].startswith("holdout")
    assert 0.0 <= cam_metrics["miou"] <= 1.0
    assert cam_metrics["oracle_miou_on_eval"] >= cam_metrics["miou"]

    pseudo = results["make_pseudo_labels"]
    assert 0.0 <= pseudo["miou"] <= 1.0 and 0.0 <= pseudo["miou_crf"] <= 1.0
    labels = sorted((run_dir / "stages/make_pseudo_labels/labels_crf").glob("*.png"))
    assert len(labels) == pseudo["num_images"]
    values = np.unique(load_label_png(labels[0]))
    assert set(values.tolist()) <= set(range(21)) | {255}

    seg = results["eval_seg"]
    for key in ("miou", "miou_ms", "miou_crf", "miou_full_split"):
        assert 0.0 <= seg[key] <= 1.0
    assert len(list((run_dir / "stages/eval_seg/predictions").glob("*.png"))) > 0

    # Rerun one stage alone from the finished run, with a fixed threshold, into a new run dir.
    rerun = tiny_cfg("pipeline.only=[make_pseudo_labels]", "stages.make_pseudo_labels.threshold=0.3",
                     "stages.make_pseudo_labels.crf=false", f"pipeline.from_run={run_dir}")
    again = run_pipeline(rerun, tmp_path / "rerun")
    # Only the named stage ran here; the earlier run's stages are reported, not recomputed.
    assert [p.name for p in (tmp_path / "rerun/stages").iterdir()] == ["make_pseudo_labels"]
    assert again["make_cam"] == results["make_cam"]
    assert again["make_pseudo_labels"]["threshold"] == 0.3
    assert "miou_crf" not in again["make_pseudo_labels"]


@pytest.mark.slow
def test_from_run_reuses_finished_stages(tiny_cfg, tmp_path) -> None:
    first = tmp_path / "first"
    run_pipeline(tiny_cfg("pipeline.only=[train_cls,make_cam]"), first)
    second = run_pipeline(tiny_cfg(f"pipeline.from_run={first}"), tmp_path / "second")
    ran_here = sorted(p.name for p in (tmp_path / "second/stages").iterdir())
    assert ran_here == sorted(["eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"])
    assert list(second) == STAGES
    # from_run chains are transitive: second records where its reused stages live.
    reused = json.loads((tmp_path / "second/reused.json").read_text())
    assert reused == {s: str((first / "stages" / s).resolve()) for s in ("train_cls", "make_cam")}
    third = run_pipeline(tiny_cfg(f"pipeline.from_run={tmp_path / 'second'}", "pipeline.only=[eval_cam]"),
                         tmp_path / "chained")
    assert third["eval_cam"]["miou"] == pytest.approx(second["eval_cam"]["miou"])
    # Once a stage runs here, every later stage runs here too, even if from_run has it.
    (first / "stages/make_cam/manifest.json").unlink()  # first's make_cam now counts as unfinished
    run_pipeline(tiny_cfg(f"pipeline.from_run={first}"), tmp_path / "third")
    ran_third = sorted(p.name for p in (tmp_path / "third/stages").iterdir())
    assert ran_third == sorted(STAGES[1:])  # train_cls reused, everything after it rerun


def test_missing_input_stage_names_the_paths(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("pipeline.only=[eval_cam]")
    with pytest.raises(FileNotFoundError, match="make_cam"):
        run_pipeline(cfg, tmp_path / "empty")


def test_unknown_stage_in_only_is_rejected(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.pipeline.only = ["make_cams"]
    with pytest.raises(KeyError, match="make_cams"):
        run_pipeline(cfg, tmp_path / "x")
