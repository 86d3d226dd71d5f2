"""Synthetic VOC generator: complete tree, label consistency, void band, determinism, safety."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.labels import IGNORE, VOC_CLASSES, multi_hot_from_mask, voc_palette
from wsss.data.synthetic import DEFAULT_CLASSES, MARKER, ensure_synthetic_voc, generate_voc, main
from wsss.data.voc import parse_voc_xml


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_voc(tmp_path_factory.mktemp("voc") / "VOC2012", 12, 6, seed=0, progress=False)


def split(root: Path, name: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{name}.txt").read_text().split()


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbour has another label (both sides of every contour)."""
    edge = np.zeros(mask.shape, bool)
    dx, dy = mask[:, 1:] != mask[:, :-1], mask[1:] != mask[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge


def test_splits_and_every_file_exist(voc: Path) -> None:
    train, val, trainval, aug = (split(voc, s) for s in ("train", "val", "trainval", "train_aug"))
    assert (len(train), len(val), len(trainval), len(aug)) == (12, 6, 18, 16)
    assert not set(train) & set(val) and sorted(train + val) == trainval == sorted(trainval)
    assert set(train) < set(aug) and not set(aug) & set(val)
    for name in trainval + aug:
        for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "xml"),
                         ("SegmentationClassAug", "png"), ("SALImages", "png")):  # fmt: skip
            assert (voc / sub / f"{name}.{ext}").is_file(), (sub, name)
        assert (voc / "SegmentationClass" / f"{name}.png").is_file() == (name in trainval)
    marker = json.loads((voc / MARKER).read_text())
    assert marker["counts"] == {"train": 12, "val": 6, "trainval": 18, "train_aug": 16}
    assert marker["classes"] == list(DEFAULT_CLASSES) and marker["seed"] == 0


