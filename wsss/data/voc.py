"""PASCAL VOC 2012 (+ SBD augmented masks) on disk: ids, paths and image-level labels (no torch).

Expected layout (``root`` is ``VOCdevkit/VOC2012``; ``VOCdevkit`` itself is accepted too)::

    <root>/JPEGImages/<id>.jpg
    <root>/Annotations/<id>.xml                  image labels (falls back to the mask)
    <root>/SegmentationClass/<id>.png            official masks, 255 = void
    <root>/SegmentationClassAug/<id>.png         SBD masks (or <root>/../SegmentationClassAug)
    <root>/ImageSets/Segmentation/<split>.txt    (train_aug also in ImageSets/SegmentationAug/)
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss.data.labels import IGNORE, VOC_CLASSES, multi_hot_from_mask
from wsss.data.sources import SourceBase, read_split_ids
from wsss.io import load_label_png, load_rgb

log = logging.getLogger(__name__)

LAYOUT = (
    "expected VOC 2012 layout: <root>/JPEGImages/<id>.jpg, <root>/Annotations/<id>.xml, "
    "<root>/SegmentationClass[Aug]/<id>.png, <root>/ImageSets/Segmentation/<split>.txt "
    "(root = VOCdevkit/VOC2012)"
)
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")


def _resolve_root(root: Path) -> Path:
    if (root / "JPEGImages").is_dir():
        return root
    if (root / "VOC2012" / "JPEGImages").is_dir():  # VOCdevkit given instead of VOCdevkit/VOC2012
        return root / "VOC2012"
    if not root.exists():
        raise FileNotFoundError(f"VOC root not found: {root}; {LAYOUT}")
    raise FileNotFoundError(f"no JPEGImages/ folder under {root}; {LAYOUT}")


_read_split = read_split_ids  # plain ids or '/JPEGImages/x.jpg ...' lines; repeats refused


class VOCSource(SourceBase):
    """Ids, file paths and 20-dim multi-hot image labels of one VOC split.

    Args:
        root: ``VOCdevkit/VOC2012`` (or ``VOCdevkit``).
        split: split name (``train``, ``val``, ``train_aug``, ...) or a path to a ``.txt`` list.
        mask_dir: preferred mask folder (name under root or its parent, or a path); masks missing
            there fall back to the other of SegmentationClassAug / SegmentationClass.
        check_images: stat every image at construction so a missing one fails early.
    """

    def __init__(self, root: str | os.PathLike, split: str,
                 mask_dir: str | os.PathLike = "SegmentationClassAug",
                 check_images: bool = True) -> None:  # fmt: skip
        self.root = _resolve_root(Path(root))
        self.split = str(split)
        self.split_file = self._find_split(self.split)
        self.ids: list[str] = _read_split(self.split_file)
        self.mask_dirs = self._mask_dirs(mask_dir)
        self.class_names: tuple[str, ...] = VOC_CLASSES
        self.num_classes = len(VOC_CLASSES)
        self._labels: dict[str, np.ndarray] = {}  # in-memory cache of parsed labels
        if check_images:
            for name in self.ids:
                self.image_path(name)

    def _find_split(self, split: str) -> Path:
        direct = Path(split)
        if direct.suffix == ".txt" or os.sep in split:
            candidates = [direct if direct.is_absolute() else self.root / direct, direct]
        else:
            candidates = [self.root / "ImageSets" / "Segmentation" / f"{split}.txt",
                          self.root / "ImageSets" / "SegmentationAug" / f"{split}.txt",
                          self.root / f"{split}.txt", self.root.parent / f"{split}.txt",
                          self.root.parent / "ImageSets" / "SegmentationAug" / f"{split}.txt"]  # fmt: skip
        for path in candidates:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"split file for {split!r} not found (tried {tried}); {LAYOUT}")

    def _mask_dirs(self, preferred: str | os.PathLike) -> list[Path]:
        names = [str(preferred)] + [d for d in MASK_DIRS if d != str(preferred)]
        dirs: list[Path] = []
        for name in names:  # SBD masks often live next to VOC2012 inside VOCdevkit/
            for base in (self.root, self.root.parent):
                if (base / name).is_dir():
                    dirs.append(base / name)
                    break
            else:
                if Path(name).is_absolute() and Path(name).is_dir():
                    dirs.append(Path(name))
        return dirs

    def image_path(self, name: str) -> Path:
        path = self.root / "JPEGImages" / f"{name}.jpg"
        if not path.is_file():
            raise FileNotFoundError(
                f"image not found: {path} (listed in {self.split_file}); {LAYOUT}"
            )
        return path

    def has_mask(self, name: str) -> bool:
        return any((d / f"{name}.png").is_file() for d in self.mask_dirs)

    def mask_path(self, name: str) -> Path:
        """GT mask of ``name``: the preferred mask dir first, then the other one."""
        for d in self.mask_dirs:
            if (d / f"{name}.png").is_file():
                return d / f"{name}.png"
        tried = (
            ", ".join(str(d / f"{name}.png") for d in self.mask_dirs) or "no mask folder exists"
        )
        raise FileNotFoundError(f"GT mask for {name} not found (tried {tried}); {LAYOUT}")

    INSTANCE_GT = "SegmentationObject"  # what load_instances reads (reported by the stages)

    def load_instances(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """GT instances from ``SegmentationObject/<id>.png``: masks ``(N, H, W)`` bool and classes
        ``(N,)`` (0..19, the majority class of each object in the semantic mask); None without
        the file (callers then fall back to connected components of the semantic mask)."""
        path = self.root / "SegmentationObject" / f"{name}.png"
        if not path.is_file():
            return None
        objects, semantic = load_label_png(path), self.load_mask(name)
        masks, classes = [], []
        for inst in np.unique(objects).tolist():
            if inst in (0, IGNORE):
                continue
            mask = objects == inst
            values = semantic[mask]
            values = values[(values != 0) & (values != IGNORE)]
            if values.size == 0:
                raise ValueError(f"{path}: object {inst} has no foreground class in {self.mask_path(name)}")
            masks.append(mask)
            classes.append(int(np.bincount(values).argmax()) - 1)
        if not masks:
            return np.zeros((0, *objects.shape), bool), np.zeros(0, np.int64)
        return np.stack(masks), np.asarray(classes, np.int64)

    def annotation_path(self, name: str) -> Path:
        return self.root / "Annotations" / f"{name}.xml"

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return load_rgb(self.image_path(name))  # the whole file decoded; errors name it

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8: 0 background, c + 1 class c, 255 void."""
        return load_label_png(self.mask_path(name))

    def labels(self, name: str) -> np.ndarray:
        """(20,) float32 multi-hot from the XML (difficult objects included), else from the mask."""
        if name not in self._labels:
            xml = self.annotation_path(name)
            if xml.is_file():
                self._labels[name] = parse_voc_xml(xml)
            elif self.has_mask(name):
                self._labels[name] = multi_hot_from_mask(self.load_mask(name), self.num_classes)
            else:
                raise FileNotFoundError(
                    f"no labels for {name}: neither {xml} nor a GT mask exists; {LAYOUT}"
                )
        return self._labels[name].copy()

    def label_matrix(self) -> np.ndarray:
        """(N, 20) float32 labels of every id in split order."""
        return (
            np.stack([self.labels(name) for name in self.ids]) if self.ids else np.zeros((0, 20))
        )


def parse_voc_xml(path: Path, class_names: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """(len(class_names),) float32 multi-hot of the ``<object><name>`` entries of a VOC XML."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"malformed VOC annotation {path}: {err}") from err
    out = np.zeros(len(class_names), dtype=np.float32)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            raise ValueError(
                f"{path}: object name {name!r} is not a VOC class {tuple(class_names)}"
            )
        out[class_names.index(name)] = 1.0
    return out
