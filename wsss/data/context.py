"""PASCAL-Context (59 frequent classes + background) on disk: ids, paths, masks, labels (no torch).

Drop-in for :class:`~wsss.data.voc.VOCSource` (same public interface). Expected layout::

    <root>/JPEGImages/<id>.jpg                          root = VOCdevkit/VOC2010 (or VOCdevkit)
    <root>/ImageSets/Main/{train,val}.txt               Context train 4998 / val 5105 ids
    <root>/ImageSets/SegmentationContext/<split>.txt    mmseg layout (searched first)
    <context_dir>/trainval/<id>.mat                     the release: ``LabelMap`` (H, W), values
                                                        are 1-based labels.txt indices
    <context_dir>/labels.txt                            459 lines ``idx: name``
    <context_dir>/59_labels.txt                         the 59 frequent classes, ``idx: name``
    <root>/<mask_dir>/<id>.png                          optional converted masks (mmseg's
                                                        SegmentationClassContext)

``context_dir`` defaults to ``root`` when it holds ``trainval/``, else to root's parent. VOC2010's
own ``ImageSets/Segmentation`` lists (964 images) are not Context splits and are never read.

Conventions (masks follow :mod:`wsss.data.labels`: 0 background, ``c + 1`` class c, 255 ignore):

- ``class_names``: the 59 classes in ``59_labels.txt`` order (the release lists the 20 VOC
  classes first: :data:`CONTEXT59_CLASSES`), spelled as in labels.txt: the release's
  59_labels.txt writes ``diningtable``, ``clothes`` and ``bedcloth`` for labels.txt's ``table``,
  ``cloth`` and ``bedclothes`` (:data:`NAME_ALIASES`). Either file may be absent; the built-in
  tables (same content as the release) stand in for it.
- ``.mat`` masks: the 59 classes get ``1..59``; every other labelled pixel (the ~400 rare classes)
  is background 0; ``LabelMap`` 0 (unlabelled) is 255 ignore. (mmseg / detail-api conversions
  put unlabelled pixels into background instead.)
- ``mask_dir`` PNGs take precedence over ``.mat`` files (per id, ids without one fall back).
  ``png_order="mmseg"`` (default) reads mmseg / detail-api conversions: value ``k`` in 1..59 is
  the k-th of the 59 classes sorted by labels.txt index (alphabetical, mmseg's
  ``PascalContextDataset59.CLASSES``), 0 is background *including* unlabelled pixels, and values
  are remapped into ``class_names`` order. ``png_order="class_names"`` reads PNGs already in
  ``class_names`` order (FCN-style conversions). 255 stays ignore either way.
- Image labels: the multi-hot of the mask (Context has no XML), cached per id.
- Per-id lookups use only the id, so ``ids`` may be replaced (e.g. by train + val ids).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.io

from wsss.data.labels import BACKGROUND, IGNORE, multi_hot_from_mask
from wsss.data.sources import SourceBase, read_split_ids
from wsss.io import load_label_png, load_rgb, read_text

log = logging.getLogger(__name__)

LAYOUT = (
    "expected PASCAL-Context layout: <root>/JPEGImages/<id>.jpg, "
    "<root>/ImageSets/{Main,SegmentationContext}/<split>.txt (root = VOCdevkit/VOC2010), "
    "<context_dir>/trainval/<id>.mat with 'LabelMap', <context_dir>/labels.txt and "
    "<context_dir>/59_labels.txt (context_dir = root or its parent unless given), or "
    "<root>/<mask_dir>/<id>.png"
)
PNG_ORDERS = ("mmseg", "class_names")

CONTEXT59_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain",
    "mouse", "curtain", "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky",
    "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood",
)  # fmt: skip
"""The 59 classes in the release's 59_labels.txt order, with labels.txt spellings."""

CONTEXT59_LABEL_INDEX: tuple[int, ...] = (
    2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427, 9, 18,
    22, 33, 44, 46, 68, 80, 85, 104, 115, 144, 158, 159, 162, 187, 189, 220, 232, 259, 260, 105,
    296, 355, 295, 324, 326, 349, 354, 360, 366, 19, 415, 420, 424, 440, 445, 454, 458,
)  # fmt: skip
"""The release's labels.txt index (1-based) of each class of :data:`CONTEXT59_CLASSES`."""

