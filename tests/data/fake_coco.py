"""A small MS-COCO 2014 tree in the official on-disk format, converted from a VOC-layout tree.

VOC ``train`` / ``val`` images become ``train2014`` / ``val2014``; every connected component of a
class in ``SegmentationClass`` becomes one instance (void pixels dropped) with a compressed RLE
(string counts), except the first instance of each split, which is ``iscrowd=1`` with an
uncompressed RLE (list counts), exactly like crowd annotations of the real files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from wsss.io import load_label_png

# (id, name, supercategory) of the 80 official COCO categories.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"),
    (23, "bear", "animal"), (24, "zebra", "animal"), (25, "giraffe", "animal"),
    (27, "backpack", "accessory"), (28, "umbrella", "accessory"), (31, "handbag", "accessory"),
    (32, "tie", "accessory"), (33, "suitcase", "accessory"), (34, "frisbee", "sports"),
    (35, "skis", "sports"), (36, "snowboard", "sports"), (37, "sports ball", "sports"),
    (38, "kite", "sports"), (39, "baseball bat", "sports"), (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"), (42, "surfboard", "sports"), (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"), (47, "cup", "kitchen"),
    (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"),
    (57, "carrot", "food"), (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"),
    (61, "cake", "food"), (62, "chair", "furniture"), (63, "couch", "furniture"),
    (64, "potted plant", "furniture"), (65, "bed", "furniture"), (67, "dining table", "furniture"),
    (70, "toilet", "furniture"), (72, "tv", "electronic"), (73, "laptop", "electronic"),
    (74, "mouse", "electronic"), (75, "remote", "electronic"), (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"), (78, "microwave", "appliance"), (79, "oven", "appliance"),
    (80, "toaster", "appliance"), (81, "sink", "appliance"), (82, "refrigerator", "appliance"),
    (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)  # fmt: skip

VOC_TO_COCO: dict[str, str] = {
    "aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
    "diningtable": "dining table", "pottedplant": "potted plant",
}  # fmt: skip
SPLITS = {"train": "train2014", "val": "val2014"}  # VOC split -> COCO split


def coco_name(voc_class: str) -> str:
    """COCO category name of a VOC class."""
    return VOC_TO_COCO.get(voc_class, voc_class)


def category_id(name: str) -> int:
    return next(cid for cid, cname, _ in COCO_CATEGORIES if cname == name)


def image_id(voc_id: str) -> int:
    """Numeric COCO image id of a VOC id ``YYYY_NNNNNN`` (unique across splits)."""
    return int(voc_id.replace("_", ""))


def coco_stem(voc_id: str, voc_split: str) -> str:
    """File stem (= COCOSource id) of the converted image, e.g. ``COCO_train2014_002007000003``."""
    return f"COCO_{SPLITS[voc_split]}_{image_id(voc_id):012d}"


def compressed_rle(binary: np.ndarray) -> dict[str, Any]:
    """{'size': [h, w], 'counts': str} of an (H, W) bool mask (as in COCO result files)."""
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(binary: np.ndarray) -> dict[str, Any]:
    """{'size': [h, w], 'counts': [int, ...]}: column-major run lengths starting with zeros."""
    flat = binary.ravel(order="F").astype(np.uint8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(s) for s in binary.shape], "counts": [int(c) for c in counts]}


def _annotation(ann_id: int, img_id: int, cat_id: int, binary: np.ndarray,
                crowd: bool) -> dict[str, Any]:  # fmt: skip
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {
        "id": ann_id, "image_id": img_id, "category_id": cat_id, "iscrowd": int(crowd),
        "segmentation": uncompressed_rle(binary) if crowd else compressed_rle(binary),
        "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
    }  # fmt: skip


def write_coco_from_voc(voc_root: Path, out_root: Path) -> Path:
    """Convert the ``train`` / ``val`` splits of a VOC tree (``VOCdevkit/VOC2012``) into the
    official COCO 2014 layout under ``out_root`` (see :mod:`wsss.data.coco`). Returns out_root."""
    from wsss.data.labels import VOC_CLASSES

    voc_root, out_root = Path(voc_root), Path(out_root)
    categories = [{"id": cid, "name": name, "supercategory": sup}
                  for cid, name, sup in COCO_CATEGORIES]  # fmt: skip
    ann_id = 1  # annotation ids are unique across both files, like the real ones
    for voc_split, split in SPLITS.items():
        names = (voc_root / "ImageSets" / "Segmentation" / f"{voc_split}.txt").read_text().split()
        (out_root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for name in names:
            img_id, stem = image_id(name), coco_stem(name, voc_split)
            shutil.copyfile(
                voc_root / "JPEGImages" / f"{name}.jpg", out_root / split / f"{stem}.jpg"
            )
            voc = load_label_png(voc_root / "SegmentationClass" / f"{name}.png")
            images.append({"id": img_id, "file_name": f"{stem}.jpg", "height": int(voc.shape[0]),
                           "width": int(voc.shape[1]), "license": 1, "coco_url": "",
                           "flickr_url": "", "date_captured": "2013-11-14 16:28:13"})  # fmt: skip
            for value in np.unique(voc):
                if value in (0, 255):
                    continue
                cat_id = category_id(coco_name(VOC_CLASSES[value - 1]))
                components, n = ndimage.label(voc == value)
                for k in range(1, n + 1):
                    crowd = not annotations  # the first instance of the split
                    annotations.append(_annotation(ann_id, img_id, cat_id, components == k, crowd))
                    ann_id += 1
        data = {
            "info": {"description": "fake COCO 2014 converted from a VOC tree", "year": 2014},
            "licenses": [{"id": 1, "name": "test", "url": ""}],
            "images": images[::-1],  # not sorted by id, so readers must sort
            "annotations": annotations, "categories": categories,
        }  # fmt: skip
        (out_root / "annotations").mkdir(parents=True, exist_ok=True)
        (out_root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return out_root
