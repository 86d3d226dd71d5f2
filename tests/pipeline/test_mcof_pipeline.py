"""MCOF end to end on the tiny synthetic tree: per-iteration labels, models and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.io import load_label_png, read_json
from wsss.pipeline.runner import run_pipeline

TINY_MCOF = [
    "pipeline=mcof",
    "stages.mcof.iterations=2",
    "stages.mcof.n_segments=30",
    "stages.mcof.region_epochs=3",
    "stages.eval_seg.num_examples=0",
    "stages.eval_seg.crf=false",
]


@pytest.mark.slow
def test_mcof_iterates_regionnet_and_pixelnet(tiny_cfg, tmp_path) -> None:
    run_dir = tmp_path / "run"
    results = run_pipeline(tiny_cfg(*TINY_MCOF), run_dir)
    assert list(results) == ["train_cls", "make_cam", "eval_cam", "mcof", "eval_seg"]
    m = results["mcof"]
    assert m["iterations"] == 2 and len(m["iteration_metrics"]) == 2
    for t in range(2):
        it = run_dir / f"stages/mcof/iter_{t}"
        assert (it / "model.pt").is_file() and read_json(it / "metrics.json")["iteration"] == t
        for key in ("seed_miou", "region_miou", "val_miou", "pred_miou"):
            assert 0.0 <= m[f"{key}_iter_{t}"] <= 1.0, (key, t)
        labels = sorted((it / "labels").glob("*.png"))
        assert len(labels) == m["num_images"] > 0
        assert set(np.unique(load_label_png(labels[0])).tolist()) <= set(range(21)) | {255}
        assert m["iteration_metrics"][t]["collapse_collapsed"] in (True, False)
    # the saliency refinement runs in the first iteration only
    assert [x["saliency_refinement"] for x in m["iteration_metrics"]] == [True, False]
    assert 0.0 <= results["eval_seg"]["miou"] <= 1.0


def test_mcof_rejects_zero_iterations(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(*TINY_MCOF, "stages.mcof.iterations=0", "pipeline.only=[mcof]")
    with pytest.raises(ValueError, match="iterations"):
        run_pipeline(cfg, tmp_path / "x")
