"""COCOSource: labels/masks against the VOC tree it was converted from, paint order, crowd
ignore, precomputed masks, cross-split ids, errors, and the torch datasets over it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.data.fake_coco import (
    COCO_CATEGORIES,
    coco_name,
    coco_stem,
    compressed_rle,
    uncompressed_rle,
    write_coco_from_voc,
)
from wsss.data.coco import COCO_CLASSES, COCOSource
from wsss.data.datasets import ClassificationDataset, InferenceDataset
from wsss.data.labels import VOC_CLASSES
from wsss.data.voc import VOCSource
from wsss.io import save_label_png

VOC_SPLITS = {"train": "train2014", "val": "val2014"}


@pytest.fixture(scope="module")
def coco(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session VOC tree converted to COCO 2014 (read-only)."""
    return write_coco_from_voc(synthetic_root, tmp_path_factory.mktemp("coco") / "coco")


@pytest.fixture()
def copy(coco: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(coco, tmp_path / "coco"))


def voc_to_coco_lut() -> np.ndarray:
    """(256,) uint8: VOC mask value -> COCO mask value (0 and 255 kept)."""
    lut = np.arange(256, dtype=np.uint8)
    for c, name in enumerate(VOC_CLASSES):
        lut[c + 1] = COCO_CLASSES.index(coco_name(name)) + 1
    return lut


def crowd_pixels(coco: Path, split: str) -> dict[int, np.ndarray]:
    """image id -> (H, W) bool union of its crowd annotations, decoded from the json."""
    data = json.loads((coco / "annotations" / f"instances_{split}.json").read_text())
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    out: dict[int, np.ndarray] = {}
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            h, w = sizes[ann["image_id"]]
            pixels = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w)) > 0
            out[ann["image_id"]] = out.get(ann["image_id"], np.zeros((h, w), bool)) | pixels
    return out


def test_class_names_follow_category_ids(coco: Path) -> None:
    src = COCOSource(coco, "train2014")
    assert src.class_names == COCO_CLASSES == tuple(name for _, name, _ in COCO_CATEGORIES)
    assert src.num_classes == 80 and len(set(COCO_CLASSES)) == 80
    assert src.class_names.index("tv") == 62 and src.class_names[79] == "toothbrush"


@pytest.mark.parametrize("voc_split", ["train", "val"])
def test_ids_and_labels_match_voc(synthetic_root: Path, coco: Path, voc_split: str) -> None:
    voc = VOCSource(synthetic_root, voc_split)
    split = VOC_SPLITS[voc_split]
    src = COCOSource(coco, split)
    assert src.split_file == coco / "annotations" / f"instances_{split}.json"
    assert src.ids == [coco_stem(name, voc_split) for name in voc.ids]  # all annotated, by id
    assert COCOSource(coco, voc_split).ids == src.ids  # alias
    labels = src.label_matrix()
    assert labels.shape == (len(voc), 80) and labels.dtype == np.float32
    for i, name in enumerate(voc.ids):
        expected = np.zeros(80, dtype=np.float32)
        for c in np.flatnonzero(voc.labels(name)):
            expected[COCO_CLASSES.index(coco_name(VOC_CLASSES[c]))] = 1.0
        np.testing.assert_array_equal(labels[i], expected)
        np.testing.assert_array_equal(src.labels(src.ids[i]), expected)
        assert src.image_path(src.ids[i]) == coco / split / f"{src.ids[i]}.jpg"
        np.testing.assert_array_equal(src.load_image(src.ids[i]), voc.load_image(name))


@pytest.mark.parametrize("voc_split", ["train", "val"])
def test_rendered_masks_match_voc(synthetic_root: Path, coco: Path, voc_split: str) -> None:
    voc = VOCSource(synthetic_root, voc_split, mask_dir="SegmentationClass")
    src = COCOSource(coco, voc_split)
    crowds, lut = crowd_pixels(coco, VOC_SPLITS[voc_split]), voc_to_coco_lut()
    assert len(crowds) == 1  # the writer marks one crowd instance per split
    for name, stem in zip(voc.ids, src.ids):
        gt = voc.load_mask(name)
        expected = lut[gt]
        img_id = int(stem.rsplit("_", 1)[1])
        if img_id in crowds:
            assert crowds[img_id].any() and (gt[crowds[img_id]] != 0).all()
            expected[crowds[img_id]] = 255
        mask = src.load_mask(stem)
        assert mask.dtype == np.uint8 and mask.shape == gt.shape
        valid = gt != 255
        np.testing.assert_array_equal(mask[valid], expected[valid])
        assert (mask[~valid] == 0).all()  # VOC void is simply not annotated in COCO
        assert src.has_mask(stem)


