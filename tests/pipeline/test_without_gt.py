"""Pipelines on a user folder WITHOUT ground-truth masks: every stage runs and writes its files,
scores are ``null`` (not a crash, not NaN), and the same folder WITH masks gives real numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import open_dict
from PIL import Image

from tests.conftest import TINY, compose_cfg
from tests.data.fake_folder import write_folder_from_voc
from wsss.data.folder import FolderSource
from wsss.io import load_label_png, write_json
from wsss.pipeline.protocol import MissingGroundTruthError, holdout_ids
from wsss.pipeline.report import table
from wsss.pipeline.runner import print_summary, run_pipeline

CAM_STAGES = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"]
AFF_STAGES = ["train_cls", "make_cam", "eval_cam", "make_affinity_labels", "train_affinity", "random_walk"]
TINY_AFF = [
    "pipeline=affinitynet",
    "stages.make_affinity_labels.num_workers=0",
    "stages.train_affinity.max_epochs=1",
    "stages.train_affinity.crop_size=48",
    "stages.train_affinity.batch_size=8",
    "stages.random_walk.logt=4",
    "stages.eval_cam.num_examples=0",
]


@pytest.fixture(scope="module")
def folders(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folder-format copies of the synthetic tree, without and with ``masks/``."""
    base = tmp_path_factory.mktemp("folders")
    return {"no_masks": write_folder_from_voc(synthetic_root, base / "no_masks", with_masks=False),
            "masks": write_folder_from_voc(synthetic_root, base / "masks", with_masks=True)}


def _cfg(root: Path, tmp_path: Path, *extra: str):
    tiny = [o for o in TINY if not o.startswith("data.synthetic")]
    cfg = compose_cfg([*tiny, "data=folder", f"data.root={root}", f"paths.log_dir={tmp_path}/logs",
                       "backbone.weights=null", "stages.eval_seg.num_examples=2",
                       "stages.eval_cam.num_examples=2",
                       # validate every epoch, so a val split without masks is exercised
                       "stages.train_seg.val_every_n_epochs=1", *extra], tiny=False)  # fmt: skip
    with open_dict(cfg):
        cfg.logger.csv.save_dir = str(tmp_path / "logs")
    return cfg


def _size(root: Path, image_id: str, columns: int) -> tuple[int, int]:
    """(width, height) of an example panel of ``columns`` image-sized tiles side by side."""
    height, width = FolderSource(root, "all").load_image(image_id).shape[:2]
    return columns * width, height


def _on_disk(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / stage / "metrics.json").read_text())


@pytest.mark.slow
def test_cam_pipeline_runs_without_masks(folders, tmp_path) -> None:
    root, run_dir = folders["no_masks"], tmp_path / "run"
    assert not (root / "masks").exists()
    cfg = _cfg(root, tmp_path)
    assert cfg.protocol.threshold_mode == "auto"  # the data=folder default
    results = run_pipeline(cfg, run_dir)
    assert list(results) == CAM_STAGES

    cam = _on_disk(run_dir, "eval_cam")  # null in the JSON, not NaN
    assert cam["miou"] is None and cam["num_evaluated"] == 0 and cam["per_class_iou"] == {}
    assert cam["threshold"] == cfg.stages.eval_cam.threshold == 0.15
    assert cam["threshold_mode"] == "fixed" and cam["threshold_mode_config"] == "auto"
    assert "no GT" in cam["includes"] and "no GT masks" in cam["note"]
    assert cam["oracle_miou_on_eval"] is None and cam["sweep_eval"] is None
    panels = sorted((run_dir / "stages/eval_cam/examples").glob("*.png"))
    assert len(panels) == 2
    with Image.open(panels[0]) as panel:  # image | CAM overlay | label, no GT column
        assert panel.size == _size(root, panels[0].stem, columns=3)

    train_ids = FolderSource(root, "train").ids
    pseudo = _on_disk(run_dir, "make_pseudo_labels")
    assert pseudo["miou"] is None and pseudo["miou_crf"] is None and pseudo["num_evaluated"] == 0
    assert 0.0 <= pseudo["ignored_fraction"] <= 1.0
    for folder in ("labels", "labels_crf"):
        labels = {p.stem for p in (run_dir / "stages/make_pseudo_labels" / folder).glob("*.png")}
        assert labels == set(train_ids)

    assert "without the val_miou monitor" in results["train_seg"]["note"]
    assert "val_miou" not in results["train_seg"]
    assert (run_dir / "stages/train_seg/model.pt").is_file()

    seg = _on_disk(run_dir, "eval_seg")
    for key in ("miou", "miou_ms", "miou_crf", "miou_full_split"):
        assert seg[key] is None
    assert seg["num_evaluated"] == 0 and "no GT masks" in seg["note"]
    predictions = {p.stem for p in (run_dir / "stages/eval_seg/predictions").glob("*.png")}
    assert predictions == set(FolderSource(root, "val").ids)
    example = next((run_dir / "stages/eval_seg/examples").glob("*.png"))
    with Image.open(example) as panel:
        assert panel.size == _size(root, example.stem, columns=2)  # image | prediction
    assert load_label_png(next((run_dir / "stages/eval_seg/predictions").glob("*.png"))).max() <= cfg.data.num_classes

    row = table([run_dir]).splitlines()[2].split("|")[2:-1]
    assert row[0].strip() == "n/a" and row[1].strip() == "0.150"  # CAM mIoU n/a, threshold set


