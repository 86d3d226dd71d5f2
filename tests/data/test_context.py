"""ContextSource: the release format (.mat + labels files), mmseg PNGs, splits, labels, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tests.data.fake_context import (
    CLASSES59,
    CONTEXT459,
    LABELS59_TXT,
    MMSEG59,
    expected_context59,
    label_index,
    voc_mask,
    voc_split,
    write_context_from_voc,
    write_mmseg_layout,
)
from wsss.data.context import CONTEXT59_CLASSES, CONTEXT59_LABEL_INDEX, ContextSource
from wsss.data.datasets import ClassificationDataset, InferenceDataset
from wsss.data.labels import multi_hot_from_mask
from wsss.data.synthetic import generate_voc
from wsss.io import save_label_png

# The release's 59_labels.txt order, as published (VOC classes first), with labels.txt spellings.
OFFICIAL_59 = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain",
    "mouse", "curtain", "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky",
    "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood",
]  # fmt: skip


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    return generate_voc(root, 6, 4, image_size=(48, 40), seed=2, num_extra=0, progress=False,
                        classes=("aeroplane", "diningtable", "person", "train"))  # fmt: skip


@pytest.fixture(scope="module")
def ctx(voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only converted tree: <tmp>/VOCdevkit/VOC2010."""
    return write_context_from_voc(voc, tmp_path_factory.mktemp("ctx") / "VOCdevkit")


