"""The CAM chain on COCO-, Context- and folder-format copies of the synthetic VOC tree: the
pipeline reads every dataset through ``data.source`` with no VOC assumption left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from tests.conftest import TINY, compose_cfg
from tests.data.fake_coco import write_coco_from_voc
from tests.data.fake_context import write_context_from_voc
from tests.data.fake_folder import present_classes, write_folder_from_voc
from wsss.data.labels import VOC_CLASSES
from wsss.io import load_label_png
from wsss.pipeline.runner import run_pipeline

STAGES = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels"]


def _cfg(data: str, root: Path, tmp_path: Path, *extra: str):
    tiny = [o for o in TINY if not o.startswith("data.synthetic")]
    cfg = compose_cfg([*tiny, f"data={data}", f"data.root={root}", f"paths.log_dir={tmp_path}/logs",
                       f"pipeline.only=[{','.join(STAGES)}]", "backbone.weights=null", *extra], tiny=False)  # fmt: skip
    with open_dict(cfg):
        cfg.logger.csv.save_dir = str(tmp_path / "logs")
    return cfg


def _check_run(results: dict, run_dir: Path, num_classes: int, class_name: str) -> None:
    cam = results["eval_cam"]
    assert 0.0 < cam["miou"] <= 1.0
    assert class_name in cam["per_class_iou"]  # the dataset's own class names are reported
    labels = sorted((run_dir / "stages/make_pseudo_labels/labels").glob("*.png"))
    assert labels
    values = np.unique(np.concatenate([np.unique(load_label_png(p)) for p in labels]))
    assert values.max() <= num_classes or set(values) - set(range(num_classes + 1)) == {255}


@pytest.mark.slow
def test_coco_format(synthetic_root, tmp_path) -> None:
    root = write_coco_from_voc(synthetic_root, tmp_path / "coco")
    results = run_pipeline(_cfg("coco", root, tmp_path), tmp_path / "run")
    assert results["train_cls"]["split"] == "train_aug"
    _check_run(results, tmp_path / "run", 80, "airplane")
    names = {p.stem for p in (tmp_path / "run/stages/make_pseudo_labels/labels").glob("*.png")}
    assert names and all(n.startswith("COCO_train2014_") for n in names)


@pytest.mark.slow
def test_context_format(synthetic_root, tmp_path) -> None:
    root = write_context_from_voc(synthetic_root, tmp_path / "context")
    results = run_pipeline(_cfg("context", root, tmp_path), tmp_path / "run")
    _check_run(results, tmp_path / "run", 59, "aeroplane")
    assert "sky" in results["eval_cam"]["per_class_iou"]  # a stuff class of Context-59


@pytest.mark.slow
def test_folder_format(synthetic_root, tmp_path) -> None:
    root = write_folder_from_voc(synthetic_root, tmp_path / "folder")
    present = [VOC_CLASSES[c] for c in present_classes(synthetic_root)]
    cfg = _cfg("folder", root, tmp_path)
    assert cfg.data.num_classes == len(present)  # read from classes.txt
    results = run_pipeline(cfg, tmp_path / "run")
    _check_run(results, tmp_path / "run", len(present), present[0])
    assert set(results["eval_cam"]["per_class_iou"]) <= {"background", *present}


def test_num_classes_mismatch_is_reported(synthetic_root, tmp_path) -> None:
    root = write_folder_from_voc(synthetic_root, tmp_path / "folder")
    cfg = _cfg("folder", root, tmp_path, "data.num_classes=3")
    with pytest.raises(ValueError, match="data.num_classes=3.*classes.txt|data.num_classes=3"):
        run_pipeline(cfg, tmp_path / "run")
