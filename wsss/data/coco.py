"""MS-COCO 2014 on disk: ids, paths, image-level labels and semantic masks (no torch).

Drop-in for :class:`~wsss.data.voc.VOCSource` (same public interface). Expected layout::

    <root>/train2014/COCO_train2014_<12-digit image id>.jpg
    <root>/val2014/COCO_val2014_<12-digit image id>.jpg
    <root>/annotations/instances_{train,val}2014.json     official instance annotations
    <root>/<mask_dir>/<id>.png                             optional precomputed semantic masks

Conventions (chosen to match common WSSS practice on COCO):

- Class index ``c`` (mask value ``c + 1``) is the rank of the category id among the json's
  categories sorted by id (1..90 with gaps -> 0..79); ``class_names`` follow that order.
- Image labels: every category with an annotation on the image, ``iscrowd`` ones included.
- ``ids`` of ``train2014`` / ``val2014``: images with at least one annotation (crowd counts), by
  image id; unlabelled images are useless for WSSS training. A ``.txt`` split keeps its ids (ids
  without annotations get all-zero labels and an all-background mask).
- Rendered masks: non-crowd instances are painted in decreasing ``area`` (ties: annotation id),
  so small objects stay on top; crowd regions not covered by a non-crowd instance are 255.
- ``mask_dir`` PNGs (0 bg, ``c + 1`` class ``c``, 255 ignore), looked up as
  ``<mask_dir>/<id>.png`` then ``<mask_dir>/<split of id>/<id>.png``, win over rendering.
- Per-id lookups find the split from the id prefix, so ``ids`` may be replaced by ids of both
  splits; each annotation file is parsed at most once per source, lazily, when first needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from wsss.data.labels import IGNORE
from wsss.data.sources import SourceBase, read_split_ids
from wsss.io import load_label_png, load_rgb

log = logging.getLogger(__name__)

LAYOUT = (
    "expected COCO 2014 layout: <root>/train2014/COCO_train2014_<id>.jpg, "
    "<root>/val2014/COCO_val2014_<id>.jpg, <root>/annotations/instances_{train,val}2014.json"
)
SPLIT_ALIASES = {"train": "train2014", "val": "val2014", "train2014": "train2014",
                 "val2014": "val2014"}  # fmt: skip
_ID_RE = re.compile(r"^COCO_(train2014|val2014)_\d+$")

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 official category names in category-id order (contiguous class index order)."""


def split_of_id(name: str) -> str:
    """``train2014`` / ``val2014`` from an id's ``COCO_<split>_`` prefix."""
    match = _ID_RE.match(name)
    if match is None:
        raise ValueError(
            f"{name!r} is not a COCO 2014 image id (expected COCO_train2014_<digits> or "
            f"COCO_val2014_<digits>, the file stem of an image)"
        )
    return match.group(1)


@dataclass
class _Split:
    """One parsed annotation file."""

    path: Path
    coco: COCO
    by_name: dict[str, int]  # file stem -> image id
    annotated: list[str]  # stems with >= 1 annotation, by image id
    class_names: tuple[str, ...]
    class_of_cat: dict[int, int]  # category id -> contiguous class index


def _load_split(path: Path) -> _Split:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}; {LAYOUT}")
    log.info("loading COCO annotations %s", path)
    try:
        with path.open() as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise TypeError(f"top level is a {type(data).__name__}, not an object")
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise KeyError(f"missing keys {missing}")
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        cats = sorted(coco.cats.values(), key=lambda cat: cat["id"])
        by_name = {Path(img["file_name"]).stem: img["id"] for img in coco.imgs.values()}
        unknown = {a["category_id"] for a in coco.anns.values()} - set(coco.cats)
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"malformed COCO annotation file {path}: {err}; expected the official instances "
            f"json with 'images', 'annotations' and 'categories'"
        ) from err
    if not cats:
        raise ValueError(f"COCO annotation file {path} lists no categories")
    if unknown:
        raise ValueError(f"{path}: annotations use category ids {sorted(unknown)} that are not "
                         f"in its 'categories'")  # fmt: skip
    annotated = sorted(i for i in coco.imgs if coco.imgToAnns.get(i))
    return _Split(path, coco, by_name, [Path(coco.imgs[i]["file_name"]).stem for i in annotated],
                  tuple(cat["name"] for cat in cats),
                  {cat["id"]: c for c, cat in enumerate(cats)})  # fmt: skip


