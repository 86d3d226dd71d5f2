import functools
import logging
import os

import pytest
import torch
from omegaconf import OmegaConf

from wsss import parallel
from wsss.conf import register_resolvers
from wsss.parallel import (
    available_cores,
    map_per_image,
    progress,
    resolve_workers,
    threads_per_worker,
)


def test_available_cores_follows_sched_getaffinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7}, raising=False)
    assert available_cores() == 3  # not the machine's 64
    assert resolve_workers("auto") == 3 and resolve_workers(None) == 3 and resolve_workers(-1) == 3
    assert threads_per_worker(1) == 3 and threads_per_worker(2) == 1 and threads_per_worker(0) == 3


def test_available_cores_without_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cores() == 1


def test_resolve_workers_explicit_capped_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert resolve_workers(0) == 0 and resolve_workers("3") == 3 and resolve_workers(" AUTO ") == 8
    assert resolve_workers("auto", num_items=2) == 2  # no idle workers for a 2-image split
    assert resolve_workers(5, num_items=0) == 0
    for bad in (-2, "many", 1.5j):
        with pytest.raises(ValueError, match="worker count"):
            resolve_workers(bad)


def test_cores_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    register_resolvers()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    cfg = OmegaConf.create({"a": "${wsss.cores:}", "b": "${wsss.cores:2}"})
    assert cfg.a == 5 and cfg.b == 2


def _square_and_threads(x: int) -> tuple[int, int, int]:
    return x * x, torch.get_num_threads(), os.getpid()


@pytest.mark.parametrize("workers", [0, 2])
def test_map_per_image_in_order_single_threaded_workers(workers: int) -> None:
    items = list(range(7))
    out = list(map_per_image(_square_and_threads, items, workers=workers, show_progress=False))
    assert [o[0] for o in out] == [x * x for x in items]  # in order
    pids = {o[2] for o in out}
    if workers:
        assert os.getpid() not in pids and {o[1] for o in out} == {1}  # one torch thread each
    else:
        assert pids == {os.getpid()}


def test_map_per_image_accepts_partials() -> None:
    fn = functools.partial(divmod, 17)
    assert list(map_per_image(fn, [2, 5], workers=2, show_progress=False)) == [(8, 1), (3, 2)]


def test_progress_logs_throughput(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=parallel.__name__):
        assert list(progress(iter("abc"), total=3, desc="demo", disable=True)) == ["a", "b", "c"]
    assert "demo: 3 images in" in caplog.text and "images/s" in caplog.text
