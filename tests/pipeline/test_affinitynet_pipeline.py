"""The PSA / AffinityNet chain on a tiny generated tree: CAMs -> affinity labels -> AffinityNet ->
random walk -> DeepLab -> eval, plus composition with another classifier method."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsss.io import load_label_png
from wsss.pipeline.runner import run_pipeline

STAGES = ["train_cls", "make_cam", "eval_cam", "make_affinity_labels", "train_affinity",
          "random_walk", "train_seg", "eval_seg"]
TINY_AFF = [
    "pipeline=affinitynet",
    "stages.make_affinity_labels.num_workers=0",
    "stages.train_affinity.max_epochs=1",
    "stages.train_affinity.crop_size=48",
    "stages.train_affinity.batch_size=8",
    "stages.random_walk.logt=4",
    "stages.eval_seg.num_examples=0",
    "stages.eval_cam.num_examples=0",
]


@pytest.mark.slow
def test_affinitynet_chain_writes_labels_and_metrics(tiny_cfg, tmp_path) -> None:
    run_dir = tmp_path / "run"
    results = run_pipeline(tiny_cfg(*TINY_AFF), run_dir)
    assert list(results) == STAGES
    for stage in STAGES:
        assert json.loads((run_dir / "stages" / stage / "metrics.json").read_text())["stage"] == stage

    aff = results["make_affinity_labels"]
    assert 0.0 <= aff["miou"] <= 1.0 and 0.0 <= aff["ignored_fraction"] <= 1.0
    labels = sorted((run_dir / "stages/make_affinity_labels/labels").glob("*.png"))
    assert len(labels) == aff["num_images"] > 0
    assert set(np.unique(load_label_png(labels[0])).tolist()) <= set(range(21)) | {255}
    assert (run_dir / "stages/train_affinity/model.pt").is_file()

    walk = results["random_walk"]
    for key in ("miou", "miou_seeds", "cam_miou"):
        assert 0.0 <= walk[key] <= 1.0
    assert walk["feature_stride"] == 8 and "random walk" in walk["includes"]
    pseudo = sorted((run_dir / "stages/random_walk/labels").glob("*.png"))
    assert len(pseudo) == walk["num_images"]
    assert set(np.unique(load_label_png(pseudo[0])).tolist()) <= set(range(21))  # no 255
    assert results["train_seg"]["labels"].endswith("random_walk/labels")
    assert 0.0 <= results["eval_seg"]["miou"] <= 1.0

    # Small recipe: bg_alpha=holdout picks the value of bg_alphas with the best held-out walk mIoU.
    alphas = [0.25, 4.0, 32.0]
    listed = [float(a) for a in tiny_cfg(*TINY_AFF).stages.random_walk.bg_alphas]
    assert walk["bg_alpha_source"].startswith("holdout") and walk["bg_alpha"] in listed
    only = ["pipeline.only=[random_walk]", f"pipeline.from_run={run_dir}"]
    chosen = run_pipeline(tiny_cfg(*TINY_AFF, *only, f"stages.random_walk.bg_alphas={alphas}"),
                          tmp_path / "chosen")["random_walk"]  # fmt: skip
    held = [run_pipeline(tiny_cfg(*TINY_AFF, *only, f"stages.random_walk.bg_alphas=[{a}]"),
                         tmp_path / f"alpha{a}")["random_walk"]["holdout_miou"] for a in alphas]  # fmt: skip
    assert chosen["bg_alpha"] == alphas[int(np.argmax(held))]  # first of equals on ties
    assert chosen["holdout_miou"] == pytest.approx(max(held), abs=1e-9)
    # the labels are those of a walk with the chosen number
    fixed = run_pipeline(tiny_cfg(*TINY_AFF, *only, f"stages.random_walk.bg_alpha={chosen['bg_alpha']}"),
                         tmp_path / "fixed")["random_walk"]  # fmt: skip
    assert fixed["miou"] == pytest.approx(chosen["miou"], abs=1e-12) and "bg_alpha_source" not in fixed


def test_walk_background_power_is_checked_before_training(tiny_cfg, tmp_path) -> None:
    with pytest.raises(ValueError, match="bg_alpha"):
        run_pipeline(tiny_cfg(*TINY_AFF, "stages.random_walk.bg_alpha=holdot"), tmp_path / "x")
    with pytest.raises(ValueError, match="bg_alphas"):
        run_pipeline(tiny_cfg(*TINY_AFF, "stages.random_walk.bg_alphas=[]"), tmp_path / "y")
    assert not (tmp_path / "x" / "stages").exists() and not (tmp_path / "y" / "stages").exists()


def test_affinitynet_composes_with_another_cam_method(tiny_cfg) -> None:
    cfg = tiny_cfg("pipeline=affinitynet", "method=seam")
    assert cfg.method._target_.endswith("SEAMModule")
    assert cfg.stages.train_seg.reads.labels == "random_walk"
    assert cfg.stages.train_affinity.module.feature_levels is None  # picked from the contract
    from hydra.utils import instantiate

    model = instantiate(cfg.stages.train_affinity.module)
    assert model.levels == ["layer2", "layer3", "layer4"]
