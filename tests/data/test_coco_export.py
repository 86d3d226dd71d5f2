"""Instance pseudo-labels as COCO JSON: RLE masks decode back, boxes/areas/categories are right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from wsss.data.coco_export import instance_dir_to_coco, instances_to_coco
from wsss.io import save_npz


def _instances() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masks = np.zeros((3, 6, 8), dtype=bool)
    masks[0, 1:3, 2:5] = True  # 2 x 3 box at x=2, y=1
    masks[1, 4:6, 0:8] = True
    # masks[2] stays empty: dropped (min_area 1)
    return masks, np.array([0, 4], dtype=np.int64).repeat([1, 2]), np.array([0.9, 0.5, 0.1], np.float32)


def test_masks_round_trip_through_pycocotools(tmp_path: Path) -> None:
    masks, classes, scores = _instances()
    coco = instances_to_coco([("2007_000001", masks, classes, scores)], ["cat", "b", "c", "d", "dog"])
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    assert coco["images"] == [{"id": 1, "file_name": "2007_000001.jpg", "height": 6, "width": 8,
                               "wsss_id": "2007_000001"}]
    anns = coco["annotations"]
    assert [a["category_id"] for a in anns] == [1, 5]
    assert anns[0]["bbox"] == [2.0, 1.0, 3.0, 2.0] and anns[0]["area"] == 6.0
    assert anns[1]["score"] == pytest.approx(0.5)
    json.dumps(coco)  # plain JSON (counts are str)
    api = COCO()
    api.dataset = coco
    api.createIndex()
    for ann, mask in zip(anns, masks[:2], strict=True):
        assert np.array_equal(api.annToMask(ann).astype(bool), mask)
        assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)


def test_instance_dir_and_bad_input(tmp_path: Path) -> None:
    masks, classes, scores = _instances()
    save_npz(tmp_path / "instances/a.npz", masks=masks, classes=classes, scores=scores)
    save_npz(tmp_path / "instances/b.npz", masks=masks[:0], classes=classes[:0], scores=scores[:0])
    counts = instance_dir_to_coco(tmp_path / "instances", tmp_path / "coco.json", ["x"] * 5)
    assert counts == {"images": 2, "annotations": 2}
    assert json.loads((tmp_path / "coco.json").read_text())["images"][1]["file_name"] == "b.jpg"
    with pytest.raises(ValueError, match="outside 0..1"):
        instances_to_coco([("a", masks, classes, scores)], ["x", "y"])
    with pytest.raises(ValueError, match="must agree"):
        instances_to_coco([("a", masks, classes[:1], scores)], ["x"] * 5)