@pytest.mark.slow
def test_cam_pipeline_with_masks_reports_numbers(folders, tmp_path) -> None:
    run_dir = tmp_path / "run"
    cfg = _cfg(folders["masks"], tmp_path)
    results = run_pipeline(cfg, run_dir)
    assert list(results) == CAM_STAGES
    cam = results["eval_cam"]
    assert cam["threshold_mode"] == "holdout" and cam["threshold_mode_config"] == "auto"
    assert isinstance(cam["miou"], float) and 0.0 < cam["miou"] <= 1.0
    assert cam["num_evaluated"] == len(FolderSource(folders["masks"], "train").ids)
    example = next((run_dir / "stages/eval_cam/examples").glob("*.png"))
    with Image.open(example) as panel:  # image | CAM overlay | label | GT
        assert panel.size == _size(folders["masks"], example.stem, columns=4)
    assert isinstance(results["make_pseudo_labels"]["miou"], float)
    assert isinstance(results["train_seg"]["val_miou"], float)  # the monitor ran
    for key in ("miou", "miou_ms", "miou_crf", "miou_full_split"):
        assert isinstance(results["eval_seg"][key], float)


@pytest.mark.slow
def test_masks_on_some_val_images_only(folders, tmp_path) -> None:
    """Masks for the held-out images and half of the other val images (none for train): the
    threshold is tuned on the held-out ones, train scores are null, val scores count the rest."""
    root = tmp_path / "partial"
    shutil.copytree(folders["masks"], root)
    val = FolderSource(root, "val").ids
    held = holdout_ids(val, 0.25, 0)  # TINY's protocol.holdout_fraction, protocol.seed
    others = [i for i in val if i not in held]
    keep = {*held, *others[::2]}
    for mask in (root / "masks").glob("*.png"):
        if mask.stem not in keep:
            mask.unlink()
    results = run_pipeline(_cfg(root, tmp_path), tmp_path / "run")
    cam = results["eval_cam"]
    assert cam["threshold_mode"] == "holdout" and isinstance(cam["holdout_miou"], float)
    assert cam["miou"] is None and cam["num_evaluated"] == 0  # eval_split train has no masks
    assert results["make_pseudo_labels"]["miou"] is None
    assert isinstance(results["train_seg"]["val_miou"], float)  # monitor on the masked val images
    seg = results["eval_seg"]
    assert seg["num_evaluated"] == len(others[::2]) < seg["num_reported"] == len(others)
    assert isinstance(seg["miou"], float) and isinstance(seg["miou_full_split"], float)