def test_paint_order_and_crowd_ignore(tmp_path: Path) -> None:
    """Nested large > medium > small instances listed medium, small, large: only painting by
    decreasing area keeps all three visible; crowd is 255 only where no instance covers it."""
    h, w = 10, 12
    large, medium, small, crowd = (np.zeros((h, w), bool) for _ in range(4))
    large[1:9, 1:11] = True
    medium[2:7, 2:8] = True
    small[3:5, 3:5] = True
    crowd[6:10, 8:12] = True  # overlaps large and background
    polygon = [[0.5, 0.5, 10.5, 0.5, 10.5, 8.5, 0.5, 8.5]]  # large as a polygon
    large_px = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w))) > 0
    cats = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]

    def ann(i: int, image: int, cat: str, segm: object, area: float, iscrowd: int = 0) -> dict:
        cid = next(c for c, n, _ in COCO_CATEGORIES if n == cat)
        return {"id": i, "image_id": image, "category_id": cid, "segmentation": segm,
                "area": area, "bbox": [0, 0, 1, 1], "iscrowd": iscrowd}  # fmt: skip

    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w}
              for i in (3, 1, 2)]  # fmt: skip
    anns = [ann(10, 1, "dog", compressed_rle(medium), float(medium.sum())),
            ann(11, 1, "cat", compressed_rle(small), float(small.sum())),
            ann(12, 1, "person", polygon, float(large_px.sum())),
            ann(13, 1, "car", uncompressed_rle(crowd), float(crowd.sum()), iscrowd=1),
            ann(14, 3, "car", uncompressed_rle(crowd), float(crowd.sum()), iscrowd=1)]  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats[::-1]})
    )
    src = COCOSource(tmp_path, "train2014", check_images=False)
    assert src.class_names == COCO_CLASSES  # json lists categories in reverse: sorted by id
    # image 2 has no annotation -> not an id; crowd-only image 3 is labelled
    assert src.ids == ["COCO_train2014_000000000001", "COCO_train2014_000000000003"]
    person, dog, cat, car = (COCO_CLASSES.index(n) + 1 for n in ("person", "dog", "cat", "car"))
    expected = np.zeros((h, w), np.uint8)
    expected[large_px], expected[medium], expected[small] = person, dog, cat
    expected[crowd & ~large_px] = 255
    assert (expected == 255).any() and (expected[crowd] == person).any()
    np.testing.assert_array_equal(src.load_mask(src.ids[0]), expected)
    np.testing.assert_array_equal(src.load_mask(src.ids[1]), np.where(crowd, 255, 0))
    assert np.flatnonzero(src.labels(src.ids[0])).tolist() == sorted(
        c - 1 for c in (person, dog, cat, car)
    )  # crowd categories count as image labels
    assert np.flatnonzero(src.labels(src.ids[1])).tolist() == [car - 1]
    assert src.has_mask(src.ids[0])
    with pytest.raises(FileNotFoundError, match="no mask_dir"):
        src.mask_path(src.ids[0])


def test_precomputed_masks_take_precedence(copy: Path) -> None:
    train, val = COCOSource(copy, "train"), COCOSource(copy, "val")
    first, second, val_id = train.ids[0], train.ids[1], val.ids[0]
    shape = train.load_mask(first).shape
    stripes = (np.arange(shape[1])[None] % 3 * np.ones(shape, int)).astype(np.uint8)
    save_label_png(copy / "mask" / "train2014" / f"{first}.png", stripes)
    seven = np.full(val.load_mask(val_id).shape, 7, np.uint8)
    save_label_png(copy / "mask" / "val2014" / f"{val_id}.png", seven)
    src = COCOSource(copy, "train", mask_dir="mask/train2014")
    assert src.mask_path(first) == copy / "mask" / "train2014" / f"{first}.png"
    np.testing.assert_array_equal(src.load_mask(first), stripes)
    np.testing.assert_array_equal(src.load_mask(second), train.load_mask(second))  # rendered
    with pytest.raises(FileNotFoundError, match=f"mask/train2014/{second}.png"):
        src.mask_path(second)
    union = COCOSource(copy, "train", mask_dir=copy / "mask")  # <mask_dir>/<split>/<id>.png
    union.ids = [first, val_id]
    assert union.mask_path(val_id) == copy / "mask" / "val2014" / f"{val_id}.png"
    assert (union.load_mask(val_id) == 7).all() and (union.load_mask(first) == stripes).all()
    with pytest.raises(FileNotFoundError, match="mask_dir not found.*nope"):
        COCOSource(copy, "train", mask_dir="nope")


