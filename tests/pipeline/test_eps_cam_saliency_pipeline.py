"""pipeline=eps_cam_saliency on the tiny tree: CAM saliency maps (make_cam_saliency) feed EPS,
whose CAMs feed the labels and DeepLab; other saliency readers take the maps via reads.saliency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from wsss.data.voc import VOCSource
from wsss.pipeline.context import StageContext
from wsss.pipeline.runner import run_pipeline
from wsss.pipeline.saliency_maps import read_saliency

ORDER = ["train_cls", "make_cam", "eval_cam", "make_cam_saliency", "train_eps", "make_eps_cam",
         "eval_eps_cam", "make_pseudo_labels", "train_seg", "eval_seg"]
TINY_EPS = [
    "pipeline=eps_cam_saliency",
    "stages.train_eps.max_epochs=1",
    "stages.train_eps.crop_size=48",
    "stages.make_eps_cam.scales=[1.0,0.5]",
    "stages.make_cam_saliency.num_workers=0",
    "stages.make_cam_saliency.n_segments=30",
    "stages.eval_seg.crf=false",
]


@pytest.fixture(scope="module")
def eps_run(tiny_run: Path, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The chain on the tiny tree, reusing the shared CAM baseline run's classifier and CAMs."""
    from tests.conftest import compose_cfg

    base = tmp_path_factory.mktemp("eps_cam_saliency")
    cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={base}/logs",
                       f"pipeline.from_run={tiny_run}", *TINY_EPS])
    run_dir = base / "run"
    return run_dir, run_pipeline(cfg, run_dir)


def test_chain_reuses_the_baseline_and_trains_eps_on_the_cam_saliency(eps_run, tiny_run, synthetic_root) -> None:
    run_dir, results = eps_run
    assert list(results) == ORDER
    assert sorted(json.loads((run_dir / "reused.json").read_text())) == ["eval_cam", "make_cam", "train_cls"]

    sal = results["make_cam_saliency"]
    eval_cam = json.loads((tiny_run / "stages/eval_cam/metrics.json").read_text())
    assert sal["threshold"] == eval_cam["threshold"]  # the held-out threshold eval_cam chose
    ids = VOCSource(synthetic_root, "train_aug").ids
    maps = run_dir / "stages/make_cam_saliency" / sal["saliency_dir"]
    assert sal["num_images"] == len(ids) == len(list(maps.glob("*.png")))
    for image_id in ids[:4]:
        with Image.open(maps / f"{image_id}.png") as png, Image.open(
                synthetic_root / "JPEGImages" / f"{image_id}.jpg") as image:  # fmt: skip
            assert png.mode == "L" and png.size == image.size
            values = np.asarray(png)
        assert values.min() < values.max()  # a map, not a constant
    assert sal["num_evaluated"] > 0
    for key in ("precision", "recall", "f1", "mae", "cam_precision", "cam_recall", "gt_fraction"):
        assert 0.0 <= sal[key] <= 1.0, key

    eps = results["train_eps"]
    assert eps["saliency_maps"] == str(maps) and eps["steps"] >= 1
    manifest = json.loads((run_dir / "stages/train_eps/manifest.json").read_text())
    assert manifest["inputs"]["saliency"]["stage"] == "make_cam_saliency"
    assert manifest["config"]["stage"]["module"]["_target_"] == "wsss.methods.eps.EPSModule"
    assert results["make_eps_cam"]["model"] == "train_eps"
    assert "train_eps model" in results["make_pseudo_labels"]["includes"]
    assert 0.0 <= results["eval_eps_cam"]["miou"] <= 1.0 and 0.0 <= results["eval_seg"]["miou"] <= 1.0


def test_sec_cues_read_the_cam_saliency_stage(eps_run, tiny_cfg, tmp_path) -> None:
    run_dir, _ = eps_run
    cfg = tiny_cfg("pipeline=sec", "pipeline.only=[make_cues]", f"pipeline.from_run={run_dir}",
                   "stages.make_cues.saliency=png", "+stages.make_cues.reads.saliency=make_cam_saliency",
                   "stages.make_cues.saliency_dir=/nowhere",  # the stage read wins over folders
                   "stages.make_cues.grid_size=6", "stages.make_cues.num_workers=0")
    cues = run_pipeline(cfg, tmp_path / "sec")["make_cues"]
    assert 0.0 < cues["cue_coverage"] <= 1.0
    manifest = json.loads((tmp_path / "sec/stages/make_cues/manifest.json").read_text())
    assert manifest["inputs"]["saliency"]["stage"] == "make_cam_saliency"


def test_stage_read_wins_over_the_configured_folder(eps_run, tmp_path) -> None:
    """oaa_gen_gt / mcof / make_cues resolve their maps with read_saliency."""
    run_dir, _ = eps_run
    stage = run_dir / "stages/make_cam_saliency"
    cfg = OmegaConf.create({
        "data": {"module": {"saliency_dir": "/elsewhere"}},
        "pipeline": {"inputs": {"make_cam_saliency": str(stage)}},
        "stages": {"oaa_gen_gt": {"reads": {"saliency": "make_cam_saliency"}},
                   "plain": {"reads": {}}},
    })
    ctx = StageContext(cfg, "oaa_gen_gt", tmp_path)
    assert read_saliency(ctx, tmp_path, "SALImages") == stage / "saliency"
    assert ctx.used_inputs["saliency"][0] == "make_cam_saliency"  # recorded in the manifest
    (tmp_path / "elsewhere").mkdir()
    cfg.data.module.saliency_dir = "elsewhere"
    assert read_saliency(StageContext(cfg, "plain", tmp_path), tmp_path, None) == tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match="not a saliency stage"):
        cfg.pipeline.inputs.make_cam_saliency = str(run_dir / "stages/make_eps_cam")
        read_saliency(StageContext(cfg, "oaa_gen_gt", tmp_path), tmp_path, None)


def test_a_classifier_without_a_saliency_loss_refuses_a_saliency_stage(eps_run, tiny_cfg, tmp_path) -> None:
    run_dir, _ = eps_run
    cfg = tiny_cfg("pipeline.only=[train_cls]", "+stages.train_cls.reads.saliency=make_cam_saliency",
                   f"+pipeline.inputs.make_cam_saliency={run_dir}/stages/make_cam_saliency")
    with pytest.raises(ValueError, match="trains on no saliency maps"):
        run_pipeline(cfg, tmp_path / "cam")
