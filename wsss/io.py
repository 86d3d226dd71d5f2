"""Atomic, pickle-free artifact I/O: every file is written to a temp file and renamed.

A crash mid-write therefore never leaves a truncated CAM, label or metrics file behind, and
arrays are loaded with ``allow_pickle=False`` so artifacts cannot execute code.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.data.labels import voc_palette


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write named arrays to ``path`` (.npz, compressed) atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


class CorruptArtifactError(ValueError):
    """A file exists but cannot be read as the artifact it should be (truncated, overwritten)."""


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an .npz written by :func:`save_npz`, refusing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        raise CorruptArtifactError(f"cannot read {path} as .npz arrays: {type(err).__name__}: {err}") from err


def save_label_png(path: str | os.PathLike, label: np.ndarray, palette: bool = True) -> None:
    """Write a (H, W) uint8 label map as a PNG (VOC palette by default; 255 = ignore)."""
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be (H, W), got shape {label.shape}")
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette(voc_palette().reshape(-1).tolist())
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette or grayscale) as (H, W) uint8 class indices."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label PNG not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(f"{path}: expected a palette (P) or grayscale (L) PNG, got mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except (OSError, SyntaxError) as err:  # PIL: unidentified / truncated image
        raise CorruptArtifactError(f"cannot read {path} as a label PNG: {type(err).__name__}: {err}") from err


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file COMPLETELY as (H, W, 3) uint8 RGB (a writable copy); a truncated,
    empty or non-image file raises ValueError naming it (PIL alone says only "image file is
    truncated")."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def load_grey(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """(H, W) uint8 of a grayscale map (saliency PNG); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("L"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode {what} {path}: {err}") from err


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a BOM is fine); a non-UTF-8 byte raises ValueError naming the file,
    the line and the byte instead of a bare UnicodeDecodeError."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 "
                         f"({err.reason}); save the file as UTF-8") from err


def load_weights(path: str | os.PathLike, what: str = "weights file") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a state dict; a missing, truncated or non-weights
    file raises an error naming it (pickled objects are refused, as weights_only does)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / zip errors
        raise ValueError(f"cannot load {what} {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); expected a state dict "
                         "saved with torch.save (weights only)") from err
    return state


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    return json.loads(path.read_text())
