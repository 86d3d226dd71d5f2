"""`python -m wsss.predict` on a finished tiny run: masks, overlays and CAMs per image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.io import load_label_png, load_npz
from wsss.predict import load_run_model, main, predict_image


@pytest.fixture(scope="module")
def images(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((synthetic_root / "JPEGImages").glob("*.jpg"))[:3]:
        shutil.copy(path, folder / path.name)
    return folder


def test_segmenter_writes_masks_overlays_and_scores(tiny_run: Path, images: Path, tmp_path: Path) -> None:
    main([str(tiny_run / "stages/train_seg/model.pt"), str(images), "--out", str(tmp_path), "--cams"])
    loaded = load_run_model(tiny_run / "stages/train_seg")
    assert loaded.kind == "segmenter"
    for path in sorted(images.glob("*.jpg")):
        rgb = np.array(Image.open(path).convert("RGB"))
        mask = load_label_png(tmp_path / "masks" / f"{path.stem}.png")
        assert Image.open(tmp_path / "masks" / f"{path.stem}.png").mode == "P"  # VOC palette
        expected, keys, _maps = predict_image(loaded, rgb, [1.0], False, 0.25, 0.5)
        assert np.array_equal(mask, expected) and mask.shape == rgb.shape[:2]
        assert Image.open(tmp_path / "overlays" / f"{path.stem}.jpg").size == (rgb.shape[1], rgb.shape[0])
        cams = load_npz(tmp_path / "cams" / f"{path.stem}.npz")
        assert cams["keys"].tolist() == sorted(c - 1 for c in set(mask.ravel().tolist()) if c > 0)
        assert cams["cams"].shape == (len(keys), *mask.shape)
        assert np.all((cams["cams"] >= 0) & (cams["cams"] <= 1))


def test_classifier_masks_follow_cams_and_run_threshold(tiny_run: Path, images: Path, tmp_path: Path) -> None:
    main([str(tiny_run / "stages/train_cls"), str(images), "--out", str(tmp_path), "--cams",
          "--cls-threshold", "0.0"])  # every class counts as predicted
    loaded = load_run_model(tiny_run / "stages/train_cls/model.pt")
    assert loaded.kind == "classifier"
    path = min(images.glob("*.jpg"))
    cams = load_npz(tmp_path / "cams" / f"{path.stem}.npz")
    assert cams["keys"].tolist() == list(range(loaded.module.num_classes))
    assert cams["cams"].max() <= 1.0 and cams["cams"].max() > 0.5  # max-normalised per class
    mask = load_label_png(tmp_path / "masks" / f"{path.stem}.png")
    threshold = float(__import__("json").loads(
        (tiny_run / "stages/eval_cam/metrics.json").read_text())["threshold"])
    fg = cams["cams"].max(0) >= threshold
    assert np.array_equal(mask > 0, fg)
    assert np.array_equal(mask[fg], cams["keys"][cams["cams"].argmax(0)][fg] + 1)


def test_manifest_alone_rebuilds_the_model(tiny_run: Path, tmp_path: Path) -> None:
    """A stage directory copied out of its run (no .hydra/) still predicts: its manifest.json."""
    copy = tmp_path / "stages" / "train_seg"
    shutil.copytree(tiny_run / "stages/train_seg", copy)
    loaded = load_run_model(copy)
    reference = load_run_model(tiny_run / "stages/train_seg")
    image = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(loaded.module(image), reference.module(image))
    assert loaded.mean == reference.mean and loaded.kind == "segmenter"


def test_missing_config_names_the_file(tiny_run: Path, tmp_path: Path) -> None:
    stage = tmp_path / "elsewhere" / "stages" / "train_seg"
    stage.mkdir(parents=True)
    torch.save({}, stage / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config\.yaml nor .*manifest\.json.*--config"):
        load_run_model(stage / "model.pt")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_run_model(tmp_path / "nothing.pt")