def test_ids_replaced_across_splits_and_txt_split(coco: Path) -> None:
    train, val = COCOSource(coco, "train2014"), COCOSource(coco, "val2014")
    src = COCOSource(coco, "train2014", check_images=False)
    assert list(src._splits) == ["train2014"]  # val json not parsed until a val id is used
    src.ids = train.ids + val.ids
    assert len(src) == len(train) + len(val)
    np.testing.assert_array_equal(src.label_matrix()[len(train) :], val.label_matrix())
    name = val.ids[-1]
    assert src.image_path(name) == coco / "val2014" / f"{name}.jpg"
    np.testing.assert_array_equal(src.load_mask(name), val.load_mask(name))
    np.testing.assert_array_equal(src.labels(name), val.labels(name))
    listed = coco / "subset.txt"
    listed.write_text(f"{val.ids[2]}\n/train2014/{train.ids[1]}.jpg\n")
    subset = COCOSource(coco, "subset.txt")
    assert subset.ids == [val.ids[2], train.ids[1]] and subset.split_file == listed
    np.testing.assert_array_equal(subset.labels(val.ids[2]), val.labels(val.ids[2]))
    assert "split='subset.txt', n=2" in repr(subset) and subset.name(1) == train.ids[1]


def test_errors_name_the_file(copy: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))}.*COCO 2014 layout"):
        COCOSource(missing, "train")
    with pytest.raises(FileNotFoundError, match="test2014.*neither"):
        COCOSource(copy, "test2014")
    src = COCOSource(copy, "train2014")
    n_train = len(src)
    val_json = copy / "annotations" / "instances_val2014.json"
    val_id = json.loads(val_json.read_text())["images"][0]["file_name"][:-4]
    unknown = "COCO_train2014_000999999999"
    with pytest.raises(ValueError, match=f"{unknown} is not in .*instances_train2014.json"):
        src.labels(unknown)
    with pytest.raises(ValueError, match="not a COCO 2014 image id"):
        src.load_mask("2007_000032")
    assert not src.has_mask(unknown)
    (copy / "bad.txt").write_text(f"{src.ids[0]}\n{unknown}\n")
    with pytest.raises(ValueError, match=f"{unknown} \\(listed in .*bad.txt\\)"):
        COCOSource(copy, "bad.txt")
    val_json.unlink()
    with pytest.raises(FileNotFoundError, match="instances_val2014.json"):
        COCOSource(copy, "val")
    src.ids = [*src.ids, val_id]
    with pytest.raises(FileNotFoundError, match="instances_val2014.json"):
        src.labels(val_id)
    image = copy / "train2014" / f"{src.ids[0]}.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError, match=f"image not found: {re.escape(str(image))}"):
        COCOSource(copy, "train")
    with pytest.raises(FileNotFoundError, match=re.escape(str(image))):
        src.load_image(src.ids[0])
    assert len(COCOSource(copy, "train", check_images=False)) == n_train
    (copy / "annotations" / "instances_train2014.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed COCO annotation file .*instances_train2014"):
        COCOSource(copy, "train")


def test_datasets_work_over_coco(coco: Path) -> None:
    src = COCOSource(coco, "val2014")
    h, w = src.load_mask(src.ids[0]).shape
    sample = InferenceDataset(src)[0]
    assert sample["image"].shape == (3, h, w) and sample["labels"].shape == (80,)
    assert sample["mask"].shape == (h, w) and sample["name"] == src.ids[0]
    np.testing.assert_array_equal(sample["labels"].numpy(), src.labels(src.ids[0]))
    cls = ClassificationDataset(src)[1]
    assert cls["image"].shape[0] == 3 and cls["labels"].shape == (80,)
    assert tuple(cls["image"].shape[1:]) == src.load_image(src.ids[1]).shape[:2]


def test_instances_are_the_non_crowd_annotations(synthetic_root: Path, coco: Path) -> None:
    src = COCOSource(coco, "train2014")
    data = json.loads((coco / "annotations/instances_train2014.json").read_text())
    per_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    for stem in src.ids:
        anns = sorted((a for a in per_image[int(stem.rsplit("_", 1)[1])] if not a["iscrowd"]),
                      key=lambda a: a["id"])  # fmt: skip
        masks, classes = src.load_instances(stem)
        assert len(masks) == len(classes) == len(anns)
        rendered = src.load_mask(stem)
        for mask, cls, ann in zip(masks, classes, anns):
            assert mask.sum() == ann["area"]
            assert COCO_CLASSES[cls] == next(c["name"] for c in data["categories"]
                                             if c["id"] == ann["category_id"])  # fmt: skip
            assert (rendered[mask] == cls + 1).all()  # components of one class do not overlap
