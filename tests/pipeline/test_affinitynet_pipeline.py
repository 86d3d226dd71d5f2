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


def test_affinitynet_composes_with_another_cam_method(tiny_cfg) -> None:
    cfg = tiny_cfg("pipeline=affinitynet", "method=seam")
    assert cfg.method._target_.endswith("SEAMModule")
    assert cfg.stages.train_seg.reads.labels == "random_walk"
    assert cfg.stages.train_affinity.module.feature_levels is None  # picked from the contract
    from hydra.utils import instantiate

    model = instantiate(cfg.stages.train_affinity.module)
    assert model.levels == ["layer2", "layer3", "layer4"]