@pytest.mark.slow
def test_affinitynet_runs_without_masks_through_random_walk(folders, tmp_path) -> None:
    root, run_dir = folders["no_masks"], tmp_path / "run"
    # The small recipe chooses the walk's background power on held-out masks: without any, it
    # stops before training and names the setting to fix.
    cfg = _cfg(root, tmp_path, *TINY_AFF, f"pipeline.only=[{','.join(AFF_STAGES)}]")
    with pytest.raises(MissingGroundTruthError, match=r"stages\.random_walk\.bg_alpha to a number"):
        run_pipeline(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused" / "stages").exists()  # nothing was trained
    cfg = _cfg(root, tmp_path, *TINY_AFF, f"pipeline.only=[{','.join(AFF_STAGES)}]", "stages.random_walk.bg_alpha=0.55")
    results = run_pipeline(cfg, run_dir)
    assert list(results) == AFF_STAGES
    train_ids = set(FolderSource(root, "train").ids)
    aff = _on_disk(run_dir, "make_affinity_labels")
    assert aff["miou"] is None and aff["miou_confident"] is None and aff["num_evaluated"] == 0
    assert aff["cam_miou"] is None and "no GT masks" in aff["note"]
    assert {p.stem for p in (run_dir / "stages/make_affinity_labels/labels").glob("*.png")} == train_ids
    walk = _on_disk(run_dir, "random_walk")
    assert walk["miou"] is None and walk["miou_seeds"] is None and walk["num_evaluated"] == 0
    assert {p.stem for p in (run_dir / "stages/random_walk/labels").glob("*.png")} == train_ids


@pytest.mark.parametrize("mode", ["holdout", "tune_on_eval"])
def test_modes_that_need_masks_fail_before_training(folders, tmp_path, mode) -> None:
    cfg = _cfg(folders["no_masks"], tmp_path, f"protocol.threshold_mode={mode}")
    with pytest.raises(MissingGroundTruthError, match=r"protocol\.threshold_mode=fixed") as err:
        run_pipeline(cfg, tmp_path / "run")
    assert "stages.eval_cam.threshold" in str(err.value)
    assert not (tmp_path / "run" / "stages").exists()  # nothing was trained


def test_self_training_round_selection_needs_masks_before_training(folders, tmp_path) -> None:
    cfg = _cfg(folders["no_masks"], tmp_path, "protocol.threshold_mode=fixed", "pipeline=iterative")
    with pytest.raises(MissingGroundTruthError, match=r"stages\.self_train\.select_round=last"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "stages").exists()  # nothing was trained


def test_folder_without_masks_has_no_segmentation_validation(folders) -> None:
    cfg = compose_cfg(["data=folder", f"data.root={folders['no_masks']}"], tiny=False)
    from hydra.utils import instantiate

    seg = instantiate(cfg.data.module, root=str(folders["no_masks"]), mode="segmentation")
    assert not seg.has_val_masks() and len(seg.val_dataloader()) == 0
    with_masks = instantiate(cfg.data.module, root=str(folders["masks"]), mode="segmentation")
    assert with_masks.has_val_masks()
    assert len(with_masks.val_dataloader()) == len(FolderSource(folders["masks"], "val").ids)


def test_summary_and_report_show_missing_scores(tmp_path, capsys) -> None:
    print_summary({"eval_cam": {"miou": None, "threshold": 0.15, "includes": "CAMs"}})
    out = capsys.readouterr().out
    assert "n/a" in out and "0.1500" in out
    run = tmp_path / "run"
    write_json(run / "stages/eval_cam/metrics.json", {"miou": None, "threshold": 0.15})
    write_json(run / "stages/eval_seg/metrics.json", {"miou": None, "miou_crf": 0.25})
    row = table([run], ["mine"]).splitlines()[2]
    # ran but unscored -> n/a; stage missing -> blank
    assert row == "| mine | n/a | 0.150 |  |  |  |  |  | n/a |  | 0.250 |"


def test_irnet_threshold_choice_needs_masks_before_training(folders, tmp_path) -> None:
    cfg = _cfg(folders["no_masks"], tmp_path, "pipeline=irnet")
    with pytest.raises(MissingGroundTruthError, match=r"stages\.make_sem_seg_labels\.bg_threshold to a number"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "stages").exists()  # nothing was trained
