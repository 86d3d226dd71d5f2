"""The IRNet chain on a tiny generated tree: CAMs -> relation labels -> IRNet -> calibration ->
semantic + instance pseudo labels -> DeepLab -> eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsss.io import load_label_png, load_npz
from wsss.pipeline.runner import run_pipeline

STAGES = ["train_cls", "make_cam", "eval_cam", "make_ir_labels", "train_irn", "calibrate_irn",
          "make_sem_seg_labels", "make_ins_seg_labels", "train_seg", "eval_seg"]
TINY_IRN = [
    "pipeline=irnet",
    "stages.make_ir_labels.num_workers=0",
    "stages.train_irn.max_epochs=1",
    "stages.train_irn.crop_size=48",
    "stages.train_irn.batch_size=8",
    "stages.train_irn.module.radius=5",
    "stages.make_sem_seg_labels.exp_times=4",
    "stages.make_ins_seg_labels.exp_times=4",
    "stages.make_ins_seg_labels.n_iter=50",
    "stages.make_ins_seg_labels.coco_json=true",
    "stages.eval_seg.num_examples=0",
    "stages.eval_cam.num_examples=0",
]


@pytest.mark.slow
def test_irnet_chain_writes_semantic_and_instance_labels(tiny_cfg, tmp_path) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(*TINY_IRN)
    results = run_pipeline(cfg, run_dir)
    assert list(results) == STAGES
    for stage in STAGES:
        assert json.loads((run_dir / "stages" / stage / "metrics.json").read_text())["stage"] == stage

    ir = results["make_ir_labels"]
    assert 0.0 <= ir["miou"] <= 1.0 and 0.0 <= ir["ignored_fraction"] <= 1.0
    labels = sorted((run_dir / "stages/make_ir_labels/labels").glob("*.png"))
    assert len(labels) == ir["num_images"] > 0

    shift = load_npz(run_dir / "stages/calibrate_irn/mean_shift.npz")["mean"]
    assert shift.shape == (2,) and np.isfinite(shift).all()
    assert results["calibrate_irn"]["mean_dy"] == pytest.approx(float(shift[0]))

    sem = results["make_sem_seg_labels"]
    for key in ("miou", "miou_seeds", "cam_miou", "holdout_miou"):
        assert 0.0 <= sem[key] <= 1.0
    # Synthetic default: the walk's background threshold is chosen on the held-out images.
    assert sem["bg_threshold"] in cfg.stages.make_sem_seg_labels.bg_thresholds
    assert sem["bg_threshold_source"].startswith("holdout")
    pseudo = sorted((run_dir / "stages/make_sem_seg_labels/labels").glob("*.png"))
    assert len(pseudo) == sem["num_images"]
    assert set(np.unique(load_label_png(pseudo[0])).tolist()) <= set(range(21))

    ins = results["make_ins_seg_labels"]
    assert ins["gt_instances"] == "SegmentationObject"  # the synthetic tree's VOC instance masks
    assert np.isnan(ins["ap50"]) or 0.0 <= ins["ap50"] <= 1.0
    files = sorted((run_dir / "stages/make_ins_seg_labels/instances").glob("*.npz"))
    assert len(files) == ins["num_images"] > 0
    arrays = load_npz(files[0])
    assert set(arrays) == {"masks", "classes", "scores"}
    assert arrays["masks"].dtype == bool and arrays["masks"].ndim == 3
    assert len(arrays["masks"]) == len(arrays["classes"]) == len(arrays["scores"])
    coco = json.loads((run_dir / "stages/make_ins_seg_labels/instances_coco.json").read_text())
    assert len(coco["images"]) == ins["num_images"] and coco["images"][0]["file_name"].endswith(".jpg")
    assert len(coco["annotations"]) == ins["coco_annotations"] <= ins["num_instances"]
    assert results["train_seg"]["labels"].endswith("make_sem_seg_labels/labels")
    assert 0.0 <= results["eval_seg"]["miou"] <= 1.0
