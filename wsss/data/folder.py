"""Bring your own images: a plain folder of images + class names + image-level labels (no torch).

:class:`FolderSource` has the public interface of :class:`~wsss.data.voc.VOCSource`, so every
dataset, the DataModule and the pipeline stages accept it unchanged. Folder layout::

    <root>/images/<id>.<jpg|jpeg|png>   any RGB / grey / RGBA / 16-bit image, read as (H, W, 3) RGB
    <root>/classes.txt                  one class name per line; line order = class index 0, 1, ...
    <root>/labels.csv                   header ``image,labels``; labels = class names joined by ';'
      or <root>/labels.json             ``{"<id>": ["cat", "dog"], ...}`` (exactly one of the two)
    <root>/splits/<split>.txt           optional: one id per line
    <root>/masks/<id>.png               optional GT masks for evaluation (P- or L-mode PNG)

Rules, in the order users usually trip over them:

* **classes.txt** lists foreground classes only: background is implicit (mask value 0), so a
  ``background`` line is rejected. Blank lines are skipped, names are stripped, must be unique,
  may not contain ``;`` and at most 254 classes fit a uint8 mask (255 = ignore).
* **ids** are image file names without extension. In labels.csv / labels.json and in split files a
  trailing ``.jpg`` / ``.jpeg`` / ``.png`` is dropped (``cat1`` and ``cat1.jpg`` are one id).
  Ids are unique and contain no ``/``. Extensions are matched case-insensitively; two images
  with the same id (``a.jpg`` and ``a.png``) are an error.
* **labels.csv** is comma-separated (UTF-8, a BOM is fine, extra columns are ignored). Class
  names inside the ``labels`` field are separated by ``;`` (spaces around them and empty pieces
  are ignored). An **empty labels field** (or ``[]`` in JSON) marks a background-only image: it
  stays in its splits with an all-zero label vector (a pure negative for the classifier, no class
  for CAM stages to activate). Images under ``images/`` without a labels row are ignored
  (``--check`` lists them).
* **splits**: ``split="<name>"`` reads ``splits/<name>.txt`` (blank lines and ``#`` comments are
  skipped; every id needs a labels row); a path ending in ``.txt`` is read directly. ``all`` is
  every labels row in file order unless ``splits/all.txt`` exists. When ``splits/`` has neither
  ``train.txt`` nor ``val.txt``, ``train`` / ``val`` are derived: an id is in val iff
  ``sha256("<seed>:<id>")`` mapped to [0, 1) is below ``val_fraction`` (default 0.1, seed 0).
  The side of an id depends on nothing but the id, so adding or removing images never moves the
  others, and val holds ~``val_fraction`` of the ids (exactly only on average); ids keep the
  labels-file order and ``split_file`` is the labels file. If only one of ``train.txt`` /
  ``val.txt`` exists, asking for the other one is an error (nothing is derived).
* **images** are read as displayed: EXIF orientation is applied (masks must match that
  orientation), alpha is dropped, grey / palette images are expanded and 16-bit images are
  scaled to 8 bits.
* **masks** store 0 background, ``c + 1`` for class ``c`` of classes.txt and 255 ignore; any other
  value raises when the mask is loaded. ``mask_dir`` (a name under root or a path) is looked in
  first, then ``masks/``; masks may exist for any subset of the images (``has_mask``).

Check a folder before training: ``python -m wsss.data.folder --root DIR --check`` prints the
images, classes, label counts per class, masks and splits, or every problem found (exit code 1).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from wsss.data.labels import IGNORE
from wsss.data.sources import SourceBase
from wsss.io import load_label_png, read_text

LAYOUT = (
    "expected folder layout: <root>/images/<id>.<jpg|jpeg|png>, <root>/classes.txt (one "
    "foreground class per line), <root>/labels.csv (header 'image,labels', class names joined by "
    "';') or <root>/labels.json ({\"<id>\": [names]}), optional <root>/splits/<split>.txt and "
    "<root>/masks/<id>.png (0 bg, c+1 class c, 255 ignore); see `python -m wsss.data.folder -h`"
)
IMAGE_DIR, CLASSES_FILE, SPLIT_DIR, DEFAULT_MASK_DIR = "images", "classes.txt", "splits", "masks"
LABEL_FILES = ("labels.csv", "labels.json")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_CLASSES = 254  # mask values 1..254 are classes, 0 background, 255 ignore
DERIVED_SPLITS = ("train", "val")
_BACKGROUND_NAMES = {"background", "_background_", "__background__", "bg"}
_MAX_LISTED = 20  # problems shown in one exception message


# --------------------------------------------------------------------------- parsing helpers
def _strip_ext(name: str) -> str:
    """``x.jpg`` -> ``x``; only the known image extensions are dropped (ids may contain dots)."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else name


