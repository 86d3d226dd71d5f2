"""Unsupervised saliency cache: values, files, caching, CLI, and that datasets read it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2.saliency", reason="needs opencv-contrib-python-headless")

from wsss.data.datasets import ClassificationDataset
from wsss.data.saliency import compute_saliency, generate_saliency, image_ids, main
from wsss.data.transforms import build_eval_transform
from wsss.data.voc import VOCSource
from wsss.io import load_label_png


@pytest.mark.parametrize("method", ["spectral_residual", "fine_grained"])
def test_an_odd_patch_is_more_salient_than_the_background(method) -> None:
    rng = np.random.default_rng(0)
    image = np.full((96, 128, 3), 120, np.uint8) + rng.integers(0, 4, (96, 128, 3), dtype=np.uint8)
    image[36:60, 52:76] = (240, 20, 20)
    sal = compute_saliency(image, method)
    assert sal.shape == (96, 128) and sal.dtype == np.uint8 and sal.max() == 255
    # spectral residual fires on the patch borders, so look at the patch and its rim
    assert sal[30:66, 46:82].mean() > 2 * sal[:16, :16].mean()


def test_unknown_method_and_bad_image_are_rejected() -> None:
    with pytest.raises(ValueError, match="saliency method"):
        compute_saliency(np.zeros((8, 8, 3), np.uint8), "magic")
    with pytest.raises(ValueError, match="RGB"):
        compute_saliency(np.zeros((8, 8), np.uint8))


def test_cache_is_written_once_and_read_by_the_dataset(synthetic_root, tmp_path) -> None:
    out = tmp_path / "sal"
    first = generate_saliency(synthetic_root, out, splits=["train"])
    ids, _ = image_ids(synthetic_root, ["train"])
    assert first == {"written": len(ids), "skipped": 0}
    again = generate_saliency(synthetic_root, out, splits=["train"])
    assert again == {"written": 0, "skipped": len(ids)}
    sample_id = ids[0]
    with Image.open(synthetic_root / "JPEGImages" / f"{sample_id}.jpg") as image:
        size = image.size[::-1]
    assert load_label_png(out / f"{sample_id}.png").shape == size
    ds = ClassificationDataset(VOCSource(synthetic_root, "train"),
                               build_eval_transform(mean=[0.5] * 3, std=[0.5] * 3), out)
    sal = ds[0]["saliency"]
    assert sal.shape == (1, *size) and 0 <= sal.min() and sal.max() <= 1


def test_cli_covers_every_image_by_default(synthetic_root, tmp_path, capsys) -> None:
    main(["--root", str(synthetic_root), "--out", str(tmp_path / "all"), "--method", "fine_grained"])
    n = len(list((synthetic_root / "JPEGImages").glob("*.jpg")))
    assert len(list((tmp_path / "all").glob("*.png"))) == n
    assert f"{n} written" in capsys.readouterr().out


def test_cli_reads_other_dataset_formats(synthetic_root, tmp_path) -> None:
    from tests.data.fake_coco import write_coco_from_voc
    from wsss.data.coco import COCOSource

    coco = write_coco_from_voc(synthetic_root, tmp_path / "coco")
    main(["--root", str(coco), "--dataset", "coco", "--out", str(tmp_path / "sal")])
    ids = COCOSource(coco, "train2014").ids + COCOSource(coco, "val2014").ids
    written = sorted(p.stem for p in (tmp_path / "sal").glob("*.png"))
    assert written == sorted(ids)
    image = COCOSource(coco, "train2014").load_image(ids[0])
    assert np.array_equal(load_label_png(tmp_path / "sal" / f"{ids[0]}.png"),
                          compute_saliency(image))
