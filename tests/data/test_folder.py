"""FolderSource: a converted VOC tree, splits, error messages, datasets and the --check CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.fake_folder import mask_lut, present_classes, write_folder_from_voc
from wsss.data.datasets import ClassificationDataset, InferenceDataset
from wsss.data.folder import FolderSource, hash_partition
from wsss.data.folder_check import main
from wsss.data.labels import VOC_CLASSES
from wsss.data.transforms import build_eval_transform
from wsss.data.voc import VOCSource
from wsss.io import save_label_png

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def folder(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_from_voc(synthetic_root, tmp_path_factory.mktemp("folder") / "data")


@pytest.fixture()
def copy(folder: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the converted folder."""
    return Path(shutil.copytree(folder, tmp_path / "data"))


def edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_converted_tree_equals_voc_after_remapping(synthetic_root: Path, folder: Path) -> None:
    present = present_classes(synthetic_root)
    assert present != list(range(len(present)))  # indices really move
    lut = mask_lut(present)
    modes, suffixes = set(), set()
    for split in ("train", "val", "train_aug"):
        voc = VOCSource(synthetic_root, split, mask_dir="SegmentationClass")
        src = FolderSource(folder, split)
        assert src.ids == voc.ids and len(src) == len(voc)
        assert src.split_file == folder / "splits" / f"{split}.txt"
        assert src.class_names == tuple(VOC_CLASSES[c] for c in present)
        assert src.num_classes == len(present)
        np.testing.assert_array_equal(src.label_matrix(), voc.label_matrix()[:, present])
        for name in src.ids:
            labels = src.labels(name)
            assert labels.dtype == np.float32 and labels.shape == (len(present),)
            np.testing.assert_array_equal(labels, voc.labels(name)[present])
            image = src.load_image(name)
            assert image.dtype == np.uint8 and image.shape[2] == 3
            np.testing.assert_array_equal(image, voc.load_image(name))
            assert src.has_mask(name) == voc.has_mask(name)
            mask = src.load_mask(name)
            np.testing.assert_array_equal(mask, lut[voc.load_mask(name)])
            assert src.mask_path(name) == folder / "masks" / f"{name}.png"
            suffixes.add(src.image_path(name).suffix)
            with Image.open(src.mask_path(name)) as m:
                modes.add(m.mode)
    assert suffixes == {".jpg", ".jpeg", ".png"} and modes == {"P", "L"}
    val = VOCSource(synthetic_root, "val", mask_dir="SegmentationClass")
    assert (FolderSource(folder, "val").load_mask(val.ids[0]) == 255).any()  # official: void
    assert repr(src).startswith(f"FolderSource(root={str(folder)!r}, split='train_aug'")
    assert src.name(0) == src.ids[0]


def test_csv_and_json_give_identical_sources(
    synthetic_root: Path, folder: Path, tmp_path: Path
) -> None:
    as_json = write_folder_from_voc(synthetic_root, tmp_path / "j", labels_format="json")
    assert not (as_json / "labels.csv").exists()
    for split in ("all", "train", "val"):
        a, b = FolderSource(folder, split), FolderSource(as_json, split)
        assert a.ids == b.ids and a.class_names == b.class_names
        np.testing.assert_array_equal(a.label_matrix(), b.label_matrix())
    assert FolderSource(as_json, "all").split_file == as_json / "labels.json"
    all_src = FolderSource(folder, "all")
    assert all_src.split_file == folder / "labels.csv"
    rows = [line.split(",")[0] for line in (folder / "labels.csv").read_text().splitlines()[1:]]
    assert all_src.ids == rows and len(rows) == 29  # 16 train + 8 val + 5 SBD-only


def test_derived_partition_disjoint_covering_and_stable(
    synthetic_root: Path, tmp_path: Path
) -> None:
    root = write_folder_from_voc(
        synthetic_root, tmp_path / "f", with_masks=False, with_splits=False
    )
    assert not (root / "splits").exists() and not (root / "masks").exists()
    everything = FolderSource(root, "all").ids
    train, val = (FolderSource(root, s, val_fraction=0.3) for s in ("train", "val"))
    assert train.split_file == val.split_file == root / "labels.csv"
    assert not set(train.ids) & set(val.ids)
    assert sorted(train.ids + val.ids) == sorted(everything) and 0 < len(val) < len(train)
    assert (train.ids, val.ids) == hash_partition(everything, 0.3)
    assert FolderSource(root, "val", val_fraction=0.3, seed=1).ids != val.ids
    assert not val.has_mask(val.ids[0])
    # an added image never moves the others
    shutil.copyfile(train.image_path(train.ids[0]), root / "images" / "zz_new.png")
    with (root / "labels.csv").open("a") as f:
        f.write("zz_new,cat\n")
    train2, val2 = (FolderSource(root, s, val_fraction=0.3) for s in ("train", "val"))
    assert [i for i in train2.ids if i != "zz_new"] == train.ids
    assert [i for i in val2.ids if i != "zz_new"] == val.ids
    assert len(train2) + len(val2) == len(everything) + 1
    # the fraction is right on average (sha256: deterministic, so this is not flaky)
    ids = [f"img_{k:05d}" for k in range(5000)]
    tr, va = hash_partition(ids, 0.1)
    assert abs(len(va) / 5000 - 0.1) < 0.015 and sorted(tr + va) == sorted(ids)
    assert hash_partition(ids[:2500], 0.1)[1] == [i for i in va if i in set(ids[:2500])]
    # with one of train.txt / val.txt present nothing is derived
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("".join(f"{i}\n" for i in everything[:5]))
    assert FolderSource(root, "train").ids == everything[:5]
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*splits/val\.txt not found"):
        FolderSource(root, "val")