def _join(problems: Sequence[str]) -> str:
    head = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(head)} more" if len(problems) > len(head) else ""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n  " + "\n  ".join(head) + more


def read_classes(path: Path) -> tuple[str, ...]:
    """Class names of ``classes.txt`` in index order; ValueError naming the line on bad input."""
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}; {LAYOUT}")
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise ValueError(
                f"{path}, line {lineno}: duplicate class name {name!r} "
                f"(already on line {first_line[name]})"
            )
        if name.lower() in _BACKGROUND_NAMES:
            raise ValueError(
                f"{path}, line {lineno}: {name!r}: list foreground classes only, "
                "background is implicit (mask value 0)"
            )
        if ";" in name:
            raise ValueError(
                f"{path}, line {lineno}: class name {name!r} contains ';' "
                "(the separator of labels.csv)"
            )
        first_line[name] = lineno
        names.append(name)
    if not names:
        raise ValueError(f"{path} lists no class names; {LAYOUT}")
    if len(names) > MAX_CLASSES:
        raise ValueError(
            f"{path} lists {len(names)} classes; at most {MAX_CLASSES} fit a uint8 "
            "mask (0 = background, 255 = ignore)"
        )
    return tuple(names)


def find_labels_file(root: Path) -> Path:
    """``labels.csv`` or ``labels.json`` under ``root`` (exactly one of them must exist)."""
    found = [root / name for name in LABEL_FILES if (root / name).is_file()]
    if not found:
        raise FileNotFoundError(
            f"no labels file: neither {root / LABEL_FILES[0]} nor "
            f"{root / LABEL_FILES[1]} exists; {LAYOUT}"
        )
    if len(found) > 1:
        raise ValueError(f"both {found[0]} and {found[1]} exist; keep exactly one labels file")
    return found[0]


def _check_id(raw: str, where: str) -> tuple[str, str | None]:
    """(id, problem or None) of an image reference from a labels row or a split line."""
    name = _strip_ext(raw.strip())
    if not name:
        return name, f"{where}: empty image id"
    if "/" in name or "\\" in name:
        return name, (
            f"{where}: image id {raw!r} contains a path separator; use the file "
            "name under images/ (without folders)"
        )
    return name, None


def _class_indices(
    names: Iterable[str], index: Mapping[str, int], where: str, problems: list[str]
) -> tuple[int, ...]:
    out: set[int] = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name in index:
            out.add(index[name])
            continue
        hint = ""
        if "," in name and all(p.strip() in index for p in name.split(",")):
            hint = " (separate class names with ';', not ',')"
        problems.append(
            f"{where}: unknown class name {name!r}{hint}; valid classes are {', '.join(index)}"
        )
    return tuple(sorted(out))


