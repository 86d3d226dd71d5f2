"""A fit stage killed mid-epoch resumes from its last checkpoint when the run dir is run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, compose_cfg
from wsss.pipeline.runner import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
# 4 epochs of 5 steps (20 train_aug images, batch 4); last.ckpt at every epoch end only, so the
# kill below lands after an epoch-end checkpoint and before the next one.
TRAIN = ["pipeline.only=[train_cls]", "stages.train_cls.max_epochs=4", "stages.train_cls.batch_size=4",
         "pipeline.checkpoint_every_n_steps=0"]


def _overrides(synthetic_root: Path, logs: Path) -> list[str]:
    return [*TINY, f"data.synthetic.root={synthetic_root}", f"paths.log_dir={logs}", *TRAIN]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_training_resumes_from_last_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    overrides = _overrides(synthetic_root, tmp_path / "logs")
    killed = tmp_path / "killed"
    last = killed / "stages/train_cls/checkpoints/last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "train.py", *overrides, f"hydra.run.dir={killed}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not last.is_file():  # the first epoch-end checkpoint
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-epoch 2: nothing gets to clean up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "stages/train_cls/manifest.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)  # pickle-free checkpoint
    resumed_step = int(state["global_step"])
    assert 0 < resumed_step < 20 and "hyper_parameters" not in state

    cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={tmp_path}/logs", *TRAIN])
    # One intra-op thread in process too, as in the killed subprocess: another thread count sums
    # the convolutions in another order, and the comparison below would measure that instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = run_pipeline(cfg, killed)["train_cls"]
        whole = run_pipeline(cfg, tmp_path / "whole")["train_cls"]
    finally:
        torch.set_num_threads(threads)
    manifest = json.loads((killed / "stages/train_cls/manifest.json").read_text())
    assert manifest["resumed"][0]["global_step"] == resumed_step
    assert again["steps"] == 20  # the global step continued to the same end

    assert whole["steps"] == 20
    # Resumed at an epoch end with the RNG states restored, the run draws the same batches:
    # the same metrics and weights as an uninterrupted run (CPU; tolerance 1e-5).
    for key in ("train_loss", "val_mAP"):
        assert again[key] == pytest.approx(whole[key], abs=1e-5), key
    a = torch.load(killed / "stages/train_cls/model.pt", weights_only=True)
    b = torch.load(tmp_path / "whole/stages/train_cls/model.pt", weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in b)