def test_ids_are_replaceable(folder: Path) -> None:
    src = FolderSource(folder, "val", check_images=False)
    train = FolderSource(folder, "train")
    src.ids = train.ids + src.ids
    assert len(src) == 24
    np.testing.assert_array_equal(
        src.label_matrix(),
        np.concatenate([train.label_matrix(), FolderSource(folder, "val").label_matrix()]),
    )
    name = train.ids[0]
    assert src.image_path(name) == train.image_path(name)
    np.testing.assert_array_equal(src.load_mask(name), train.load_mask(name))


def test_empty_labels_field_and_image_modes(copy: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey16 = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1800).astype(np.uint16)
    Image.fromarray(rgb[..., 0]).save(copy / "images" / "grey.PNG")
    Image.fromarray(grey16).save(copy / "images" / "deep.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(copy / "images" / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    Image.fromarray(rgb).save(copy / "images" / "rot.jpg", exif=exif, quality=95)
    with (copy / "labels.csv").open("a") as f:
        f.write('grey.png,\n deep , cat ;; \nrgba,"cat;person"\nrot,person\n')
    src = FolderSource(copy, "all")
    assert src.ids[-4:] == ["grey", "deep", "rgba", "rot"]
    c = src.class_names
    np.testing.assert_array_equal(src.labels("grey"), np.zeros(len(c), np.float32))
    assert src.labels("deep")[c.index("cat")] == 1 and src.labels("deep").sum() == 1
    assert src.labels("rgba").sum() == 2
    np.testing.assert_array_equal(src.load_image("grey"), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(src.load_image("rgba"), rgb)
    deep = src.load_image("deep")
    assert deep.shape == (5, 7, 3) and deep[0, 0, 0] == 0 and deep[-1, -1, 0] == 238
    assert src.load_image("rot").shape == (7, 5, 3)


def test_unknown_class_names_row_and_valid_classes(copy: Path) -> None:
    csv = copy / "labels.csv"
    name = csv.read_text().splitlines()[2].split(",")[0]
    edit_line(csv, 3, f"{name},cat;unicorn")
    with pytest.raises(
        ValueError,
        match=rf"labels\.csv, line 3 \(image '{name}'\): unknown "
        r"class name 'unicorn'; valid classes are aeroplane, boat",
    ):
        FolderSource(copy, "train")
    edit_line(csv, 3, f'{name},"cat,person"')
    with pytest.raises(ValueError, match="separate class names with ';'"):
        FolderSource(copy, "train")


def test_duplicate_ids(copy: Path) -> None:
    csv = copy / "labels.csv"
    first = csv.read_text().splitlines()[1]
    with csv.open("a") as f:
        f.write(first.replace(",", ".jpg,", 1) + "\n")  # same id spelled with its extension
    name = first.split(",")[0]
    with pytest.raises(
        ValueError,
        match=rf"labels\.csv, line 31: duplicate image id '{name}' "
        r"\(first at .*labels\.csv, line 2\)",
    ):
        FolderSource(copy, "all")
    csv.unlink()
    (copy / "labels.json").write_text(f'{{"{name}": ["cat"], "{name}": []}}')
    with pytest.raises(ValueError, match=rf"labels\.json, key '{name}'.*duplicate image id"):
        FolderSource(copy, "all")
    split = copy / "splits" / "val.txt"
    (copy / "labels.json").write_text(json.dumps({name: []}))
    split.write_text(f"{name}\n\n# comment\n{name}.png\n")
    with pytest.raises(
        ValueError,
        match=rf"val\.txt, line 4: duplicate id '{name}' \(first on "
        r"line 1\)",
    ):
        FolderSource(copy, "val")


def test_split_id_without_labels_row(copy: Path) -> None:
    split = copy / "splits" / "val.txt"
    lines = split.read_text().splitlines()
    split.write_text("\n".join(lines[:2] + ["ghost"] + lines[2:]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"splits/val\.txt, line 3: id 'ghost' has no row in "
        r".*labels\.csv",
    ):
        FolderSource(copy, "val")
    with pytest.raises(
        FileNotFoundError,
        match=r"split 'bogus'.*available splits: all, train, "
        r"train_aug, trainval, val",
    ):
        FolderSource(copy, "bogus")


def test_missing_image_and_mask(copy: Path) -> None:
    src = FolderSource(copy, "val")
    name = src.ids[1]
    src.image_path(name).unlink()
    expected = re.escape(f"{copy}/images/{name}.<jpg|jpeg|png>")
    with pytest.raises(
        FileNotFoundError,
        match=rf"1 of 8 images listed in .*val\.txt not found: "
        rf"{expected}",
    ):
        FolderSource(copy, "val")
    with pytest.raises(FileNotFoundError, match=expected):
        src.load_image(name)
    assert len(FolderSource(copy, "val", check_images=False)) == 8
    (copy / "masks" / f"{name}.png").unlink()
    assert not src.has_mask(name)
    with pytest.raises(
        FileNotFoundError,
        match=rf"GT mask for {name} not found \(tried "
        rf"{re.escape(str(copy))}/masks/{name}\.png\)",
    ):
        src.mask_path(name)
    other = src.ids[0]
    shutil.copyfile(src.image_path(other), copy / "images" / f"{other}.JPEG")  # a.png + a.JPEG
    with pytest.raises(ValueError, match=rf"several images for id '{other}'"):
        FolderSource(copy, "val", check_images=False).image_path(other)


def test_bad_classes_txt(copy: Path) -> None:
    classes = copy / "classes.txt"
    names = classes.read_text().split()
    classes.write_text("\n".join([*names[:3], names[1], *names[3:]]) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"classes\.txt, line 4: duplicate class name "
        rf"'{names[1]}' \(already on line 2\)",
    ):
        FolderSource(copy, "train")
    classes.write_text("background\n" + "\n".join(names))
    with pytest.raises(ValueError, match=r"line 1: 'background': list foreground classes only"):
        FolderSource(copy, "train")
    classes.write_text("".join(f"c{k}\n" for k in range(255)))
    with pytest.raises(ValueError, match=r"lists 255 classes; at most 254"):
        FolderSource(copy, "train")
    (copy / "labels.json").write_text("{}")
    classes.write_text("\n".join(names))
    with pytest.raises(ValueError, match="both .*labels.csv and .*labels.json exist"):
        FolderSource(copy, "train")


def test_mask_values_beyond_num_classes(copy: Path) -> None:
    src = FolderSource(copy, "val")
    name = src.ids[0]
    mask = src.load_mask(name)
    mask[0, :3] = (src.num_classes + 1, 200, 255)
    save_label_png(copy / "masks" / f"{name}.png", mask, palette=False)
    with pytest.raises(
        ValueError,
        match=rf"masks/{name}\.png: mask values \[{src.num_classes + 1}"
        rf", 200\] are not valid for {src.num_classes} classes",
    ):
        src.load_mask(name)


def test_datasets_work_over_folder_source(folder: Path) -> None:
    src = FolderSource(folder, "val")
    tf = build_eval_transform(mean=MEAN, std=STD)
    sample = InferenceDataset(src, tf)[0]
    h, w = src.load_mask(src.ids[0]).shape
    assert sample["image"].shape == (3, h, w) and sample["image"].dtype == torch.float32
    assert sample["labels"].shape == (src.num_classes,) and sample["name"] == src.ids[0]
    assert sample["mask"].shape == (h, w) and sample["raw"].shape == (h, w, 3)
    np.testing.assert_array_equal(sample["labels"].numpy(), src.labels(src.ids[0]))
    item = ClassificationDataset(src, tf)[1]
    assert (
        item["image"].shape[0] == 3 and item["image"].shape[1:] == src.load_mask(src.ids[1]).shape
    )
    assert item["labels"].shape == (src.num_classes,) and item["index"] == 1


def test_check_cli(folder: Path, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(folder), "--check"]) == 0
    out = capsys.readouterr().out
    n = FolderSource(folder, "all").num_classes
    assert f"OK: 29 labelled images, {n} classes, 29 masks" in out
    assert "train_aug" in out and "person" in out
    cmd = [sys.executable, "-m", "wsss.data.folder", "--root", str(folder), "--check"]
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, check=False)
    assert run.returncode == 0 and f"{n} classes" in run.stdout, run.stderr
    missing = FolderSource(copy, "val").ids[0]
    FolderSource(copy, "val").image_path(missing).unlink()
    csv = copy / "labels.csv"
    name = csv.read_text().splitlines()[2].split(",")[0]
    edit_line(csv, 3, f"{name},unicorn")
    assert main(["--root", str(copy), "--check"]) == 1
    out = " ".join(capsys.readouterr().out.split())  # undo console wrapping
    assert "labels.csv, line 3" in out and "unknown class name 'unicorn'" in out
    assert "1 labelled ids have no image" in out and missing in out
    assert "2 problem(s) found" in out
    assert main(["--root", str(copy / "nowhere"), "--check"]) == 1
    assert "not found" in capsys.readouterr().out
