"""Convert a VOC-layout tree (e.g. a synthetic one) into the folder format of wsss.data.folder.

Only the VOC classes that occur become classes.txt entries (in VOC order), so class indices and
mask values are remapped. Image files rotate through ``.jpg`` (original bytes), ``.png`` (RGB),
``.jpeg`` (original bytes) and ``.png`` (RGBA, alpha 128): every variant decodes to the same RGB
pixels as the VOC JPEG. Masks alternate between palette (P) and grayscale (L) PNGs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.labels import IGNORE, VOC_CLASSES
from wsss.data.voc import VOCSource
from wsss.io import atomic_path, save_label_png

IMAGE_FORMATS = (".jpg", ".png", ".jpeg", ".png")  # index j % 4; the second .png is RGBA


def voc_sources(voc_root: Path) -> dict[str, VOCSource]:
    """Every split of the tree, masks from SegmentationClass (has 255) falling back to Aug."""
    root = VOCSource(voc_root, "train", check_images=False).root
    splits = sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))
    return {
        p.stem: VOCSource(root, p.stem, mask_dir="SegmentationClass", check_images=False)
        for p in splits
    }


def present_classes(voc_root: Path) -> list[int]:
    """VOC class indices (0..19) labelling at least one image of any split, ascending."""
    sources = voc_sources(voc_root)
    src = next(iter(sources.values()))
    return sorted(
        {int(c) for s in sources.values() for i in s.ids for c in np.flatnonzero(src.labels(i))}
    )


def mask_lut(present: list[int]) -> np.ndarray:
    """(256,) uint8 VOC mask value -> folder mask value (0 and 255 kept; absent classes -> 254)."""
    lut = np.full(256, 254, dtype=np.uint8)  # 254: flags a VOC class without a folder class
    lut[0], lut[IGNORE] = 0, IGNORE
    for k, c in enumerate(present):
        lut[c + 1] = k + 1
    return lut


def write_folder_from_voc(
    voc_root: str | os.PathLike,
    out_root: str | os.PathLike,
    with_masks: bool = True,
    with_splits: bool = True,
    *,
    labels_format: str = "csv",
) -> Path:
    """Write ``out_root`` (images/, classes.txt, labels.csv|json[, splits/][, masks/]).

    Ids are the union of every VOC split, sorted; labels come from the VOC annotations.
    Returns ``out_root``.
    """
    if labels_format not in ("csv", "json"):
        raise ValueError(f"labels_format must be 'csv' or 'json', got {labels_format!r}")
    out = Path(out_root)
    sources = voc_sources(Path(voc_root))
    src = next(iter(sources.values()))
    ids = sorted({i for s in sources.values() for i in s.ids})
    present = present_classes(Path(voc_root))
    names = [VOC_CLASSES[c] for c in present]
    lut = mask_lut(present)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "classes.txt") as tmp:
        tmp.write_text("".join(f"{n}\n" for n in names))

    labels = {i: [VOC_CLASSES[c] for c in np.flatnonzero(src.labels(i))] for i in ids}
    if labels_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "labels"])
        writer.writerows([i, ";".join(labels[i])] for i in ids)
        with atomic_path(out / "labels.csv") as tmp:
            tmp.write_text(buffer.getvalue())
    else:
        with atomic_path(out / "labels.json") as tmp:
            tmp.write_text(json.dumps(labels, indent=1))

    for j, name in enumerate(ids):
        ext = IMAGE_FORMATS[j % 4]
        if ext != ".png":
            shutil.copyfile(src.image_path(name), out / "images" / f"{name}{ext}")
        else:
            image = Image.fromarray(src.load_image(name))
            if j % 4 == 3:
                image.putalpha(128)
            with atomic_path(out / "images" / f"{name}.png") as tmp:
                image.save(tmp, format="PNG")
        if with_masks and src.has_mask(name):
            mask = lut[src.load_mask(name)]
            if (mask == 254).any():
                raise ValueError(f"{name}: mask shows a class that labels no image")
            save_label_png(out / "masks" / f"{name}.png", mask, palette=j % 2 == 0)

    if with_splits:
        for split, s in sources.items():
            with atomic_path(out / "splits" / f"{split}.txt") as tmp:
                tmp.write_text("".join(f"{i}\n" for i in s.ids))
    return out
