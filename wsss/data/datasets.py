"""Torch datasets over a dataset source (:class:`~wsss.data.sources.Source`: VOC, COCO, ...).

All samples are dicts. Shapes: image (3, H, W) float32 (normalised), labels (20,) float32
multi-hot, mask (H, W) int64 (0 bg, c + 1 class c, 255 ignore), saliency (1, H, W) float32 in
[0, 1], raw (H, W, 3) uint8, name str, index int.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss.data.sources import Source
from wsss.data.transforms import finalize, to_tv_tensors
from wsss.io import load_grey, load_label_png

Transform = Callable[[dict[str, Any]], dict[str, Any]]


class _VOCDataset(Dataset):
    """Shared plumbing: id lookup, optional saliency maps, transform application."""

    def __init__(self, source: Source, transform: Transform | None = None,
                 saliency_dir: str | os.PathLike | None = None) -> None:  # fmt: skip
        self.source = source
        self.transform = transform
        self.saliency_dir = (self._resolve_dir(saliency_dir, "data.module.saliency_dir")
                             if saliency_dir is not None else None)

    def _resolve_dir(self, directory: str | os.PathLike, key: str) -> Path:
        """A folder given as a path, or by name relative to the dataset root (e.g. ``SALImages``);
        ``key`` is the config key that named it (for the error message)."""
        path = Path(directory)
        if not path.is_dir() and not path.is_absolute() and (self.source.root / path).is_dir():
            path = self.source.root / path
        if not path.is_dir():
            where = "" if path.is_absolute() else f" (nor {self.source.root / path})"
            raise FileNotFoundError(f"{key}={directory}: directory not found: {path}{where}")
        return path

    def __len__(self) -> int:
        return len(self.source)

    def _load_saliency(self, name: str) -> np.ndarray | None:
        """(H, W) uint8 saliency of ``name`` or None when no saliency_dir is configured."""
        if self.saliency_dir is None:
            return None
        return load_grey(self.saliency_dir / f"{name}.png",
                         "saliency map (data.module.saliency_dir)")

    def _apply(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        return finalize(self.transform(sample) if self.transform is not None else sample)

    def _labels(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.source.labels(name))


def _check_same_size(name: str, image: np.ndarray, other: np.ndarray, what: str) -> None:
    if other.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"{what} of {name} has size {other.shape[:2]}, image has {image.shape[:2]}"
        )


class ClassificationDataset(_VOCDataset):
    """dict(image=(3, H, W), labels=(20,), name, index[, saliency=(1, H, W)])."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.source.ids[index]
        image = self.source.load_image(name)
        saliency = self._load_saliency(name)
        if saliency is not None:
            _check_same_size(name, image, saliency, "saliency map")
        out: dict[str, Any] = self._apply(to_tv_tensors(image, saliency=saliency))
        out.update(labels=self._labels(name), name=name, index=index)
        return out


class SegmentationDataset(_VOCDataset):
    """dict(image, mask=(H, W) int64, labels, name, index[, saliency]).

    The mask is the GT of the source, or ``<label_dir>/<id>.png`` (pseudo labels) if given.
    """

    def __init__(self, source: Source, transform: Transform | None = None,
                 label_dir: str | os.PathLike | None = None,
                 saliency_dir: str | os.PathLike | None = None) -> None:  # fmt: skip
        super().__init__(source, transform, saliency_dir)
        self.label_dir = self._resolve_dir(label_dir, "label_dir") if label_dir is not None else None

    def _load_mask(self, name: str) -> np.ndarray:
        if self.label_dir is None:
            return self.source.load_mask(name)
        path = self.label_dir / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"pseudo label not found: {path} (label_dir={self.label_dir})")
        return load_label_png(path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.source.ids[index]
        image, mask = self.source.load_image(name), self._load_mask(name)
        _check_same_size(name, image, mask, "mask")
        saliency = self._load_saliency(name)
        if saliency is not None:
            _check_same_size(name, image, saliency, "saliency map")
        out: dict[str, Any] = self._apply(to_tv_tensors(image, mask, saliency))
        out.update(labels=self._labels(name), name=name, index=index)
        return out


class InferenceDataset(_VOCDataset):
    """Full images for CAM / pseudo-label / evaluation stages (use batch size 1).

    dict(image=(3, h, w) normalised (h, w = H, W unless the transform resizes), raw=(H, W, 3) uint8,
    size=(H, W), labels, name, index[, mask=(H, W) int64 GT][, saliency]). ``raw``, ``size``,
    ``mask`` and ``saliency`` always stay at the original resolution.

    Args:
        with_mask: True requires a GT mask per id, False never loads it, None adds it when present.
    """

    def __init__(self, source: Source, transform: Transform | None = None,
                 with_mask: bool | None = None,
                 saliency_dir: str | os.PathLike | None = None) -> None:  # fmt: skip
        super().__init__(source, transform, saliency_dir)
        self.with_mask = with_mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.source.ids[index]
        raw = self.source.load_image(name)
        out: dict[str, Any] = self._apply(to_tv_tensors(raw))
        out.update(raw=torch.from_numpy(raw), size=(int(raw.shape[0]), int(raw.shape[1])),
                   labels=self._labels(name), name=name, index=index)  # fmt: skip
        if self.with_mask or (self.with_mask is None and self.source.has_mask(name)):
            mask = self.source.load_mask(name)
            _check_same_size(name, raw, mask, "mask")
            out["mask"] = torch.from_numpy(mask.astype(np.int64))
        saliency = self._load_saliency(name)
        if saliency is not None:
            _check_same_size(name, raw, saliency, "saliency map")
            out["saliency"] = torch.from_numpy(saliency.astype(np.float32) / 255.0)[None]
        return out


def collate_single(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate exactly one variable-size sample: tensors gain a leading batch dim of 1, ``name``
    becomes a 1-element list, ``index`` a (1,) tensor, ``size`` stays a plain (H, W) tuple."""
    if len(batch) != 1:
        raise ValueError(f"collate_single needs batch_size=1, got a batch of {len(batch)}")
    out: dict[str, Any] = {}
    for key, value in batch[0].items():
        if isinstance(value, torch.Tensor):
            out[key] = value.unsqueeze(0)
        elif key == "size":
            out[key] = tuple(int(v) for v in value)
        elif isinstance(value, (int, float)):
            out[key] = torch.tensor([value])
        else:
            out[key] = [value]
    return out
