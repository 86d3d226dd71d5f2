"""Per-image work of a stage: run in DataLoader workers (CPU-bound CRFs, walks), skip images
whose outputs an interrupted attempt already wrote."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wsss.parallel import map_per_image

T = TypeVar("T")


class PerImage(Dataset):
    """Runs ``work(image_id) -> dict`` per item, so DataLoader workers share the CPU-bound work."""

    def __init__(self, ids: list[str], work: Callable[[str], dict]) -> None:
        self.ids, self.work = ids, work

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        torch.set_num_threads(1)  # CPU is shared between workers (and other jobs)
        return self.work(self.ids[index])


def _as_is(item: dict) -> dict:
    return item  # keep numpy arrays as they are (the default collate makes tensors)


def run_per_image(ids: list[str], work: Callable[[str], dict], num_workers: int, desc: str) -> Iterable[dict]:
    yield from map_per_image(work, ids, num_workers, desc)


def valid_npz(path: Path, keys: Sequence[str] = ()) -> bool:
    """Whether ``path`` is a complete .npz holding ``keys`` (reads the zip directory only).

    Files are written atomically (temp file + rename), so a present file is complete unless it
    was damaged afterwards; a truncated one fails here and is recomputed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return all(key in data.files for key in keys)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        return False


def valid_png(path: Path) -> bool:
    """Whether ``path`` is a readable PNG (header and size; cheap)."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def pending(ids: Sequence[str], path_of: Callable[[str], Path], valid: Callable[[Path], bool]) -> list[str]:
    """The ids whose output file (``path_of(id)``) is missing or not valid: the work left after an
    interrupted attempt of the same stage (the runner keeps partial outputs only when the
    attempt had the same config and inputs). Leftover temp files of killed atomic writes are
    removed."""
    todo, folders = [], set()
    for image_id in ids:
        path = path_of(image_id)
        folders.add(path.parent)
        if not (path.is_file() and valid(path)):
            todo.append(image_id)
    for folder in folders:
        for tmp in folder.glob(".*") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)  # a temp file of a write that never finished
    return todo


def shard(ids: Sequence[T]) -> list[T]:
    """This DDP rank's share of ``ids`` (ids or indices: every ``world``-th from its rank; all without DDP).

    A per-image stage with ``all_ranks: true`` runs on every rank, writes the files of its share
    and reduces its scores (:func:`reduce_sum`, ``SegmentationMetric(sync=True)``)."""
    from wsss.pipeline.context import rank, world_size

    return list(ids)[rank() :: world_size()] if world_size() > 1 else list(ids)


def gather_in_order(items: Sequence[T], indices: Sequence[int]) -> list[T]:
    """Every rank's per-image ``items`` (picklable), in the global order of ``indices`` (this
    rank's positions: the :func:`shard` of ``range(total)`` it processed), on every rank: the list
    one process handling all images in order would hold (as given without DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(zip(indices, items, strict=True)))
    return [item for _, item in sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])]


def reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over DDP ranks, as float64 (counts stay exact below 2**53;
    the values themselves without DDP)."""
    from wsss.parallel import sum_over_ranks

    return sum_over_ranks(torch.tensor(list(values), dtype=torch.float64)).tolist()


def done_label(path: Path) -> np.ndarray | None:
    """The label PNG an interrupted attempt already wrote at ``path`` (None: compute it)."""
    from wsss.io import load_label_png

    return load_label_png(path) if path.is_file() and valid_png(path) else None


def done_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The .npz arrays an interrupted attempt already wrote at ``path`` (None: compute them)."""
    from wsss.io import load_npz

    return load_npz(path) if path.is_file() and valid_npz(path, keys) else None
