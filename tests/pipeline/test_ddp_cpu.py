"""DDP with two CPU processes (gloo): Trainer stages run on both ranks and shard the data, every
other stage runs once on rank 0 while rank 1 waits for its metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
ALL_RANKS = {"train_cls", "make_cam", "train_seg"}
STAGES = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cam_pipeline_under_two_process_ddp(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"data.synthetic.root={synthetic_root}", "trainer=cpu", "trainer.devices=2",
                 "+trainer.strategy=ddp", "data.module.batch_size=4", "stages.train_cls.batch_size=4",
                 "stages.train_seg.batch_size=4", f"hydra.run.dir={run_dir}",
                 # a frozen stem: its BatchNorm must stay frozen on every rank (SyncBatchNorm cannot
                 # run on CPU; tests/models/test_backbone_contract.py converts to it)
                 "backbone.frozen_stages=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in STAGES:
        assert (run_dir / "stages" / stage / "metrics.json").is_file(), stage
    # Both ranks' predicted CAMs are on disk: one file per image of the stage.
    cams = json.loads((run_dir / "stages/make_cam/metrics.json").read_text())
    assert len(list((run_dir / "stages/make_cam/cams").glob("*.npz"))) == cams["num_images"]
    # Rank 1 ran exactly the Trainer stages.
    rank1 = (run_dir / "train_ddp_process_1.log").read_text()
    ran = {s for s in STAGES if f"stage {s}\n" in rank1}
    assert ran == ALL_RANKS
    # The frozen BatchNorm kept its initial statistics under DDP; the others trained.
    state = torch.load(run_dir / "stages/train_cls/model.pt", weights_only=True)
    assert torch.equal(state["backbone.stem.1.running_mean"], torch.zeros(64))
    assert torch.equal(state["backbone.stem.1.running_var"], torch.ones(64))
    assert not torch.equal(state["backbone.layer1.0.bn1.running_mean"], torch.zeros(64))
    evaluated = json.loads((run_dir / "stages/eval_seg/metrics.json").read_text())
    assert 0.0 <= evaluated["miou"] <= 1.0
