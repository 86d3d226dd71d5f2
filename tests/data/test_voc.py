"""VOCSource: split/mask resolution, SBD sibling layouts, labels, and error messages."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsss.data.labels import VOC_CLASSES, multi_hot_from_mask
from wsss.data.synthetic import generate_voc
from wsss.data.voc import VOCSource, parse_voc_xml


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    return generate_voc(root, 12, 6, image_size=(80, 60), seed=1, progress=False)


@pytest.fixture()
def copy(voc: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the tree: tmp/VOCdevkit/VOC2012."""
    return Path(shutil.copytree(voc, tmp_path / "VOCdevkit" / "VOC2012"))


def extra_ids(voc: Path) -> list[str]:
    train = set(VOCSource(voc, "train").ids)
    return [i for i in VOCSource(voc, "train_aug").ids if i not in train]


def test_ids_paths_and_labels(voc: Path) -> None:
    src = VOCSource(voc, "train")
    assert len(src) == 12 and src.ids == sorted(src.ids) and src.num_classes == 20
    labels = src.label_matrix()
    assert labels.shape == (12, 20) and labels.dtype == np.float32
    for i, name in enumerate(src.ids):
        np.testing.assert_array_equal(labels[i], multi_hot_from_mask(src.load_mask(name), 20))
        assert src.image_path(name) == voc / "JPEGImages" / f"{name}.jpg"
        image, mask = src.load_image(name), src.load_mask(name)
        assert image.dtype == np.uint8 and image.shape == (*mask.shape, 3)
    assert VOCSource(voc.parent, "val").root == voc  # VOCdevkit accepted as root


def test_mask_dir_preference_and_fallback(voc: Path) -> None:
    name = VOCSource(voc, "val").ids[0]
    aug, official = VOCSource(voc, "val"), VOCSource(voc, "val", mask_dir="SegmentationClass")
    assert aug.mask_path(name).parent.name == "SegmentationClassAug"
    assert official.mask_path(name).parent.name == "SegmentationClass"
    assert (official.load_mask(name) == 255).any() and not (aug.load_mask(name) == 255).any()
    extra = extra_ids(voc)[0]  # SBD-only: no SegmentationClass file -> falls back to Aug
    src = VOCSource(voc, "train_aug", mask_dir="SegmentationClass")
    assert src.mask_path(extra).parent.name == "SegmentationClassAug"


def test_sbd_sibling_layout_and_deeplab_split_lines(copy: Path) -> None:
    devkit = copy.parent
    shutil.move(copy / "SegmentationClassAug", devkit / "SegmentationClassAug")
    (copy / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    ids = VOCSource(copy, "train").ids + extra_ids_from(devkit)
    lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in sorted(ids))
    (copy / "ImageSets" / "SegmentationAug").mkdir()
    (copy / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text(lines)
    src = VOCSource(devkit, "train_aug")
    assert src.ids == sorted(ids)
    for name in src.ids:
        assert src.mask_path(name) == devkit / "SegmentationClassAug" / f"{name}.png"
        np.testing.assert_array_equal(
            src.labels(name), multi_hot_from_mask(src.load_mask(name), 20)
        )


def extra_ids_from(devkit: Path) -> list[str]:
    """Ids with an SBD mask but no official mask."""
    official = {p.stem for p in (devkit / "VOC2012" / "SegmentationClass").glob("*.png")}
    return [
        p.stem for p in (devkit / "SegmentationClassAug").glob("*.png") if p.stem not in official
    ]


def test_labels_from_mask_without_xml_and_difficult_kept(copy: Path) -> None:
    src = VOCSource(copy, "train")
    name, other = src.ids[:2]
    expected = src.labels(name)
    (copy / "Annotations" / f"{name}.xml").unlink()
    np.testing.assert_array_equal(VOCSource(copy, "train").labels(name), expected)
    xml = copy / "Annotations" / f"{other}.xml"
    text = xml.read_text().replace("</annotation>", "<object><name>sofa</name>"
                                   "<difficult>1</difficult></object></annotation>")  # fmt: skip
    xml.write_text(text)
    assert parse_voc_xml(xml)[VOC_CLASSES.index("sofa")] == 1.0


def test_unknown_class_in_xml_names_file(copy: Path) -> None:
    name = VOCSource(copy, "train").ids[0]
    xml = copy / "Annotations" / f"{name}.xml"
    xml.write_text(xml.read_text().replace("</annotation>",
                                           "<object><name>unicorn</name></object></annotation>"))  # fmt: skip
    with pytest.raises(ValueError, match=f"{name}.xml.*unicorn"):
        VOCSource(copy, "train").labels(name)


def test_missing_files_raise_with_path(copy: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=f"{re.escape(str(missing))}.*expected VOC 2012 layout"
    ):
        VOCSource(missing, "train")
    with pytest.raises(FileNotFoundError, match="train_bogus.*ImageSets/Segmentation"):
        VOCSource(copy, "train_bogus")
    src = VOCSource(copy, "val")
    name = src.ids[0]
    (copy / "JPEGImages" / f"{name}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"JPEGImages/{name}.jpg"):
        VOCSource(copy, "val")
    with pytest.raises(FileNotFoundError, match=f"JPEGImages/{name}.jpg"):
        src.load_image(name)
    for d in ("SegmentationClassAug", "SegmentationClass"):
        (copy / d / f"{name}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"SegmentationClassAug/{name}.png"):
        src.load_mask(name)
    (copy / "Annotations" / f"{name}.xml").unlink()
    with pytest.raises(FileNotFoundError, match=f"Annotations/{name}.xml"):
        src.labels(name)


def test_instances_from_segmentation_object(voc: Path, copy: Path) -> None:
    src = VOCSource(voc, "train")
    for name in src.ids:
        masks, classes = src.load_instances(name)
        xml = parse_voc_xml(src.annotation_path(name))
        assert masks.dtype == bool and masks.shape[1:] == src.load_mask(name).shape
        assert sorted(set(classes.tolist())) == np.flatnonzero(xml).tolist()
        semantic = src.load_mask(name)
        for mask, cls in zip(masks, classes):
            assert (semantic[mask] == cls + 1).all()  # the object's pixels carry its class
        assert not (masks.sum(0) > 1).any()  # objects do not overlap
    shutil.rmtree(copy / "SegmentationObject")
    assert VOCSource(copy, "train").load_instances(src.ids[0]) is None  # no instance masks
