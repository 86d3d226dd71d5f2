"""Mixed precision (bf16 autocast on CPU, the closest check of `trainer=gpu`'s 16-mixed available
without a GPU): every training module's losses and the refiners' sparse ops run under autocast."""

from __future__ import annotations

import math

import pytest

from tests.pipeline.test_irnet_pipeline import TINY_IRN
from tests.pipeline.test_sec_pipeline import TINY_SEC
from wsss.pipeline.runner import run_pipeline

CASES = {
    "irnet": TINY_IRN,
    "sec": TINY_SEC,
    "eps": ["method=eps", "pipeline.only=[train_cls,make_cam,eval_cam]"],
    "seam": ["method=seam", "pipeline.only=[train_cls,make_cam,eval_cam]"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_trains_under_bf16_autocast(case: str, tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(*CASES[case], "trainer.precision=bf16-mixed", "stages.train_cls.batch_size=4")
    results = run_pipeline(cfg, tmp_path / "run")
    losses = [v for m in results.values() for k, v in m.items() if k.startswith("train_loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert 0.0 <= results["eval_cam"]["miou"] <= 1.0
