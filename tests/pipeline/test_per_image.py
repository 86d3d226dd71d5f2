"""Per-image resume helpers: complete outputs are read back, broken or missing ones recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.io import save_label_png, save_npz
from wsss.pipeline.per_image import (
    done_label,
    done_npz,
    pending,
    reduce_sum,
    shard,
    valid_npz,
    valid_png,
)


def test_done_outputs_are_read_back_and_broken_ones_are_not(tmp_path: Path) -> None:
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_label_png(tmp_path / "a.png", label)
    np.testing.assert_array_equal(done_label(tmp_path / "a.png"), label)
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:20])  # truncated
    assert not valid_png(tmp_path / "b.png") and done_label(tmp_path / "b.png") is None
    assert done_label(tmp_path / "missing.png") is None

    save_npz(tmp_path / "a.npz", keys=np.array([1]), cams=np.ones((1, 2, 2), np.float32))
    assert done_npz(tmp_path / "a.npz", ("keys", "cams"))["keys"].tolist() == [1]
    assert done_npz(tmp_path / "a.npz", ("keys", "maps")) is None  # not the arrays asked for
    (tmp_path / "b.npz").write_bytes(b"\0" * 64)
    assert not valid_npz(tmp_path / "b.npz")


def test_pending_lists_missing_and_broken_and_removes_temp_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        save_npz(tmp_path / f"{name}.npz", cams=np.zeros(1))
    (tmp_path / "b.npz").write_bytes(b"PK\x03\x04broken")
    (tmp_path / ".c.npz.x1.npz").write_bytes(b"half-written")
    todo = pending(["a", "b", "c"], lambda i: tmp_path / f"{i}.npz", lambda p: valid_npz(p, ("cams",)))
    assert todo == ["b", "c"]
    assert not (tmp_path / ".c.npz.x1.npz").exists()


def test_without_ddp_a_rank_has_every_image() -> None:
    assert shard(["a", "b", "c"]) == ["a", "b", "c"]
    assert reduce_sum([1.0, 2.0]) == [1.0, 2.0]
