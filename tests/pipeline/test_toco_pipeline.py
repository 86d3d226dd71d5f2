"""ToCo end to end on the tiny synthetic tree with a 2-block random ViT: single stage (the
segmentation head scored by eval_seg) and as a CAM source for the DeepLab chain."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsss.io import load_npz
from wsss.pipeline.runner import run_pipeline

TOCO_TINY = [
    "backbone=vit_tiny",
    "stages.train_toco.max_steps=3",
    "stages.train_toco.batch_size=4",
    "stages.train_toco.crop_size=64",
    "stages.train_toco.module.local_crop_size=32",
    "stages.train_toco.module.num_local_crops=2",
    "stages.train_toco.module.seg_start_step=0",  # the seg loss is on from the first step
    "stages.train_toco.module.warmup_steps=1",
    "stages.train_toco.module.cam_scales=[1.0]",
    "stages.train_toco.module.proj_dim=32",
    "stages.train_toco.module.proj_hidden_dim=32",
    "stages.train_toco.module.proj_bottleneck_dim=16",
    "stages.train_toco.module.decoder_width=16",
    "stages.train_toco.module.par_iters=2",
    "stages.eval_toco.scales=[1.0,0.5]",
]


@pytest.mark.slow
def test_toco_single_stage_and_deeplab_chain(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("pipeline=toco_deeplab", *TOCO_TINY, "stages.train_seg.deeplab_backbone.name=resnet18",
                   "stages.train_seg.deeplab_backbone.weights=null", "stages.train_seg.crop_size=48")
    run_dir = tmp_path / "run"
    results = run_pipeline(cfg, run_dir)
    assert list(results) == ["train_toco", "eval_toco", "make_cam", "eval_cam", "make_pseudo_labels",
                             "train_seg", "eval_seg"]
    assert results["train_toco"]["steps"] == 3
    assert np.isfinite(results["train_toco"]["train_loss"])
    assert (run_dir / "stages/train_toco/model.pt").is_file()
    toco = results["eval_toco"]
    for key in ("miou", "miou_ms", "miou_crf"):
        assert 0.0 <= toco[key] <= 1.0
    assert toco["ms_protocol"] == "scales [1.0, 0.5], flip=True"
    assert len(list((run_dir / "stages/eval_toco/predictions").glob("*.png"))) == 8  # every val image
    cams = sorted((run_dir / "stages/make_cam/cams").glob("*.npz"))
    assert len(cams) == results["make_cam"]["num_images"] > 0
    arrays = load_npz(cams[0])
    assert arrays["cams"].ndim == 3 and 0.0 <= arrays["cams"].min() and arrays["cams"].max() <= 1.0
    assert 0.0 <= results["eval_cam"]["miou"] <= 1.0 and 0.0 <= results["eval_seg"]["miou"] <= 1.0
    metrics = json.loads((run_dir / "stages/eval_toco/metrics.json").read_text())
    assert metrics["stage"] == "eval_toco"