NAME_ALIASES: dict[str, str] = {"diningtable": "table", "clothes": "cloth",
                                "bedcloth": "bedclothes"}  # fmt: skip
"""59_labels.txt spelling -> labels.txt spelling, where the release's two files disagree."""


def _key(name: str) -> str:
    """Lookup key of a class name: case and whitespace do not matter."""
    return "".join(name.lower().split())


def _resolve_root(root: Path) -> Path:
    if (root / "JPEGImages").is_dir():
        return root
    if (root / "VOC2010" / "JPEGImages").is_dir():  # VOCdevkit given instead of VOCdevkit/VOC2010
        return root / "VOC2010"
    if not root.exists():
        raise FileNotFoundError(f"PASCAL-Context root not found: {root}; {LAYOUT}")
    raise FileNotFoundError(f"no JPEGImages/ folder under {root}; {LAYOUT}")


_read_split = read_split_ids  # plain ids or '/JPEGImages/x.jpg ...' lines; repeats refused


def _read_name_list(path: Path) -> list[tuple[int, str]]:
    """(index, name) of a labels file: ``idx: name`` lines, or bare names indexed 1, 2, ... ."""
    entries: list[tuple[int, str]] = []
    for lineno, raw in enumerate(read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        head, sep, tail = line.partition(":")
        if not sep:
            entries.append((len(entries) + 1, line))
        elif head.strip().isdigit() and tail.strip():
            entries.append((int(head), tail.strip()))
        else:
            raise ValueError(f"{path}:{lineno}: expected 'idx: name' or a bare name, got {raw!r}")
    if not entries:
        raise ValueError(f"{path} lists no classes")
    indices = [i for i, _ in entries]
    if min(indices) < 1 or len(set(indices)) != len(indices):
        raise ValueError(f"{path}: class indices must be unique and >= 1 (1-based)")
    return sorted(entries)


def _label_index(labels_txt: Path | None) -> tuple[dict[str, int], dict[str, str], int]:
    """(key -> labels.txt index, key -> labels.txt name, largest index) of labels.txt."""
    if labels_txt is None:  # the release's entries for the 59 classes are all that is needed
        entries = list(zip(CONTEXT59_LABEL_INDEX, CONTEXT59_CLASSES))
        largest = 459
    else:
        entries = _read_name_list(labels_txt)
        largest = entries[-1][0]
    index: dict[str, int] = {}
    names: dict[str, str] = {}
    for i, name in entries:
        if _key(name) in index:
            raise ValueError(f"{labels_txt}: class {name!r} is listed twice")
        index[_key(name)], names[_key(name)] = i, name
    return index, names, largest


class ContextSource(SourceBase):
    """Ids, file paths, 59-class masks and 59-dim multi-hot labels of one PASCAL-Context split.

    Args:
        root: ``VOCdevkit/VOC2010`` (or ``VOCdevkit``).
        split: split name (``train``, ``val``, ...) or a path to a ``.txt`` list of ids.
        mask_dir: optional folder of converted PNG masks (a path, or a name under root or its
            parent, e.g. ``SegmentationClassContext``); they win over the ``.mat`` files.
        check_images: stat every image at construction so a missing one fails early.
        context_dir: folder holding the release's ``trainval/``, ``labels.txt`` and
            ``59_labels.txt`` (a path, or a name under root or its parent); default: root if it
            holds ``trainval/``, else root's parent.
        png_order: class order of the ``mask_dir`` PNGs, ``mmseg`` or ``class_names`` (see the
            module docstring).
    """

    def __init__(self, root: str | os.PathLike, split: str,
                 mask_dir: str | os.PathLike | None = None, check_images: bool = True,
                 context_dir: str | os.PathLike | None = None, *,
                 png_order: str = "mmseg") -> None:  # fmt: skip
        self.root = _resolve_root(Path(root))
        self.split = str(split)
        self.split_file = self._find_split(self.split)
        self.ids: list[str] = _read_split(self.split_file)
        if png_order not in PNG_ORDERS:
            raise ValueError(f"png_order must be one of {PNG_ORDERS}, got {png_order!r}")
        self.png_order = png_order
        self.mask_dir = self._find_dir(mask_dir, "mask_dir") if mask_dir is not None else None
        self.context_dir = self._find_context_dir(context_dir)
        self.mat_dir: Path | None = None
        if self.context_dir is not None:
            trainval = self.context_dir / "trainval"
            self.mat_dir = trainval if trainval.is_dir() else self.context_dir
        if self.mat_dir is None and self.mask_dir is None:
            raise FileNotFoundError(
                f"no PASCAL-Context annotations for {self.root}: neither {self.root / 'trainval'}"
                f" nor {self.root.parent / 'trainval'} exists and no mask_dir is given; pass "
                f"context_dir=<folder holding trainval/> or mask_dir=<folder of PNGs>; {LAYOUT}"
            )
        self.labels_file = self._find_file("labels.txt")
        self.labels59_file = self._find_file("59_labels.txt")
        self.class_names, label_index, largest = self._load_classes()
        self.num_classes = len(self.class_names)
        self._mat_lut = self._build_mat_lut(label_index, largest)
        self._png_lut = self._build_png_lut(label_index)
        self._labels: dict[str, np.ndarray] = {}  # in-memory cache of mask-derived labels
        if check_images:
            for name in self.ids:
                self.image_path(name)

    # ------------------------------------------------------------------ resolution
    def _find_split(self, split: str) -> Path:
        direct = Path(split)
        if direct.suffix == ".txt" or os.sep in split:
            candidates = [direct if direct.is_absolute() else self.root / direct, direct]
        else:
            sets = self.root / "ImageSets"
            candidates = [sets / "SegmentationContext" / f"{split}.txt",
                          sets / "Main" / f"{split}.txt", self.root / f"{split}.txt"]  # fmt: skip
        for path in candidates:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"split file for {split!r} not found (tried {tried}); {LAYOUT}")

    def _find_dir(self, directory: str | os.PathLike, what: str) -> Path:
        path = Path(directory)
        candidates = [path] if path.is_absolute() else [self.root / path,
                                                        self.root.parent / path, path]  # fmt: skip
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"{what} not found (tried {tried}); {LAYOUT}")

    def _find_context_dir(self, context_dir: str | os.PathLike | None) -> Path | None:
        if context_dir is not None:
            return self._find_dir(context_dir, "context_dir")
        for base in (self.root, self.root.parent):
            if (base / "trainval").is_dir():
                return base
        return None

    def _find_file(self, filename: str) -> Path | None:
        """A release text file next to trainval/ (or in root / its parent); None if absent."""
        bases = [self.context_dir, self.mat_dir.parent if self.mat_dir else None,
                 self.root, self.root.parent]  # fmt: skip
        for base in dict.fromkeys(b for b in bases if b is not None):
            if (base / filename).is_file():
                return base / filename
        return None

    # ------------------------------------------------------------------ class tables
    def _load_classes(self) -> tuple[tuple[str, ...], np.ndarray, int]:
        """(59 names in 59_labels.txt order, their labels.txt indices (59,), largest index)."""
        index, names, largest = _label_index(self.labels_file)
        labels_src = self.labels_file or "the built-in labels.txt entries"
        if self.labels59_file is None:
            wanted = list(CONTEXT59_CLASSES)
            log.info("no 59_labels.txt near %s: using the release's 59 classes", self.root)
        else:
            wanted = [name for _, name in _read_name_list(self.labels59_file)]
            if len(wanted) != 59:
                raise ValueError(
                    f"{self.labels59_file} lists {len(wanted)} classes, expected the 59 of "
                    f"PASCAL-Context"
                )
        out_names: list[str] = []
        out_index: list[int] = []
        for name in wanted:
            key = _key(name)
            if key not in index:
                key = _key(NAME_ALIASES.get(key, name))
            if key not in index:
                alias = NAME_ALIASES.get(_key(name))
                also = f" (nor is its alias {alias!r})" if alias else ""
                raise ValueError(
                    f"class {name!r} of {self.labels59_file} is not in {labels_src}{also}; "
                    f"expected names of the 459-class labels.txt"
                )
            out_names.append(names[key])
            out_index.append(index[key])
        if len(set(out_index)) != len(out_index):
            raise ValueError(f"{self.labels59_file} names a class twice: {out_names}")
        return tuple(out_names), np.asarray(out_index, dtype=np.int64), largest

    def _build_mat_lut(self, label_index: np.ndarray, largest: int) -> np.ndarray:
        """(max(460, largest + 1),) uint8: labels.txt index -> mask value (0 -> 255)."""
        lut = np.full(max(460, largest + 1), BACKGROUND, dtype=np.uint8)
        lut[0] = IGNORE
        lut[label_index] = np.arange(1, len(label_index) + 1, dtype=np.uint8)
        return lut

    def _build_png_lut(self, label_index: np.ndarray) -> np.ndarray:
        """(256,) int16: PNG value -> mask value in class_names order, -1 for invalid values."""
        lut = np.full(256, -1, dtype=np.int16)
        lut[BACKGROUND], lut[IGNORE] = BACKGROUND, IGNORE
        n = len(label_index)
        if self.png_order == "mmseg":  # PNG value k = k-th class by ascending labels.txt index
            lut[1 : n + 1] = np.argsort(label_index, kind="stable") + 1
        else:
            lut[1 : n + 1] = np.arange(1, n + 1)
        return lut

    # ------------------------------------------------------------------ VOCSource interface
    def image_path(self, name: str) -> Path:
        path = self.root / "JPEGImages" / f"{name}.jpg"
        if not path.is_file():
            raise FileNotFoundError(
                f"image not found: {path} (listed in {self.split_file}); {LAYOUT}"
            )
        return path

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return load_rgb(self.image_path(name))  # the whole file decoded; errors name it

    def _mask_candidates(self, name: str) -> list[Path]:
        out = [self.mask_dir / f"{name}.png"] if self.mask_dir is not None else []
        return out + ([self.mat_dir / f"{name}.mat"] if self.mat_dir is not None else [])

    def has_mask(self, name: str) -> bool:
        return any(path.is_file() for path in self._mask_candidates(name))

    def mask_path(self, name: str) -> Path:
        """GT of ``name``: ``<mask_dir>/<id>.png`` if present, else ``<trainval>/<id>.mat``."""
        candidates = self._mask_candidates(name)
        for path in candidates:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"GT mask for {name} not found (tried {tried}); {LAYOUT}")

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8: 0 background, c + 1 class c (``class_names`` order), 255 ignore."""
        path = self.mask_path(name)
        return self._decode_png(path) if path.suffix == ".png" else self._decode_mat(path)

    def _decode_mat(self, path: Path) -> np.ndarray:
        try:
            data = scipy.io.loadmat(path, variable_names=["LabelMap"])
        except Exception as err:  # scipy raises ValueError / TypeError / OSError on bad files
            raise ValueError(f"cannot read {path} as a MATLAB .mat file: {err}") from err
        if "LabelMap" not in data:
            raise ValueError(
                f"{path} has no 'LabelMap' variable; expected the PASCAL-Context release format "
                f"(an (H, W) array of labels.txt indices)"
            )
        label_map = np.asarray(data["LabelMap"])
        if label_map.ndim != 2 or label_map.dtype.kind not in "uif":
            raise ValueError(
                f"'LabelMap' of {path} must be an (H, W) integer array, got {label_map.dtype} "
                f"of shape {label_map.shape}"
            )
        if label_map.dtype.kind == "f":
            if not np.array_equal(label_map, np.round(label_map)):
                raise ValueError(f"'LabelMap' of {path} holds non-integer values")
            label_map = label_map.astype(np.int64)
        if label_map.size and (label_map.min() < 0 or label_map.max() >= len(self._mat_lut)):
            raise ValueError(
                f"'LabelMap' of {path} holds values in [{label_map.min()}, {label_map.max()}], "
                f"expected 0 (unlabelled) .. {len(self._mat_lut) - 1} (labels.txt indices)"
            )
        return self._mat_lut[label_map]

    def _decode_png(self, path: Path) -> np.ndarray:
        raw = load_label_png(path)
        values = self._png_lut[raw]
        if (values < 0).any():
            bad = np.unique(raw[values < 0]).tolist()
            raise ValueError(
                f"{path} holds values {bad}; expected 0 background, 1..{self.num_classes} or "
                f"255 ignore"
            )
        return values.astype(np.uint8)

    def labels(self, name: str) -> np.ndarray:
        """(59,) float32 multi-hot of the classes present in the GT mask."""
        if name not in self._labels:
            self._labels[name] = multi_hot_from_mask(self.load_mask(name), self.num_classes)
        return self._labels[name].copy()

