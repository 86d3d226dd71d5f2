"""VOCDataModule and datasets: batch shapes / dtypes per mode, pseudo labels, saliency, errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsss.data.datamodule import VOCDataModule
from wsss.data.datasets import InferenceDataset, SegmentationDataset, collate_single
from wsss.data.synthetic import generate_voc
from wsss.data.transforms import build_eval_transform
from wsss.data.voc import VOCSource
from wsss.io import save_label_png

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    return generate_voc(root, 12, 4, image_size=(80, 60), seed=2, progress=False)


def make_dm(voc: Path, mode: str, **kw: Any) -> VOCDataModule:
    args = {"root": voc, "train_split": "train_aug", "val_split": "val", "mask_dir": "SegmentationClassAug",
                "batch_size": 4, "num_workers": 0, "crop_size": 48, "scale_range": (0.7, 1.3),
                "color_jitter": {"brightness": 0.3, "contrast": 0.3}, "mean": MEAN, "std": STD, "mode": mode}  # fmt: skip
    args.update(kw)
    return VOCDataModule(**args)


def test_classification_batches(voc: Path) -> None:
    dm = make_dm(voc, "classification", saliency_dir="SALImages")
    dm.setup("fit")
    source = VOCSource(voc, "train_aug")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(source) // 4  # drop_last
    batch = batches[0]
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["labels"].shape == (4, 20) and batch["labels"].dtype == torch.float32
    assert batch["saliency"].shape == (4, 1, 48, 48)
    assert 0 <= batch["saliency"].min() and batch["saliency"].max() <= 1
    assert batch["index"].dtype == torch.int64 and len(batch["name"]) == 4
    for i, name in enumerate(batch["name"]):
        assert source.ids[int(batch["index"][i])] == name
        np.testing.assert_array_equal(batch["labels"][i].numpy(), source.labels(name))
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, 48, 48) and val["labels"].shape == (4, 20)
    assert "mask" not in val
    assert "saliency" not in val  # a training-only input: maps need not cover the val split


def test_classification_val_needs_no_saliency_maps(voc: Path, tmp_path: Path) -> None:
    """Saliency maps of the training split only (make_cam_saliency's output) are enough."""
    maps = tmp_path / "train_only"
    for name in VOCSource(voc, "train_aug").ids:
        (maps / f"{name}.png").parent.mkdir(exist_ok=True)
        (maps / f"{name}.png").write_bytes((voc / "SALImages" / f"{name}.png").read_bytes())
    dm = make_dm(voc, "classification", saliency_dir=maps)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["saliency"].shape == (4, 1, 48, 48)
    assert len(list(dm.val_dataloader())) == 1  # the 4 val images have no map and none is read


def test_segmentation_batches_and_full_size_val(voc: Path) -> None:
    dm = make_dm(voc, "segmentation", val_mask_dir="SegmentationClass", num_workers=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48)
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= set(range(21)) | {255}
    loader = dm.val_dataloader()
    assert loader.persistent_workers and loader.batch_size == 1
    vals = list(loader)
    assert len(vals) == 4
    for val in vals:
        h, w = val["size"]
        assert val["image"].shape == (1, 3, h, w) and val["raw"].shape == (1, h, w, 3)
        assert val["raw"].dtype == torch.uint8 and val["mask"].shape == (1, h, w)
        assert (val["mask"] == 255).any()  # SegmentationClass (void band) for evaluation
        assert isinstance(val["name"], list) and len(val["name"]) == 1
        raw = torch.from_numpy(VOCSource(voc, "val").load_image(val["name"][0]))
        expected = (raw.permute(2, 0, 1).float() / 255 - torch.tensor(MEAN)[:, None, None]) / (
            torch.tensor(STD)[:, None, None])  # fmt: skip
        torch.testing.assert_close(val["image"][0], expected)
    assert len(dm.predict_dataloader("train_aug")) == len(VOCSource(voc, "train_aug"))


def test_pseudo_labels_from_label_dir(voc: Path, tmp_path: Path) -> None:
    source = VOCSource(voc, "train")
    for k, name in enumerate(source.ids):  # constant pseudo label k % 3 per image
        shape = source.load_mask(name).shape
        save_label_png(tmp_path / f"{name}.png", np.full(shape, k % 3, np.uint8))
    ds = SegmentationDataset(source, build_eval_transform(mean=MEAN, std=STD), label_dir=tmp_path)
    for k in range(len(ds)):
        sample = ds[k]
        assert sample["mask"].dtype == torch.int64 and (sample["mask"] == k % 3).all()
    missing = tmp_path / f"{source.ids[0]}.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ds[0]


def test_inference_dataset_mask_options_and_collate(voc: Path) -> None:
    src = VOCSource(voc, "train_aug", mask_dir="SegmentationClass")
    tf = build_eval_transform(mean=MEAN, std=STD)
    assert "mask" not in InferenceDataset(src, tf, with_mask=False)[0]
    sample = InferenceDataset(src, tf, with_mask=None, saliency_dir=voc / "SALImages")[0]
    h, w = sample["size"]
    assert sample["mask"].shape == (h, w) and sample["saliency"].shape == (1, h, w)
    batch = collate_single([sample])
    assert batch["image"].shape == (1, 3, h, w) and batch["size"] == (h, w)
    assert batch["index"].tolist() == [0] and batch["name"] == [sample["name"]]
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_single([sample, sample])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        InferenceDataset(src, tf, saliency_dir=voc / "nowhere")


def test_bad_mode_and_missing_root(tmp_path: Path, voc: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        make_dm(voc, "detection")
    dm = make_dm(tmp_path / "missing", "classification")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        dm.setup("fit")