def test_xml_labels_equal_mask_labels(voc: Path) -> None:
    allowed = {VOC_CLASSES.index(c) for c in DEFAULT_CLASSES}
    for name in split(voc, "trainval") + split(voc, "train_aug"):
        labels = parse_voc_xml(voc / "Annotations" / f"{name}.xml")
        aug = load(voc / "SegmentationClassAug" / f"{name}.png")
        assert labels.shape == (20,) and labels.sum() >= 1
        assert set(np.flatnonzero(labels)) <= allowed
        np.testing.assert_array_equal(labels, multi_hot_from_mask(aug, 20))
        official = voc / "SegmentationClass" / f"{name}.png"
        if official.is_file():
            np.testing.assert_array_equal(labels, multi_hot_from_mask(load(official), 20))
        root = ET.parse(voc / "Annotations" / f"{name}.xml").getroot()
        h, w = aug.shape
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (w, h)
        assert load(voc / "JPEGImages" / f"{name}.jpg").shape == (h, w, 3)
        for obj in root.iter("object"):
            assert obj.findtext("pose") == "Unspecified" and obj.findtext("difficult") in "01"
            x0, y0, x1, y1 = (
                int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h
            cls = VOC_CLASSES.index(obj.findtext("name")) + 1
            assert (aug[y0 - 1 : y1, x0 - 1 : x1] == cls).any()  # box covers its class


def test_palette_and_void_band_only_in_segmentation_class(voc: Path) -> None:
    near, total = 0, 0
    for name in split(voc, "trainval"):
        with Image.open(voc / "SegmentationClass" / f"{name}.png") as image:
            assert image.mode == "P"
            np.testing.assert_array_equal(
                np.array(image.getpalette()[:768]).reshape(-1, 3), voc_palette()
            )
            official = np.array(image)
        with Image.open(voc / "SegmentationClassAug" / f"{name}.png") as image:
            assert image.mode in ("L", "P")
            aug = np.array(image)
        void = official == IGNORE
        assert not (aug == IGNORE).any()
        assert void.any() and void.mean() < 0.2  # a thin band, not whole regions
        np.testing.assert_array_equal(official[~void], aug[~void])
        assert void[boundary(aug)].all()  # every class contour is covered by the band
        wide = boundary(aug)
        for _ in range(2):  # dilate by 2 px
            wide = wide | boundary(wide.astype(np.uint8))
        near, total = near + (void & wide).sum(), total + void.sum()
    assert near / total > 0.85  # the rest lies on contours between same-class instances


def test_saliency_follows_foreground(voc: Path) -> None:
    for name in split(voc, "train"):
        sal = load(voc / "SALImages" / f"{name}.png").astype(np.float32) / 255
        fg = load(voc / "SegmentationClassAug" / f"{name}.png") > 0
        assert sal.ndim == 2 and sal.shape == fg.shape
        assert sal[fg].mean() > sal[~fg].mean() + 0.3


def test_generation_is_deterministic(tmp_path: Path) -> None:
    kw = {"num_train": 3, "num_val": 1, "num_extra": 0, "image_size": (64, 48), "progress": False}
    a, b, c = (generate_voc(tmp_path / d, seed=s, **kw) for d, s in (("a", 0), ("b", 0), ("c", 1)))
    names = split(a, "trainval")
    for name in names:
        for rel in (f"SegmentationClass/{name}.png", f"JPEGImages/{name}.jpg",
                    f"Annotations/{name}.xml", f"SALImages/{name}.png"):  # fmt: skip
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert names == split(c, "trainval")
    assert any((a / f"SegmentationClassAug/{n}.png").read_bytes()
               != (c / f"SegmentationClassAug/{n}.png").read_bytes() for n in names)  # fmt: skip


def test_classes_subset(tmp_path: Path) -> None:
    root = generate_voc(tmp_path / "v", 4, 0, image_size=(64, 48), classes=["dog", "boat"],
                        progress=False)  # fmt: skip
    for name in split(root, "train_aug"):
        present = np.flatnonzero(parse_voc_xml(root / "Annotations" / f"{name}.xml"))
        assert set(present) <= {VOC_CLASSES.index("dog"), VOC_CLASSES.index("boat")}
    with pytest.raises(ValueError, match="zebra"):
        generate_voc(tmp_path / "w", 2, 0, classes=["zebra"], progress=False)


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        ensure_synthetic_voc(tmp_path, 2, 1, progress=False)
    with pytest.raises(FileExistsError):
        generate_voc(tmp_path, 2, 1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_ensure_reuses_regenerates_partial_and_checks_settings(tmp_path: Path) -> None:
    kw = {"image_size": (64, 48), "progress": False}
    root = ensure_synthetic_voc(tmp_path / "voc", 3, 1, **kw)
    stamp = (root / MARKER).stat().st_mtime_ns
    assert ensure_synthetic_voc(root, 3, 1, **kw) == root
    assert (root / MARKER).stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(ValueError, match="num_train"):
        ensure_synthetic_voc(root, 4, 1, **kw)
    (root / MARKER).rename(root / ".wsss_synthetic.partial.json")  # simulate a crash
    ensure_synthetic_voc(root, 3, 1, **kw)
    assert (root / MARKER).is_file() and not (root / ".wsss_synthetic.partial.json").exists()
    # A tree from an older generator version is regenerated in place (it is ours: marker).
    shutil.rmtree(root / "SegmentationObject")
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "format_version": 1}))
    ensure_synthetic_voc(root, 3, 1, **kw)
    assert (root / "SegmentationObject").is_dir()
    assert json.loads((root / MARKER).read_text())["format_version"] == marker["format_version"]


def test_cli(tmp_path: Path) -> None:
    args = ["--root", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1",
            "--image-size", "64", "48", "--seed", "3", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    marker = json.loads((tmp_path / "cli" / MARKER).read_text())
    assert marker["seed"] == 3 and marker["image_size"] == [64, 48]
    assert main([*args, "--ensure"]) == 0


def test_segmentation_object_matches_xml_objects_and_class_masks(voc: Path) -> None:
    for name in split(voc, "trainval"):
        objects = load(voc / "SegmentationObject" / f"{name}.png")
        semantic = load(voc / "SegmentationClass" / f"{name}.png")
        assert np.array_equal(objects == IGNORE, semantic == IGNORE)  # the same void band
        assert np.array_equal(objects == 0, semantic == 0)
        xml = ET.parse(voc / "Annotations" / f"{name}.xml").getroot()
        names = [o.findtext("name") for o in xml.iter("object")]
        ids = sorted(set(np.unique(objects).tolist()) - {0, IGNORE})
        assert ids == list(range(1, len(names) + 1))  # object k is the k-th <object>
        for k in ids:
            classes = np.unique(semantic[objects == k])
            assert classes.tolist() == [VOC_CLASSES.index(names[k - 1]) + 1]
