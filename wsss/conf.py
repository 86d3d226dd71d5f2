"""OmegaConf resolvers used by `conf/`; registered once by `train.py` and the test fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _folder_num_classes(root: Any) -> int:
    """Number of classes listed in ``<root>/classes.txt`` of a user image folder."""
    from wsss.data.folder import read_classes

    if root is None:
        raise ValueError("data=folder needs data.root=DIR (the folder holding classes.txt)")
    return len(read_classes(Path(str(root)).expanduser() / "classes.txt"))


def _cores(cap: Any = None) -> int:
    """Cores this process may use (``os.sched_getaffinity``), optionally capped: ``${wsss.cores:}``."""
    from wsss.parallel import available_cores

    cores = available_cores()
    return cores if cap in (None, "") else min(cores, int(cap))


def register_resolvers() -> None:
    """Register ``${wsss.folder_num_classes:${data.root}}`` and ``${wsss.cores:}`` (idempotent).

    No resolver branches on whether ``data.root`` is set: small CPU-scale settings are the
    ``recipe=small`` overlay (conf/recipe/small.yaml), published ones live in the config files."""
    if not OmegaConf.has_resolver("wsss.folder_num_classes"):
        OmegaConf.register_new_resolver("wsss.folder_num_classes", _folder_num_classes)
    if not OmegaConf.has_resolver("wsss.cores"):
        OmegaConf.register_new_resolver("wsss.cores", _cores)
