"""The collapse guard on a stage context: fires on an all-background segmenter, not on a healthy one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsss.io import read_json, save_label_png
from wsss.pipeline.collapse import COLLAPSE_FILE, SegmenterCollapse, collapse_guard
from wsss.pipeline.context import StageContext


class ConstantSegmenter(nn.Module):
    """Logits (B, 21, H, W) whose argmax is ``winner`` on the top ``fraction`` of the rows and
    background below (everywhere with the default fraction 1)."""

    def __init__(self, winner: int, fraction: float = 1.0) -> None:
        super().__init__()
        self.winner, self.fraction = winner, fraction
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 21, *x.shape[-2:]) + self.dummy
        logits[:, 0] = 1.0
        logits[:, self.winner, : round(x.shape[-2] * self.fraction)] = 5.0
        return logits


@pytest.fixture
def labelled(tiny_cfg, tmp_path):
    """A stage context and a label dir where 30 % of the counted pixels are foreground."""
    cfg = tiny_cfg("collapse_guard.max_images=4")
    ctx = StageContext(cfg=cfg, name="train_seg", run_dir=tmp_path / "run")
    labels = tmp_path / "labels"
    label = np.zeros((10, 10), dtype=np.uint8)
    label[:3] = 1          # 30 foreground pixels
    label[9, :] = 255      # ignored row: 90 counted pixels -> 30/90
    ids = ["a", "b"]
    for i in ids:
        save_label_png(labels / f"{i}.png", label)
    return ctx, labels, ids


def test_guard_flags_all_background_and_passes_healthy(labelled) -> None:
    ctx, labels, ids = labelled
    bad = collapse_guard(ctx, ConstantSegmenter(0), labels, ids)
    assert bad["collapse_collapsed"] is True
    assert bad["collapse_pred_fg_fraction"] == 0.0
    assert bad["collapse_label_fg_fraction"] == pytest.approx(30 / 90)
    good = collapse_guard(ctx, ConstantSegmenter(3), labels, ids)
    assert good["collapse_collapsed"] is False and good["collapse_pred_fg_fraction"] == 1.0


def test_fail_mode_raises_and_records(labelled) -> None:
    ctx, labels, ids = labelled
    ctx.cfg.collapse_guard.mode = "fail"
    with pytest.raises(SegmenterCollapse, match="collapsed towards background"):
        collapse_guard(ctx, ConstantSegmenter(0), labels, ids, tag="round 1")
    record = read_json(ctx.out_dir / COLLAPSE_FILE)
    assert record["collapse_collapsed"] is True and record["tag"] == "round 1"
    ctx.cfg.collapse_guard.mode = "off"
    assert collapse_guard(ctx, ConstantSegmenter(0), labels, ids) == {}
    ctx.cfg.collapse_guard.mode = "loud"
    with pytest.raises(ValueError, match="collapse_guard.mode"):
        collapse_guard(ctx, ConstantSegmenter(0), labels, ids)


def test_sparse_cues_are_judged_against_all_pixels(labelled, tmp_path) -> None:
    """SEC-like cues: 8 % of the pixels foreground, 3 % background, the rest uncued. A segmenter
    predicting ~10 % foreground (about what the objects cover) is healthy; among cued pixels the
    cues are 73 % foreground, which would flag it."""
    ctx, _, ids = labelled
    cues = tmp_path / "cues"
    label = np.full((10, 10), 255, dtype=np.uint8)
    label[0, :8] = 2        # 8 foreground cue pixels
    label[9, :3] = 0        # 3 background cue pixels
    for i in ids:
        save_label_png(cues / f"{i}.png", label)
    segmenter = ConstantSegmenter(3, fraction=0.1)
    dense = collapse_guard(ctx, segmenter, cues, ids)
    assert dense["collapse_label_fg_fraction"] == pytest.approx(8 / 11)
    assert dense["collapse_collapsed"] is True
    sparse = collapse_guard(ctx, segmenter, cues, ids, sparse_labels=True)
    assert sparse["collapse_label_fg_fraction"] == pytest.approx(0.08)
    assert sparse["collapse_label_fraction_of"] == "all pixels (sparse labels)"
    assert 0.05 < sparse["collapse_pred_fg_fraction"] < 0.15
    assert sparse["collapse_collapsed"] is False
    assert collapse_guard(ctx, ConstantSegmenter(0), cues, ids, sparse_labels=True)["collapse_collapsed"] is True