def read_labels(
    path: Path, class_names: Sequence[str]
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Labels file -> ({id: sorted class indices} in file order, problems found).

    Every row is checked, so ``problems`` lists all unknown class names / duplicate ids at once.
    """
    index = {name: c for c, name in enumerate(class_names)}
    out: dict[str, tuple[int, ...]] = {}
    where_of: dict[str, str] = {}
    problems: list[str] = []

    def add(raw_id: str, names: Iterable[str], where: str) -> None:
        name, problem = _check_id(raw_id, where)
        if problem is not None:
            problems.append(problem)
            return
        if name in out:
            problems.append(f"{where}: duplicate image id {name!r} (first at {where_of[name]})")
            return
        where_of[name] = where
        out[name] = _class_indices(names, index, f"{where} (image {name!r})", problems)

    if path.suffix == ".json":
        try:
            data = json.loads(read_text(path), object_pairs_hook=list)
        except json.JSONDecodeError as err:
            return {}, [f"{path}: malformed JSON: {err}"]
        if not isinstance(data, list):
            return {}, [f'{path}: expected an object {{"<id>": [class names], ...}}']
        for key, value in data:
            where = f"{path}, key {key!r}"
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                add(key, value, where)
            else:
                problems.append(f"{where}: expected a list of class names, got {value!r}")
    else:
        with io.StringIO(read_text(path), newline="") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lower() for h in next(reader, [])]
            if "image" not in header or "labels" not in header:
                hint = " (the file must be comma-separated)" if ";" in ",".join(header) else ""
                got = ",".join(header)
                return {}, [
                    f"{path}, line 1: expected the header 'image,labels', got {got!r}{hint}"
                ]
            col_id, col_labels = header.index("image"), header.index("labels")
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(col_id, col_labels):
                    problems.append(
                        f"{where}: expected {len(header)} comma-separated fields "
                        f"({','.join(header)}), got {row!r}"
                    )
                    continue
                add(row[col_id], row[col_labels].split(";"), where)
    if not out and not problems:
        problems.append(f"{path} lists no images; {LAYOUT}")
    return out, problems


def read_id_list(
    path: Path, known: Mapping[str, object], labels_file: Path | str = "labels"
) -> tuple[list[str], list[str]]:
    """(ids, problems) of a split file: one id per line, each with a labels row, no duplicates."""
    ids: list[str] = []
    line_of: dict[str, int] = {}
    problems: list[str] = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        name, problem = _check_id(text, where)
        if problem is not None:
            problems.append(problem)
        elif name in line_of:
            problems.append(f"{where}: duplicate id {name!r} (first on line {line_of[name]})")
        elif name not in known:
            problems.append(f"{where}: id {name!r} has no row in {labels_file}")
        else:
            line_of[name] = lineno
            ids.append(name)
    if not ids and not problems:
        problems.append(f"split file {path} lists no ids")
    return ids, problems


def val_score(image_id: str, seed: int = 0) -> float:
    """Deterministic pseudo-random number in [0, 1) of an id (sha256 of ``"<seed>:<id>"``)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_partition(
    ids: Iterable[str], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, val) in input order: an id is in val iff ``val_score(id, seed) < val_fraction``.

    Each id's side depends only on the id, so the partition is stable when images are added.
    """
    train: list[str] = []
    val: list[str] = []
    for name in ids:
        (val if val_score(name, seed) < val_fraction else train).append(name)
    return train, val


def _scan_images(directory: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """({id: image path}, {id: paths} of ids with several images) of one images/ folder."""
    found: dict[str, list[Path]] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if (
                ext.lower() in IMAGE_EXTENSIONS
                and not entry.name.startswith(".")
                and entry.is_file()
            ):
                found.setdefault(stem, []).append(Path(entry.path))
    unique = {k: v[0] for k, v in found.items() if len(v) == 1}
    return unique, {k: sorted(v) for k, v in found.items() if len(v) > 1}


def _to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any PIL image, as displayed (EXIF orientation applied)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey: scale, don't clip
        grey = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))  # writable copy


def _displayed_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as :func:`_to_rgb` returns it, from the header only."""
    with Image.open(path) as image:
        w, h = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _resolve_root(root: Path) -> Path:
    if not root.exists():
        raise FileNotFoundError(f"image folder root not found: {root}; {LAYOUT}")
    if not (root / IMAGE_DIR).is_dir():
        raise FileNotFoundError(f"no {IMAGE_DIR}/ folder under {root}; {LAYOUT}")
    return root


# --------------------------------------------------------------------------- the source
class FolderSource(SourceBase):
    """Ids, file paths and (C,) multi-hot image labels of one split of an image folder.

    Args:
        root: the folder holding ``images/``, ``classes.txt`` and ``labels.csv``/``labels.json``.
        split: ``splits/<split>.txt``, a path to a ``.txt`` id list, ``all``, or ``train``/``val``
            (derived from a hash of each id when ``splits/`` has neither train.txt nor val.txt).
        mask_dir: preferred GT mask folder (a name under root or a path); ``masks/`` is the
            fallback. Missing masks are fine until one is loaded.
        check_images: look every image of the split up at construction (fail early if missing).
        val_fraction: expected share of ids in the derived ``val`` split, in [0, 1).
        seed: salt of the derived partition (changing it reshuffles every id).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        mask_dir: str | os.PathLike = DEFAULT_MASK_DIR,
        check_images: bool = True,
        val_fraction: float = 0.1,
        *,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = _resolve_root(Path(root))
        self.split = str(split)
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        self.class_names: tuple[str, ...] = read_classes(self.root / CLASSES_FILE)
        self.num_classes = len(self.class_names)
        self.labels_file = find_labels_file(self.root)
        self._label_index, problems = read_labels(self.labels_file, self.class_names)
        if problems:
            raise ValueError(_join(problems))
        self.split_file, self.ids = self._resolve_split(self.split)
        self.mask_dirs = self._mask_dirs(mask_dir)
        self._images: dict[str, Path] | None = None  # lazy scan of images/
        self._ambiguous: dict[str, list[Path]] = {}
        if check_images:
            self._check_images(self.ids)

    # ----------------------------------------------------------- construction helpers
    def _split_dir_files(self) -> dict[str, Path]:
        directory = self.root / SPLIT_DIR
        return {p.stem: p for p in sorted(directory.glob("*.txt"))} if directory.is_dir() else {}

    def _resolve_split(self, split: str) -> tuple[Path, list[str]]:
        files = self._split_dir_files()
        direct = Path(split)
        if direct.suffix == ".txt" or os.sep in split or "/" in split:
            candidates = [direct if direct.is_absolute() else self.root / direct, direct]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise FileNotFoundError(
                    f"split file {split!r} not found (tried "
                    f"{', '.join(map(str, candidates))}); {LAYOUT}"
                )
        elif split in files:
            path = files[split]
        elif split == "all":
            return self.labels_file, list(self._label_index)
        elif split in DERIVED_SPLITS and not any(s in files for s in DERIVED_SPLITS):
            train, val = hash_partition(self._label_index, self.val_fraction, self.seed)
            ids = train if split == "train" else val
            if not ids:
                raise ValueError(
                    f"derived {split!r} split of {self.labels_file} is empty "
                    f"({len(self._label_index)} ids, val_fraction="
                    f"{self.val_fraction}); change val_fraction or write "
                    f"{self.root / SPLIT_DIR}/train.txt and val.txt"
                )
            return self.labels_file, ids
        else:
            available = ["all", *files]
            if not any(s in files for s in DERIVED_SPLITS):
                available += [f"{s} (derived)" for s in DERIVED_SPLITS]
            raise FileNotFoundError(
                f"split {split!r}: {self.root / SPLIT_DIR / split}.txt not "
                f"found; available splits: {', '.join(available)} "
                "(train/val are derived only when splits/ has neither "
                "train.txt nor val.txt)"
            )
        ids, problems = read_id_list(path, self._label_index, self.labels_file)
        if problems:
            raise ValueError(_join(problems))
        return path, ids

    def _mask_dirs(self, preferred: str | os.PathLike) -> list[Path]:
        dirs: list[Path] = []
        for name in dict.fromkeys([str(preferred), DEFAULT_MASK_DIR]):
            path = Path(name) if Path(name).is_absolute() else self.root / name
            if path.is_dir() and path not in dirs:
                dirs.append(path)
        return dirs

    def _check_images(self, ids: Sequence[str]) -> None:
        missing: list[str] = []
        for name in ids:
            try:
                self.image_path(name)
            except FileNotFoundError:
                missing.append(name)
            # ambiguous ids raise ValueError straight away
        if missing:
            shown = ", ".join(self._expected_image(n) for n in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"{len(missing)} of {len(ids)} images listed in "
                f"{self.split_file} not found: {shown}{more}; {LAYOUT}"
            )

    def _expected_image(self, name: str) -> str:
        return f"{self.root / IMAGE_DIR / name}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}>"

    # ----------------------------------------------------------- VOCSource interface
    def __repr__(self) -> str:
        return (
            f"FolderSource(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes})"
        )

    def image_path(self, name: str) -> Path:
        """``images/<name>.<ext>`` (extension found case-insensitively)."""
        if self._images is None:
            self._images, self._ambiguous = _scan_images(self.root / IMAGE_DIR)
        if name in self._ambiguous:
            found = ", ".join(p.name for p in self._ambiguous[name])
            raise ValueError(
                f"several images for id {name!r} in {self.root / IMAGE_DIR}: {found}; keep one"
            )
        path = self._images.get(name)
        if path is not None and path.is_file():
            return path
        for ext in IMAGE_EXTENSIONS:  # added since the scan (or the scan missed it)
            for suffix in (ext, ext.upper()):
                candidate = self.root / IMAGE_DIR / f"{name}{suffix}"
                if candidate.is_file():
                    self._images[name] = candidate
                    return candidate
        raise FileNotFoundError(
            f"image not found: {self._expected_image(name)} (listed in "
            f"{self.split_file}); {LAYOUT}"
        )

    def has_mask(self, name: str) -> bool:
        return any((d / f"{name}.png").is_file() for d in self.mask_dirs)

    def mask_path(self, name: str) -> Path:
        """GT mask of ``name``: the preferred mask dir first, then ``masks/``."""
        for d in self.mask_dirs:
            if (d / f"{name}.png").is_file():
                return d / f"{name}.png"
        tried = (
            ", ".join(str(d / f"{name}.png") for d in self.mask_dirs)
            or f"no mask folder exists ({self.root / DEFAULT_MASK_DIR})"
        )
        raise FileNotFoundError(f"GT mask for {name} not found (tried {tried}); {LAYOUT}")

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB, as displayed (EXIF orientation applied)."""
        path = self.image_path(name)
        try:
            with Image.open(path) as image:
                return _to_rgb(image)
        except (OSError, SyntaxError) as err:  # truncated, empty, not an image
            raise ValueError(f"cannot decode image {path}: {err}") from err

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8: 0 background, c + 1 class c, 255 ignore (other values raise)."""
        path = self.mask_path(name)
        mask = load_label_png(path)
        bad = np.unique(mask[(mask > self.num_classes) & (mask != IGNORE)])
        if bad.size:
            raise ValueError(
                f"{path}: mask values {bad.tolist()} are not valid for "
                f"{self.num_classes} classes (expected 0 = background, 1..."
                f"{self.num_classes} = class index + 1 in classes.txt order, "
                f"{IGNORE} = ignore)"
            )
        return mask

    def labels(self, name: str) -> np.ndarray:
        """(C,) float32 multi-hot of the labels row of ``name`` (all zero: background only)."""
        if name not in self._label_index:
            raise KeyError(f"no labels for {name!r}: it has no row in {self.labels_file}")
        out = np.zeros(self.num_classes, dtype=np.float32)
        out[list(self._label_index[name])] = 1.0
        return out



if __name__ == "__main__":
    from wsss.data.folder_check import main

    raise SystemExit(main())