_read_split = read_split_ids  # plain ids or '/JPEGImages/x.jpg ...' lines; repeats refused


class COCOSource(SourceBase):
    """Ids, file paths, 80-dim multi-hot labels and semantic masks of a COCO 2014 split.

    Args:
        root: folder holding ``train2014/``, ``val2014/`` and ``annotations/``.
        split: ``train2014`` / ``val2014`` (or ``train`` / ``val``), or a path to a ``.txt`` list
            of ids (file stems) of those splits.
        mask_dir: optional folder of precomputed semantic PNGs (a path or a name under root,
            e.g. ``mask/train2014``); ids without a PNG there get masks rendered from the json.
        check_images: stat every image at construction so a missing one fails early.
    """

    def __init__(self, root: str | os.PathLike, split: str,
                 mask_dir: str | os.PathLike | None = None,
                 check_images: bool = True) -> None:  # fmt: skip
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO root not found: {self.root}; {LAYOUT}")
        self.split = str(split)
        self._splits: dict[str, _Split] = {}  # parsed annotation files, loaded on demand
        self._labels: dict[str, np.ndarray] = {}
        if self.split in SPLIT_ALIASES:
            name = SPLIT_ALIASES[self.split]
            self.split_file = self._annotation_file(name)
            self.ids: list[str] = list(self._split(name).annotated)
            if not self.ids:
                raise ValueError(f"no annotated images in {self.split_file}")
        else:
            self.split_file = self._find_list(self.split)
            self.ids = _read_split(self.split_file)
            for name in self.ids:  # validates every id against its annotation file
                self._record(name, listed_in=self.split_file)
        first = self._split(split_of_id(self.ids[0]))
        self.class_names: tuple[str, ...] = first.class_names
        self.num_classes = len(self.class_names)
        self.mask_dir = self._resolve_mask_dir(mask_dir) if mask_dir is not None else None
        if check_images:
            for name in self.ids:
                self.image_path(name)

    # ------------------------------------------------------------------ resolution
    def _annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def _find_list(self, split: str) -> Path:
        direct = Path(split)
        if direct.suffix == ".txt" or os.sep in split:
            candidates = [direct] if direct.is_absolute() else [self.root / direct, direct]
        else:
            candidates = [self.root / f"{split}.txt"]
        for path in candidates:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(
            f"split {split!r} is neither one of {sorted(SPLIT_ALIASES)} nor an existing .txt "
            f"list of ids (tried {tried}); {LAYOUT}"
        )

    def _resolve_mask_dir(self, mask_dir: str | os.PathLike) -> Path:
        path = Path(mask_dir)
        candidates = [path] if path.is_absolute() else [self.root / path, path]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"mask_dir not found (tried {tried})")

    def _split(self, split: str) -> _Split:
        """Parsed annotation file of ``split``; a second file must use the same categories."""
        if split not in self._splits:
            parsed = _load_split(self._annotation_file(split))
            for other in self._splits.values():
                if other.class_names != parsed.class_names:
                    raise ValueError(f"{parsed.path} and {other.path} list different categories")
            self._splits[split] = parsed
        return self._splits[split]

    def _record(self, name: str, listed_in: Path | None = None) -> tuple[_Split, dict[str, Any]]:
        """(parsed annotation file, image record) of an id of either split."""
        split = self._split(split_of_id(name))
        image_id = split.by_name.get(name)
        if image_id is None:
            where = f" (listed in {listed_in})" if listed_in is not None else ""
            raise ValueError(f"image id {name}{where} is not in {split.path}")
        return split, split.coco.imgs[image_id]

    # ------------------------------------------------------------------ VOCSource interface
    def image_path(self, name: str) -> Path:
        _, record = self._record(name)
        path = self.root / split_of_id(name) / record["file_name"]
        if not path.is_file():
            raise FileNotFoundError(
                f"image not found: {path} (listed in {self.split_file}); {LAYOUT}"
            )
        return path

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return load_rgb(self.image_path(name))  # COCO has some grey JPEGs

    def _mask_candidates(self, name: str) -> list[Path]:
        if self.mask_dir is None:
            return []
        return [self.mask_dir / f"{name}.png", self.mask_dir / split_of_id(name) / f"{name}.png"]

    def has_mask(self, name: str) -> bool:
        """True when a precomputed PNG exists or the id's mask can be rendered from its json."""
        try:
            if any(path.is_file() for path in self._mask_candidates(name)):
                return True
            self._record(name)
        except (ValueError, FileNotFoundError):  # not a COCO id / not in its annotation file
            return False
        return True

    def mask_path(self, name: str) -> Path:
        """Precomputed PNG of ``name`` (``load_mask`` renders from the json when there is none)."""
        candidates = self._mask_candidates(name)
        for path in candidates:
            if path.is_file():
                return path
        if not candidates:
            raise FileNotFoundError(
                f"no precomputed mask for {name}: this COCOSource has no mask_dir "
                f"(load_mask renders masks from the instance annotations)"
            )
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"precomputed mask for {name} not found (tried {tried})")

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8: 0 background, c + 1 class c, 255 ignore (crowd regions)."""
        for path in self._mask_candidates(name):
            if path.is_file():
                return load_label_png(path)
        return self.render_mask(name)

    def render_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8 mask from the instance annotations (see the module docstring)."""
        split, record = self._record(name)
        coco = split.coco
        mask = np.zeros((record["height"], record["width"]), dtype=np.uint8)
        covered = np.zeros(mask.shape, dtype=bool)
        crowd = np.zeros(mask.shape, dtype=bool)
        anns = sorted(coco.imgToAnns.get(record["id"], []), key=lambda a: (-a["area"], a["id"]))
        for ann in anns:
            pixels = coco.annToMask(ann).astype(bool)
            if pixels.shape != mask.shape:
                raise ValueError(f"annotation {ann['id']} of {name} in {split.path} has size "
                                 f"{pixels.shape}, image record says {mask.shape}")  # fmt: skip
            if ann.get("iscrowd", 0):
                crowd |= pixels
            else:
                mask[pixels] = split.class_of_cat[ann["category_id"]] + 1
                covered |= pixels
        mask[crowd & ~covered] = IGNORE
        return mask

    INSTANCE_GT = "annotations"  # what load_instances reads (reported by the stages)

    def load_instances(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """GT instances from the annotations: non-crowd masks ``(N, H, W)`` bool and contiguous
        classes ``(N,)``, in annotation-id order (crowd regions are not instances)."""
        split, record = self._record(name)
        anns = sorted((a for a in split.coco.imgToAnns.get(record["id"], []) if not a.get("iscrowd", 0)),
                      key=lambda a: a["id"])  # fmt: skip
        shape = (record["height"], record["width"])
        if not anns:
            return np.zeros((0, *shape), bool), np.zeros(0, np.int64)
        masks = np.stack([split.coco.annToMask(a).astype(bool) for a in anns])
        classes = np.asarray([split.class_of_cat[a["category_id"]] for a in anns], np.int64)
        return masks, classes

    def labels(self, name: str) -> np.ndarray:
        """(80,) float32 multi-hot of the categories annotated on the image (crowd included)."""
        if name not in self._labels:
            split, record = self._record(name)
            out = np.zeros(self.num_classes, dtype=np.float32)
            for ann in split.coco.imgToAnns.get(record["id"], []):
                out[split.class_of_cat[ann["category_id"]]] = 1.0
            self._labels[name] = out
        return self._labels[name].copy()

