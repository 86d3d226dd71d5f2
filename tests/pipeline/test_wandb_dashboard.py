"""W&B runs carry the resolved config, groups unique per run dir, tables and masked images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict
from PIL import Image

from tests.conftest import compose_cfg
from tests.pipeline.wandb_offline import read_offline_run
from wsss.pipeline import wandb_dashboard as wd
from wsss.pipeline.runner import make_loggers, run_pipeline


def test_flat_config_and_group_and_tags(tmp_path: Path) -> None:
    cfg = compose_cfg(["method=seam", "backbone=resnet50"])
    flat = wd.flat_config(cfg)
    assert flat["backbone.name"] == "resnet50"
    assert flat["stages.eval_cam.thresholds"] == list(cfg.stages.eval_cam.thresholds)
    assert not any(k.startswith("hydra") for k in flat)
    assert wd.run_group(tmp_path / "multiruns" / "2026-01-02_03-04-05" / "3") == "2026-01-02_03-04-05/3"
    assert wd.run_group(tmp_path / "runs" / "2026-01-02_03-04-05") == "runs/2026-01-02_03-04-05"
    assert {"method:seam", "backbone:resnet50", "data:voc"} <= set(wd.run_tags(cfg))


def test_cam_label_keeps_keys_and_background() -> None:
    cams = np.zeros((2, 2, 3), np.float32)
    cams[0, 0, :] = 0.9  # class 4 on row 0
    cams[1, 1, :2] = 0.6  # class 11 on row 1, first two columns
    label = wd.cam_label(cams, np.array([4, 11]), threshold=0.5)
    assert label.tolist() == [[5, 5, 5], [12, 12, 0]]


def test_dashboard_options_are_not_passed_to_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_cfg(["logger=wandb", f"paths.log_dir={tmp_path}"])
    loggers = make_loggers(cfg, "train_cls", tmp_path / "runs" / "x")
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "WandbLogger"]
    assert loggers[1]._wandb_init["group"] == "runs/x"
    assert "dashboard" not in loggers[1]._wandb_init


@pytest.mark.slow
def test_offline_runs_hold_config_tables_and_masks(tiny_run: Path, synthetic_root: Path,
                                                    tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "multiruns" / "2026-01-02_03-04-05" / "0"
    cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={tmp_path}/logs",
                       "logger=wandb", f"pipeline.from_run={tiny_run}", "stages.eval_seg.crf=false",
                       "stages.make_pseudo_labels.crf=false",
                       "pipeline.only=[make_pseudo_labels,eval_seg]",
                       "logger.wandb.dashboard.num_images=2",
                       "logger.wandb.dashboard.artifacts.checkpoints=true"])
    with open_dict(cfg):
        cfg.logger.csv.save_dir = str(tmp_path / "logs")
    results = run_pipeline(cfg, run_dir)
    runs = {}
    for offline in sorted((run_dir / "wandb").glob("offline-run-*")):
        data = read_offline_run(offline)
        runs[data["job_type"]] = (offline, data)
    assert sorted(runs) == ["eval_seg", "make_pseudo_labels"]
    for stage, (offline, data) in runs.items():
        assert data["group"] == "2026-01-02_03-04-05/0"
        assert data["name"] == f"2026-01-02_03-04-05/0/{stage}"
        assert {"method:cam", "backbone:resnet18", "data:voc", "synthetic"} <= set(data["tags"])
        config = data["config"]
        assert config["backbone.name"] == "resnet18"
        assert config["stages.eval_seg.crf"] is False
        assert config["pipeline.only"] == ["make_pseudo_labels", "eval_seg"]
        assert config["wsss.stage"] == stage
        assert data["summary"]["stage"] == stage

    # eval_seg: headline metrics in the summary, per-class IoU as a table, predictions with masks.
    offline, data = runs["eval_seg"]
    assert data["summary"]["miou"] == pytest.approx(results["eval_seg"]["miou"])
    tables = list((offline / "files/media/table/eval_seg").glob("per_class_iou_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["class", "value"]
    assert dict(map(tuple, table["data"])) == pytest.approx(results["eval_seg"]["per_class_iou"])
    # the saved (ms+flip) predictions and the segmenter's own single-scale ones, as panels of their own
    assert {"eval_seg/masks/predictions", "eval_seg/masks/predictions_single"} <= set(data["history_keys"])
    mask_dir = offline / "files/media/images/mask/eval_seg/masks"
    single = sorted(mask_dir.glob("predictions_single_*.png"))
    masks = sorted(set(mask_dir.glob("predictions_*.png")) - set(single))
    assert len(masks) == len(single) == 4  # 2 images x (prediction + ground truth) each
    values = set(np.unique(np.concatenate([np.asarray(Image.open(m)).ravel() for m in masks])))
    assert values <= set(range(21)) | {255} and len(values) > 1
    class_labels = data["config"]["_wandb"]["mask/class_labels"]
    assert any(k.startswith("eval_seg/masks/predictions") for k in class_labels)

    # make_pseudo_labels: pseudo-label masks.
    offline, data = runs["make_pseudo_labels"]
    assert "make_pseudo_labels/masks/labels" in data["history_keys"]
    assert list((offline / "files/media/images/mask/make_pseudo_labels/masks").glob("labels_*.png"))
    assert "make_pseudo_labels/per_class_iou" in runs["make_pseudo_labels"][1]["history_keys"]
    # the checkpoint artifact switch: no fit stage ran here, so no artifact was logged.
    assert not any(f.endswith("model.pt") for _, d in runs.values() for f in d["files"])
    assert OmegaConf.select(cfg, "logger.wandb.dashboard.num_images") == 2


def test_cam_panels_carry_the_argmax_mask(tiny_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    from wsss.pipeline.context import StageContext

    cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={tmp_path}"])
    ctx = StageContext(cfg, "make_cam", tiny_run)
    panels = wd.masked_images(ctx, tiny_run / "stages/make_cam", num_images=3, cam_threshold=0.25)
    assert list(panels) == ["make_cam/masks/cams"]
    assert len(panels["make_cam/masks/cams"]) == 3
    first = panels["make_cam/masks/cams"][0]
    cams = np.load(min((tiny_run / "stages/make_cam/cams").glob("*.npz")))
    expected = wd.cam_label(cams["cams"], cams["keys"], 0.25)
    assert set(first._masks) == {"cam_argmax", "ground_truth"}
    mask = first._masks["cam_argmax"]
    assert np.array_equal(np.asarray(mask._val["mask_data"]), expected)
    assert mask._val["class_labels"][0] == "background"
