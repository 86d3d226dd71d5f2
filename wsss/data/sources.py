"""One way to open a dataset split, whatever the dataset: the ``data.source`` config node.

Every dataset reader (:class:`~wsss.data.voc.VOCSource`, :class:`~wsss.data.coco.COCOSource`,
:class:`~wsss.data.context.ContextSource`, :class:`~wsss.data.folder.FolderSource`) offers the
:class:`Source` interface, and datasets, DataModules and stages only use that interface.

Stages name splits generically (``train_aug`` = the images the networks train on, ``train`` =
the split pseudo-labels are evaluated on, ``val``); ``data.splits`` maps them to the dataset's
own names (COCO: ``train2014`` / ``val2014``). Names not in the map are used as they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


@runtime_checkable
class Source(Protocol):
    """Ids, files and image-level labels of one split. ``ids`` may be reassigned (a union of
    splits); every per-id method must work for any id of the dataset, not only the split's.

    Optional: ``load_instances(name) -> (masks (N, H, W) bool, classes (N,)) | None`` and a
    class attribute ``INSTANCE_GT`` naming where they come from (VOC ``SegmentationObject``,
    COCO annotations); instance evaluation falls back to connected components without them."""

    root: Path
    split: str
    ids: list[str]
    class_names: tuple[str, ...]
    num_classes: int

    def __len__(self) -> int: ...
    def name(self, index: int) -> str: ...
    def image_path(self, name: str) -> Path: ...
    def load_image(self, name: str) -> np.ndarray: ...  # (H, W, 3) uint8 RGB
    def has_mask(self, name: str) -> bool: ...
    def load_mask(self, name: str) -> np.ndarray: ...  # (H, W) uint8: 0 bg, c+1, 255 ignore
    def labels(self, name: str) -> np.ndarray: ...  # (num_classes,) float32 multi-hot
    def label_matrix(self) -> np.ndarray: ...


class SourceBase:
    """The parts of :class:`Source` every reader shares (ids list access, repr, label matrix)."""

    root: Path
    split: str
    ids: list[str]
    num_classes: int

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def name(self, index: int) -> str:
        return self.ids[index]

    def label_matrix(self) -> np.ndarray:
        """(N, num_classes) float32 labels of every id in ``ids`` order."""
        if not self.ids:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.stack([self.labels(name) for name in self.ids])


SourceFactory = Callable[..., Source]


def read_split_ids(path: Path) -> list[str]:
    """Ids of a split ``.txt`` (first column, so DeepLab-style '/JPEGImages/x.jpg /Seg../x.png'
    lines work too). Empty lists, repeated ids and non-UTF-8 bytes raise ValueError naming the
    file and line: a repeated id would be trained and scored twice without a word."""
    from wsss.io import read_text

    ids: list[str] = []
    line_of: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        name = Path(line.split()[0]).stem
        if name in line_of:
            raise ValueError(f"{path}, line {lineno}: duplicate id {name!r} (first on line "
                             f"{line_of[name]}); each image may be listed once per split")
        line_of[name] = lineno
        ids.append(name)
    if not ids:
        raise ValueError(f"split file {path} lists no ids")
    return ids


def source_factory(spec: Mapping[str, Any] | DictConfig | SourceFactory | None) -> SourceFactory:
    """A callable ``(root, split, mask_dir=..., check_images=...) -> Source`` from a config node
    (``_target_`` + fixed kwargs), an existing callable, or None (VOC)."""
    if spec is None:
        from wsss.data.voc import VOCSource

        return VOCSource
    if callable(spec):
        return spec
    node = OmegaConf.create(dict(spec) if not isinstance(spec, DictConfig) else spec)
    if "_target_" not in node:
        raise KeyError(f"data.source needs a _target_ (e.g. wsss.data.voc.VOCSource), got {node}")
    exclude = node.pop("exclude", None) if "exclude" in node else None
    factory = instantiate(node, _partial_=True)
    return factory if not exclude else _excluding(factory, Path(str(exclude)))


def read_exclude_file(path: Path) -> set[str]:
    """Ids listed in ``path`` (one per line; what ``wsss.data.check`` skipped)."""
    if not path.is_file():
        raise FileNotFoundError(f"data.source.exclude={path}: file not found")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _excluding(factory: SourceFactory, path: Path) -> SourceFactory:
    """``factory`` whose sources leave out the ids of ``data.source.exclude`` (bad images the
    pre-flight data check skipped with ``data.check.on_error=skip``)."""
    excluded = read_exclude_file(path)

    def make(*args: Any, **kwargs: Any) -> Source:
        source = factory(*args, **kwargs)
        kept = [name for name in source.ids if name not in excluded]
        if not kept:
            raise ValueError(f"{source!r}: every id is excluded by data.source.exclude={path}")
        source.ids = kept
        return source

    return make


def dataset_split(splits: Mapping[str, str] | None, split: str) -> str:
    """The dataset's own name of a generic split name (identity when unmapped)."""
    return str((splits or {}).get(str(split), split))


def open_source(spec: Any, root: str | os.PathLike, split: str, *,
                splits: Mapping[str, str] | None = None, mask_dir: str | None = None,
                check_images: bool = True) -> Source:  # fmt: skip
    """Open ``split`` (generic name, mapped through ``splits``) of the dataset at ``root``."""
    kwargs: dict[str, Any] = {"check_images": check_images}
    if mask_dir is not None:
        kwargs["mask_dir"] = mask_dir
    return source_factory(spec)(root, dataset_split(splits, split), **kwargs)
