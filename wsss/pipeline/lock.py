"""One process per run directory: an exclusive ``fcntl.flock`` on ``<run_dir>/.lock``.

Two runs writing into one directory interleave their stages and leave a directory whose config
and results disagree. The lock file holds the holder's pid, host, start time and command, so the
second process stops at once and says who holds it. ``flock`` locks belong to the open file and
die with the process, so a crashed run never leaves a stale lock behind (the file stays, the lock
does not).

``train.py`` takes the lock twice over: from a Hydra callback (:class:`RunDirLockCallback`,
``hydra.callbacks`` in ``conf/train.yaml``) before Hydra writes ``.hydra/config.yaml`` into the
directory, and from ``main`` (:func:`acquire_run_lock`, a no-op when this process holds it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"

_held: dict[str, int] = {}  # resolved run dir -> open fd holding its lock (this process)


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (
            f"pid {info.get('pid')} on {info.get('host')} since {info.get('start')} "
            f"({info.get('command')})"
        )
    except (OSError, ValueError):
        return "another process (its lock file is unreadable)"


def _secondary_rank() -> bool:
    """A DDP process other than rank 0 (Lightning re-runs train.py for ranks 1.. with LOCAL_RANK
    set; torchrun sets RANK): it shares the directory with rank 0, which holds the lock."""
    return any(
        os.environ.get(var, "0") not in ("", "0") for var in ("LOCAL_RANK", "RANK", "NODE_RANK")
    )


def acquire_run_lock(run_dir: str | os.PathLike) -> Path:
    """Lock ``run_dir`` for this process until it exits (or :func:`release_run_lock`).

    Raises :class:`RunDirLocked` naming the holder when another live process has it."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    path = run_dir / LOCK_FILE
    if key in _held or _secondary_rank():
        return path
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirLocked(
            f"run directory {run_dir} is in use by {_holder(path)}; wait for that run to finish "
            f"or write to another directory (hydra.run.dir=...). The lock is {path}; it is "
            "released when its process exits."
        ) from None
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                            "start": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "command": " ".join(sys.argv)[:500]}  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[key] = fd
    return path


def release_run_lock(run_dir: str | os.PathLike) -> None:
    """Release this process's lock on ``run_dir`` (no-op when it holds none)."""
    fd = _held.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """``with run_lock(dir):`` hold the lock for the block (in-process pipelines, tests)."""
    already = str(Path(run_dir).resolve()) in _held
    path = acquire_run_lock(run_dir)
    try:
        yield path
    finally:
        if not already:
            release_run_lock(run_dir)


try:  # the Hydra callback; Hydra is a dependency, but keep the module importable without it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class RunDirLockCallback(Callback):  # type: ignore[misc,valid-type]
    """Takes the run-directory lock in ``on_run_start``, before Hydra writes ``.hydra/`` there
    (single runs; multirun jobs get distinct directories and lock in ``main``)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:
            acquire_run_lock(Path(str(config.hydra.run.dir)))
        except RunDirLocked as err:  # Hydra turns callback exceptions into warnings: exit here
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
