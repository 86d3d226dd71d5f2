"""Per-image work of a stage: run in DataLoader workers (CPU-bound CRFs, walks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


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
    loader = DataLoader(PerImage(ids, work), batch_size=None, num_workers=num_workers,
                        collate_fn=_as_is)
    yield from tqdm(loader, total=len(ids), desc=desc)
