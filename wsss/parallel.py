"""CPU parallelism in one place: how many cores this process may use, worker pools, progress.

* :func:`available_cores` — the cores the process may run on (``os.sched_getaffinity``: respects
  ``taskset``, cgroup cpusets and SLURM bindings), not the machine's core count.
* :func:`resolve_workers` — a config's worker count (``auto`` / ``null`` / ``-1`` = one per
  available core, capped by the number of items) as an int.
* :func:`map_per_image` — ``fn(item)`` over items in worker processes, streamed in order with
  bounded memory (each worker holds at most ``prefetch`` finished results), each worker pinned to
  one torch thread so ``workers x threads`` never exceeds the cores.
* :func:`progress` — the progress bar every per-image loop uses: images/s (``wsss.progress``
  policy: a live bar on a terminal, periodic plain lines in logs), and a log line with the
  throughput at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from wsss.progress import tqdm  # live bar on a TTY, periodic plain lines otherwise

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "available_cores",
    "map_per_image",
    "progress",
    "resolve_workers",
    "single_thread_worker",
    "sum_over_ranks",
    "threads_per_worker",
]

AUTO = ("auto", None, -1)


def available_cores() -> int:
    """Number of CPU cores this process may run on (>= 1).

    ``os.sched_getaffinity(0)`` where the OS has it (Linux), else ``os.cpu_count()``.
    """
    getter = getattr(os, "sched_getaffinity", None)
    if getter is not None:
        try:
            return max(1, len(getter(0)))
        except OSError:  # some sandboxes forbid the call
            pass
    return max(1, os.cpu_count() or 1)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over DDP ranks, on every rank (a collective: each rank calls
    it; ``tensor`` as given without a process group or with one rank). Keeps dtype and device
    (an NCCL group reduces a CUDA copy)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    work = tensor.detach().clone().cuda() if dist.get_backend() == "nccl" else tensor.detach().clone()
    dist.all_reduce(work)
    return work.to(tensor.device)


def resolve_workers(value: Any, num_items: int | None = None) -> int:
    """A worker-count setting as an int: ``auto`` / ``None`` / ``-1`` -> :func:`available_cores`.

    Explicit integers are kept (0 = in the calling process). The result is capped by
    ``num_items`` when given (no idle workers for a 3-image split).

    Raises:
        ValueError: for anything else (negative numbers other than -1, unknown strings).
    """
    if value in AUTO or (isinstance(value, str) and value.strip().lower() == "auto"):
        workers = available_cores()
    else:
        try:
            workers = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"worker count must be an integer >= 0 or 'auto', got {value!r}") from None
        if workers < 0:
            raise ValueError(f"worker count must be an integer >= 0 or 'auto', got {value!r}")
    if num_items is not None:
        workers = min(workers, max(int(num_items), 0))
    return workers


def threads_per_worker(workers: int) -> int:
    """Torch intra-op threads per process so that ``max(workers, 1)`` processes fill the cores."""
    return max(1, available_cores() // max(1, int(workers)))


def single_thread_worker(worker_id: int = 0) -> None:
    """``worker_init_fn``: one torch thread per worker process (no oversubscription)."""
    torch.set_num_threads(1)


class _Apply(Dataset):
    def __init__(self, items: Sequence[Any], fn: Callable[[Any], Any]) -> None:
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.fn(self.items[index])


def _as_is(item: Any) -> Any:
    return item  # keep numpy arrays / dicts as they are (the default collate makes tensors)


def map_per_image(
    fn: Callable[[Any], T],
    items: Sequence[Any],
    workers: Any = "auto",
    desc: str = "",
    prefetch: int = 2,
    show_progress: bool = True,
) -> Iterator[T]:
    """``fn(item)`` for every item, in order, spread over worker processes.

    Results stream: at most ``workers x prefetch`` finished results wait in memory, so a stage
    over 80k images holds a handful at a time. ``fn`` must be picklable (a module-level function
    or a ``functools.partial`` of one). Workers run with one torch thread each; with 0 workers
    (or one item) everything runs in this process with its thread setting unchanged.

    Args:
        fn: Per-item work, e.g. load CAMs, CRF, write a PNG, return a small dict.
        items: Image ids (or any picklable items).
        workers: Worker processes (``auto`` = :func:`available_cores`), see :func:`resolve_workers`.
        desc: Progress-bar label.
        prefetch: Results each worker may have ready ahead of the consumer.
        show_progress: Draw the progress bar (the end-of-loop log line is always written).
    """
    n = resolve_workers(workers, len(items))
    if n <= 1:
        iterator: Iterable[T] = map(fn, items)
    else:
        iterator = DataLoader(_Apply(items, fn), batch_size=None, num_workers=n,
                              collate_fn=_as_is, prefetch_factor=max(1, int(prefetch)),
                              worker_init_fn=single_thread_worker)  # fmt: skip
    yield from progress(iterator, total=len(items), desc=desc, disable=not show_progress)


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", disable: bool = False,
    leave: bool = True,
) -> Iterator[T]:
    """Progress bar in images/s over a per-image loop; logs the final throughput.

    Args:
        iterable: One element per image (a loader with ``batch_size=1``/``None``, ids, ...).
        total: Number of images (default ``len(iterable)`` when it has one).
        desc: Label of the bar and the log line.
        disable: No bar (the log line is still written).
        leave: Keep the finished bar on screen (``False`` for inner loops).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    start = time.perf_counter()
    count = 0
    bar = tqdm(iterable, total=total, desc=desc, unit="img", disable=disable, leave=leave,
               smoothing=0.1, mininterval=1.0, dynamic_ncols=True)  # fmt: skip
    for item in bar:
        count += 1
        yield item
    seconds = time.perf_counter() - start
    if count:
        log.info("%s: %d images in %.1f s (%.2f images/s)", desc or "progress", count, seconds,
                 count / max(seconds, 1e-9))
