"""Instance masks as a COCO-format annotation file (RLE masks), e.g. IRNet's instance
pseudo-labels (``make_ins_seg_labels``'s ``instances/<id>.npz``) for training an instance
segmenter (Mask R-CNN and the like), as IRN's ``make_ins_seg_labels`` writes them.

Categories are ``1..C`` (class ``c`` of the dataset -> ``category_id`` ``c + 1``), masks are
uncompressed-then-compressed RLE (``pycocotools.mask.encode``, counts as ``str``), and each
annotation keeps its pseudo-label ``score``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.io import load_npz, write_json


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instances_to_coco(items: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                      class_names: Sequence[str],
                      file_name: Callable[[str], str] = lambda image_id: f"{image_id}.jpg",
                      min_area: int = 1) -> dict[str, Any]:
    """COCO ``{"images", "annotations", "categories"}`` from per-image instances.

    Args:
        items: ``(image_id, masks (N, H, W) bool, classes (N,) int 0..C-1, scores (N,) float)``.
        class_names: the dataset's foreground classes (category ``c + 1`` = ``class_names[c]``).
        file_name: image id -> the ``file_name`` recorded for it.
        min_area: masks with fewer pixels are left out.
    """
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for index, (image_id, masks, classes, scores) in enumerate(items, start=1):
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or len(masks) != len(classes) or len(classes) != len(scores):
            raise ValueError(f"image {image_id!r}: masks (N, H, W), classes (N,) and scores (N,) "
                             f"must agree, got {masks.shape}, {np.shape(classes)}, {np.shape(scores)}")
        height, width = masks.shape[1:]
        images.append({"id": index, "file_name": file_name(image_id), "height": int(height),
                       "width": int(width), "wsss_id": image_id})
        for mask, cls, score in zip(masks, classes, scores, strict=True):
            if int(mask.sum()) < min_area:
                continue
            if not 0 <= int(cls) < len(class_names):
                raise ValueError(f"image {image_id!r}: class {int(cls)} outside 0..{len(class_names) - 1}")
            rle = encode_mask(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": index, "category_id": int(cls) + 1,
                "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
                "score": float(score),
            })
    categories = [{"id": c + 1, "name": name, "supercategory": "object"}
                  for c, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def instance_dir_to_coco(instance_dir: str | Path, out_file: str | Path, class_names: Sequence[str],
                         file_name: Callable[[str], str] = lambda image_id: f"{image_id}.jpg") -> dict:
    """Write ``make_ins_seg_labels``'s ``instances/<id>.npz`` as one COCO JSON; returns counts."""
    paths = sorted(Path(instance_dir).glob("*.npz"))

    def items():
        for path in paths:
            arrays = load_npz(path)
            yield path.stem, arrays["masks"], arrays["classes"], arrays["scores"]

    coco = instances_to_coco(items(), class_names, file_name)
    write_json(out_file, coco)
    return {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