@pytest.fixture()
def copy(ctx: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the converted tree: tmp/VOCdevkit/VOC2010."""
    return Path(shutil.copytree(ctx, tmp_path / "VOCdevkit" / "VOC2010"))


def test_class_names_order_and_builtin_tables(ctx: Path) -> None:
    src = ContextSource(ctx, "train")
    assert src.num_classes == 59 and len(src.class_names) == 59
    assert list(src.class_names) == OFFICIAL_59 == list(CONTEXT59_CLASSES) == list(CLASSES59)
    # the release's 59_labels.txt spellings differ from labels.txt in three places
    assert [LABELS59_TXT[i] for i in (10, 27, 51)] == ["diningtable", "clothes", "bedcloth"]
    assert [src.class_names[i] for i in (10, 27, 51)] == ["table", "cloth", "bedclothes"]
    # built-in indices agree with the release's labels.txt; mmseg order = by index = alphabetical
    assert CONTEXT59_LABEL_INDEX == tuple(label_index(n) for n in CLASSES59)
    assert list(MMSEG59) == sorted(CLASSES59) and len(CONTEXT459) == 459


def test_masks_equal_voc_ground_truth_mapped(ctx: Path, voc: Path) -> None:
    seen: set[int] = set()
    for split in ("train", "val"):
        src = ContextSource(ctx, split)
        assert src.ids == voc_split(voc, split)
        for name in src.ids:
            gt = voc_mask(voc, name)
            mask = src.load_mask(name)
            assert mask.dtype == np.uint8 and mask.shape == gt.shape
            assert src.mask_path(name) == ctx / "trainval" / f"{name}.mat" and src.has_mask(name)
            np.testing.assert_array_equal(mask, expected_context59(gt))
            # explicit per-pixel rules, independent of the fake's helper
            top = np.arange(gt.shape[0])[:, None] < gt.shape[0] // 2
            left = np.arange(gt.shape[1])[None, :] < gt.shape[1] // 2
            bg = gt == 0
            assert (mask[gt == 255] == 255).all()
            assert (mask[bg & top] == OFFICIAL_59.index("sky") + 1).all()
            assert (mask[bg & ~top & left] == 0).all()  # the rare class 'ladder' -> background
            assert (mask[bg & ~top & ~left] == OFFICIAL_59.index("grass") + 1).all()
            for voc_value, name59 in ((1, "aeroplane"), (11, "table"), (15, "person"),
                                      (19, "train")):  # fmt: skip
                assert (mask[gt == voc_value] == OFFICIAL_59.index(name59) + 1).all()
            seen |= set(np.unique(mask).tolist())
            image = src.load_image(name)
            assert image.dtype == np.uint8 and image.shape == (*gt.shape, 3)
    expected = {0, 255} | {OFFICIAL_59.index(n) + 1 for n in ("sky", "grass", "table", "person")}
    assert expected <= seen  # every mapping was exercised


def test_labels_from_mask_cached(copy: Path) -> None:
    src = ContextSource(copy, "train")
    matrix = src.label_matrix()
    assert matrix.shape == (6, 59) and matrix.dtype == np.float32
    for i, name in enumerate(src.ids):
        np.testing.assert_array_equal(matrix[i], multi_hot_from_mask(src.load_mask(name), 59))
    assert matrix[:, OFFICIAL_59.index("sky")].all()  # every image has background at the top
    name = src.ids[0]
    first = src.labels(name)
    first[:] = 7  # a copy: the cache is not affected
    (copy / "trainval" / f"{name}.mat").unlink()  # cached per id on the instance
    np.testing.assert_array_equal(src.labels(name), matrix[0])
    assert not src.has_mask(name)


def test_split_files_roots_and_context_dir(copy: Path, tmp_path: Path) -> None:
    src = ContextSource(copy.parent, "val")  # VOCdevkit accepted as root
    assert src.root == copy and src.split_file == copy / "ImageSets" / "Main" / "val.txt"
    assert repr(src) == f"ContextSource(root={str(copy)!r}, split='val', n=4)"
    listing = tmp_path / "mine.txt"
    listing.write_text(f"/JPEGImages/{src.ids[1]}.jpg x\n{src.ids[0]}\n")
    assert ContextSource(copy, str(listing)).ids == [src.ids[1], src.ids[0]]
    # the release unpacked next to VOC2010 (root's parent) is found without context_dir
    for item in ("trainval", "labels.txt", "59_labels.txt"):
        shutil.move(copy / item, copy.parent / item)
    src = ContextSource(copy, "val")
    assert src.mask_path(src.ids[0]) == copy.parent / "trainval" / f"{src.ids[0]}.mat"
    # ... and anywhere else through context_dir
    shutil.move(copy.parent, tmp_path / "elsewhere")
    release = tmp_path / "elsewhere"
    shutil.move(release / "VOC2010", tmp_path / "VOC2010")
    src = ContextSource(tmp_path / "VOC2010", "val", context_dir=release)
    assert src.mask_path(src.ids[0]) == release / "trainval" / f"{src.ids[0]}.mat"
    assert src.class_names == CONTEXT59_CLASSES


def test_ids_replaced_by_several_splits(ctx: Path, voc: Path) -> None:
    src = ContextSource(ctx, "train")
    val = ContextSource(ctx, "val").ids
    src.ids = src.ids + val
    assert len(src) == 10 and src.name(7) == val[1]
    np.testing.assert_array_equal(src.load_mask(val[1]), expected_context59(voc_mask(voc, val[1])))
    assert src.label_matrix().shape == (10, 59)
    sample = InferenceDataset(src)[7]
    assert sample["name"] == val[1] and sample["mask"].shape == voc_mask(voc, val[1]).shape


def test_mmseg_layout_and_mask_dir_precedence(copy: Path, voc: Path) -> None:
    write_mmseg_layout(copy, voc)
    src = ContextSource(copy, "val", mask_dir="SegmentationClassContext")
    assert src.split_file == copy / "ImageSets" / "SegmentationContext" / "val.txt"
    for name in src.ids:  # PNGs win; mmseg order remapped; unlabelled is background there
        assert src.mask_path(name) == copy / "SegmentationClassContext" / f"{name}.png"
        gt = voc_mask(voc, name)
        np.testing.assert_array_equal(src.load_mask(name), expected_context59(gt, unlabelled=0))
    name = src.ids[0]
    (copy / "SegmentationClassContext" / f"{name}.png").unlink()  # falls back to the .mat
    assert src.mask_path(name) == copy / "trainval" / f"{name}.mat"
    np.testing.assert_array_equal(src.load_mask(name), expected_context59(voc_mask(voc, name)))
    # mmseg-only tree: no Main lists, no release files -> built-in class tables
    for item in ("trainval", "labels.txt", "59_labels.txt", "ImageSets/Main"):
        shutil.rmtree(copy / item) if (copy / item).is_dir() else (copy / item).unlink()
    src = ContextSource(copy, "train", mask_dir="SegmentationClassContext")
    assert src.class_names == CONTEXT59_CLASSES
    for name in src.ids:
        gt = voc_mask(voc, name)
        np.testing.assert_array_equal(src.load_mask(name), expected_context59(gt, unlabelled=0))
    # PNGs already in class_names order
    save_label_png(copy / "Mine" / f"{name}.png", expected_context59(voc_mask(voc, name)))
    mine = ContextSource(copy, "train", mask_dir=copy / "Mine", png_order="class_names")
    np.testing.assert_array_equal(mine.load_mask(name), expected_context59(voc_mask(voc, name)))


def _tiny_tree(root: Path, labels: list[str], labels59: str, label_map: np.ndarray) -> Path:
    """root/{JPEGImages/a.jpg, ImageSets/Main/train.txt, trainval/a.mat, labels files}."""
    (root / "JPEGImages").mkdir(parents=True)
    Image.new("RGB", label_map.shape[::-1]).save(root / "JPEGImages" / "a.jpg")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "trainval").mkdir()
    scipy.io.savemat(root / "trainval" / "a.mat", {"LabelMap": label_map})
    (root / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(labels, 1)))
    (root / "59_labels.txt").write_text(labels59)
    return root


def test_hand_made_release_files_define_the_table(tmp_path: Path) -> None:
    """labels.txt with reversed indices and a bare-name 59_labels.txt: every index 0..459 maps
    as the files say (unlabelled 0 -> 255, the 59 classes -> 1..59 in file order, rest -> 0)."""
    reversed_labels = list(CONTEXT459[::-1])  # index i is CONTEXT459[459 - i]
    label_map = np.arange(460, dtype=np.uint16).reshape(20, 23)
    root = _tiny_tree(tmp_path / "t", reversed_labels, "\n".join(LABELS59_TXT) + "\n", label_map)
    src = ContextSource(root, "train")
    assert src.class_names == CONTEXT59_CLASSES
    expected = np.zeros(460, dtype=np.uint8)
    expected[0] = 255
    for c, name in enumerate(CLASSES59):
        expected[reversed_labels.index(name) + 1] = c + 1
    mask = src.load_mask("a")
    np.testing.assert_array_equal(mask, expected.reshape(20, 23))
    assert (mask == 0).sum() == 459 - 59 and (mask == 255).sum() == 1
    assert mask.flat[460 - label_index("sky")] == OFFICIAL_59.index("sky") + 1  # spot check
    # MATLAB doubles are accepted too
    scipy.io.savemat(root / "trainval" / "a.mat", {"LabelMap": label_map.astype(np.float64)})
    np.testing.assert_array_equal(src.load_mask("a"), expected.reshape(20, 23))
    np.testing.assert_array_equal(src.labels("a"), np.ones(59, dtype=np.float32))


def test_clear_errors(copy: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))}.*PASCAL-Context"):
        ContextSource(missing, "train")
    with pytest.raises(FileNotFoundError, match="bogus.*ImageSets/SegmentationContext"):
        ContextSource(copy, "bogus")
    src = ContextSource(copy, "train")
    name, other = src.ids[:2]
    mat = copy / "trainval" / f"{name}.mat"
    mat.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(mat))):
        src.load_mask(name)
    with pytest.raises(FileNotFoundError, match=re.escape(str(mat))):
        src.labels(name)
    scipy.io.savemat(mat, {"Labels": np.zeros((3, 4), np.uint16)})
    with pytest.raises(ValueError, match=f"{re.escape(str(mat))} has no 'LabelMap'"):
        src.load_mask(name)
    scipy.io.savemat(mat, {"LabelMap": np.full((3, 4), 600, np.uint16)})
    with pytest.raises(ValueError, match=f"{name}.mat.*600"):
        src.load_mask(name)
    mat.write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=f"cannot read {re.escape(str(mat))}"):
        src.load_mask(name)
    with pytest.raises(FileNotFoundError, match="mask_dir not found.*Nope"):
        ContextSource(copy, "train", mask_dir="Nope")
    save_label_png(copy / "Bad" / f"{other}.png", np.full((3, 4), 77, np.uint8))
    with pytest.raises(ValueError, match=f"{other}.png holds values \\[77\\]"):
        ContextSource(copy, "train", mask_dir="Bad").load_mask(other)
    with pytest.raises(ValueError, match="png_order"):
        ContextSource(copy, "train", png_order="alphabetical")
    labels59 = copy / "59_labels.txt"
    labels59.write_text(labels59.read_text().replace(": sky", ": unicorn"))
    with pytest.raises(ValueError, match=f"'unicorn' of {re.escape(str(labels59))}.*labels.txt"):
        ContextSource(copy, "train")
    labels59.write_text("".join(f"{i}: {n}\n" for i, n in enumerate(LABELS59_TXT[:58], 1)))
    with pytest.raises(ValueError, match="lists 58 classes, expected the 59"):
        ContextSource(copy, "train")
    shutil.rmtree(copy / "trainval")
    with pytest.raises(FileNotFoundError, match="no PASCAL-Context annotations.*trainval"):
        ContextSource(copy, "train")


def test_datasets_work_unchanged(ctx: Path) -> None:
    src = ContextSource(ctx, "val")
    h, w = src.load_mask(src.ids[0]).shape
    sample = InferenceDataset(src)[0]
    assert sample["image"].shape == (3, h, w) and sample["labels"].shape == (59,)
    assert sample["mask"].shape == (h, w) and sample["raw"].shape == (h, w, 3)
    assert sample["labels"].numpy().tolist() == src.labels(src.ids[0]).tolist()
    sample = ClassificationDataset(src)[0]
    assert sample["image"].shape == (3, h, w) and sample["labels"].shape == (59,)
    assert sample["name"] == src.ids[0]
