"""SEAM, EPS, OAA, OAA-drop and OAA+ through the default chain on the tiny synthetic tree."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.io import load_label_png, load_npz
from wsss.pipeline.runner import run_pipeline

CHAIN = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"]
OAA_CHAIN = [*CHAIN[:4], "oaa_gen_gt", *CHAIN[4:]]


def _check_gen_gt(run_dir, results) -> None:
    """OAA's saliency-fused labels exist for every training image and train_seg used them."""
    gen = results["oaa_gen_gt"]
    labels = sorted((run_dir / "stages/oaa_gen_gt/labels").glob("*.png"))
    assert len(labels) == gen["num_images"] > 0 and 0.0 <= gen["miou"] <= 1.0
    assert set(np.unique(load_label_png(labels[0])).tolist()) <= set(range(21)) | {255}
    assert results["train_seg"]["labels"].endswith("oaa_gen_gt/labels")
    assert results["train_seg"]["collapse_label_fg_fraction"] is not None


def _check_cams(run_dir, results) -> None:
    cams = sorted((run_dir / "stages/make_cam/cams").glob("*.npz"))
    assert len(cams) == results["make_cam"]["num_images"] > 0
    for path in cams:
        arrays = load_npz(path)
        assert arrays["keys"].dtype == np.int64 and arrays["cams"].dtype == np.float32
        assert arrays["cams"].shape[0] == len(arrays["keys"])
        assert 0.0 <= arrays["cams"].min() and arrays["cams"].max() <= 1.0
    for stage in ("eval_cam", "make_pseudo_labels", "eval_seg"):
        assert 0.0 <= results[stage]["miou"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("seam", []),
    ("eps", ["data.module.saliency_dir=SALImages"]),
])
def test_method_runs_the_cam_chain(tiny_cfg, tmp_path, method, extra) -> None:
    results = run_pipeline(tiny_cfg(f"method={method}", *extra), tmp_path / "run")
    assert list(results) == CHAIN
    assert np.isfinite(results["train_cls"]["train_loss"])
    _check_cams(tmp_path / "run", results)


@pytest.mark.slow
@pytest.mark.parametrize("drop", [False, True])
def test_oaa_chain_uses_accumulated_maps(tiny_cfg, tmp_path, drop) -> None:
    cfg = tiny_cfg("method=oaa", "pipeline=oaa", "stages.train_cls.max_epochs=2",
                   f"method.attention_drop={str(drop).lower()}")
    results = run_pipeline(cfg, tmp_path / "run")
    assert list(results) == OAA_CHAIN
    _check_gen_gt(tmp_path / "run", results)
    acc = sorted((tmp_path / "run/stages/train_cls/accumulated").glob("*.npz"))
    assert len(acc) >= results["make_cam"]["num_accumulated"] > 16  # train_aug + all of val
    made = results["make_cam"]
    assert made["num_fallback"] == 0 and made["num_accumulated"] == made["num_images"]
    _check_cams(tmp_path / "run", results)


@pytest.mark.slow
def test_oaa_iam_chain_takes_cams_from_the_iam(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("method=oaa_iam", "pipeline=oaa_iam", "stages.train_cls.max_epochs=2",
                   "stages.train_iam.max_epochs=1", "stages.train_iam.size=48")
    results = run_pipeline(cfg, tmp_path / "run")
    assert list(results) == ["train_cls", "train_iam", *OAA_CHAIN[1:]]
    _check_gen_gt(tmp_path / "run", results)
    assert results["train_iam"]["num_images"] > 0
    assert results["make_cam"]["model"] == "train_iam"
    assert (tmp_path / "run/stages/train_iam/model.pt").is_file()
    _check_cams(tmp_path / "run", results)
