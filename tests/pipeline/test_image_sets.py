"""Stage-side dataset access: one parse of a dataset per run, callers free to reassign ids."""

from __future__ import annotations

from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import source, stage_images


def test_sources_are_opened_once_per_run_and_copies_are_independent(tiny_cfg, tmp_path) -> None:
    shared: dict = {}
    first = StageContext(tiny_cfg(), "eval_cam", tmp_path, sources=shared)
    second = StageContext(tiny_cfg(), "make_pseudo_labels", tmp_path, sources=shared)
    a, b = source(first, "train"), source(second, "train")
    assert a is not b and len(shared) == 1  # opened once, handed out as copies
    full = list(a.ids)
    a.ids = full[:2]
    assert source(second, "train").ids == full == b.ids  # reassigning ids does not leak
    stage_images(first, ["train", "val"], include_holdout=False)  # reassigns a copy's ids too
    assert source(first, "train").ids == full
    assert source(first, "train", for_eval=True).ids == full and len(shared) >= 2
