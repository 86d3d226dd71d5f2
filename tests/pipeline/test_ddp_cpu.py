"""DDP with two CPU processes (gloo): Trainer stages and per-image stages run on both ranks and
shard the data, every other stage runs once on rank 0 while rank 1 waits for its manifest.json;
one process or two give the same CAMs, labels and scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from wsss.io import load_grey, load_label_png, load_npz
from wsss.pipeline.runner import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
ALL_RANKS = {"train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"}
STAGES = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"]


def _train_ddp(synthetic_root: Path, tmp_path: Path, run_dir: Path, *overrides: str, timeout: int) -> None:
    """``train.py`` on the tiny synthetic tree in two gloo DDP processes, one intra-op thread each."""
    args = [*TINY, f"data.synthetic.root={synthetic_root}", f"paths.log_dir={tmp_path}/logs", *overrides,
            "trainer=cpu", "trainer.devices=2", "+trainer.strategy=ddp", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread, as the DDP processes (OMP_NUM_THREADS=1): conv reductions are then
    summed in the same order (two threads land ~1e-6 apart)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    # Rank 1 ran every stage of this chain (Trainer stages and sharded per-image stages).
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


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cam_chain_same_with_one_or_two_processes(tiny_cfg, synthetic_root: Path, tmp_path: Path) -> None:
    """The same classifier, then make_cam / eval_cam / make_pseudo_labels in one process and in
    two DDP processes: identical CAMs (atol 1e-6), label PNGs and scores (abs 1e-9)."""
    chain = "pipeline.order=[train_cls,make_cam,eval_cam,make_pseudo_labels]"
    one = tmp_path / "one"
    with _one_thread():
        single = run_pipeline(tiny_cfg(chain), one)
    two = tmp_path / "two"
    _train_ddp(synthetic_root, tmp_path, two, chain, f"pipeline.from_run={one}",
               "pipeline.only=[make_cam,eval_cam,make_pseudo_labels]", timeout=380)
    rank1 = (two / "train_ddp_process_1.log").read_text()
    assert "stage make_pseudo_labels\n" in rank1 and "stage eval_cam\n" in rank1  # both sharded
    cams = sorted(p.name for p in (one / "stages/make_cam/cams").glob("*.npz"))
    assert cams == sorted(p.name for p in (two / "stages/make_cam/cams").glob("*.npz")) and cams
    for name in cams:
        a, b = load_npz(one / "stages/make_cam/cams" / name), load_npz(two / "stages/make_cam/cams" / name)
        np.testing.assert_array_equal(a["keys"], b["keys"])
        np.testing.assert_allclose(a["cams"], b["cams"], atol=1e-6)
    for folder in ("labels", "labels_crf"):
        labels = sorted((one / "stages/make_pseudo_labels" / folder).glob("*.png"))
        assert len(labels) == single["make_pseudo_labels"]["num_images"]
        for path in labels:
            np.testing.assert_array_equal(load_label_png(path), load_label_png(two / "stages/make_pseudo_labels" / folder / path.name))
    for stage, keys in (("eval_cam", ("threshold", "miou", "oracle_miou_on_eval", "holdout_miou", "num_evaluated")),
                        ("make_pseudo_labels", ("miou", "miou_crf", "ignored_fraction", "ignored_fraction_crf"))):
        metrics = json.loads((two / "stages" / stage / "metrics.json").read_text())
        for key in keys:
            assert metrics[key] == pytest.approx(single[stage][key], abs=1e-9), (stage, key)
        assert metrics["phenomena"] == single[stage]["phenomena"], stage
    assert (two / "stages/eval_cam/examples").is_dir()  # rank 0 drew the panels



@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("pipeline", "stages", "extra"), [
    ("affinitynet", ["train_affinity", "random_walk"],
     ["stages.make_affinity_labels.num_workers=0", "stages.train_affinity.max_epochs=1",
      "stages.train_affinity.crop_size=48", "stages.train_affinity.batch_size=8", "stages.random_walk.logt=4"]),
    ("irnet", ["train_irn", "calibrate_irn", "make_sem_seg_labels", "make_ins_seg_labels"],
     ["stages.make_ir_labels.num_workers=0", "stages.train_irn.max_epochs=1", "stages.train_irn.crop_size=48",
      "stages.train_irn.batch_size=8", "stages.train_irn.module.radius=5", "stages.make_sem_seg_labels.exp_times=4"]),
])  # fmt: skip
def test_walks_same_with_one_or_two_processes(pipeline: str, stages: list[str], extra: list[str], tiny_cfg,
                                              synthetic_root: Path, tmp_path: Path) -> None:  # fmt: skip
    """The random walks (AffinityNet's, IRNet's semantic and instance walks) shard their images
    over DDP ranks: two processes write the same label PNGs / instance files and report the same
    scores as one process walking with the same network. (DDP starts with the first Trainer, so
    the walk runs after its training.)"""
    instances = stages[-1] == "make_ins_seg_labels"
    if instances:
        stages = stages[:-1]
    stage = stages[-1]
    extra = [f"pipeline={pipeline}", *extra]
    chain = list(tiny_cfg(*extra).pipeline.order)
    last = "make_ins_seg_labels" if instances else stage
    # IRNet: the calibration is sharded too; the one-process rerun recomputes it from the same network
    walks = [*(["calibrate_irn"] if instances else []), stage, *(["make_ins_seg_labels"] if instances else [])]
    upto = f"pipeline.order=[{','.join(chain[: chain.index(last) + 1])}]"
    base = tmp_path / "base"  # the classifier, CAMs and relation labels, one process
    run_pipeline(tiny_cfg(*extra, f"pipeline.order=[{','.join(chain[: chain.index(stages[0])])}]"), base)
    two = tmp_path / "two"
    _train_ddp(synthetic_root, tmp_path, two, *extra, upto, f"pipeline.from_run={base}",
               f"pipeline.only=[{','.join([*stages, *walks[walks.index(stage) + 1 :]])}]", timeout=280)
    assert f"stage {stage}\n" in (two / "train_ddp_process_1.log").read_text()  # rank 1 walked its share
    one = tmp_path / "one"  # the same walk in one process, from the DDP-trained network
    with _one_thread():
        results = run_pipeline(tiny_cfg(*extra, upto, f"pipeline.from_run={two}", f"pipeline.only=[{','.join(walks)}]"),
                               one)  # fmt: skip
    single = results[stage]
    if instances:
        assert "stage calibrate_irn\n" in (two / "train_ddp_process_1.log").read_text()
        np.testing.assert_array_equal(load_npz(one / "stages/calibrate_irn/mean_shift.npz")["mean"],
                                      load_npz(two / "stages/calibrate_irn/mean_shift.npz")["mean"])  # fmt: skip
        found = sorted((one / "stages/make_ins_seg_labels/instances").glob("*.npz"))
        assert len(found) == results["make_ins_seg_labels"]["num_images"] > 0
        assert "stage make_ins_seg_labels\n" in (two / "train_ddp_process_1.log").read_text()
        for path in found:
            a, b = load_npz(path), load_npz(two / "stages/make_ins_seg_labels/instances" / path.name)
            for key in ("masks", "classes", "scores"):
                np.testing.assert_array_equal(a[key], b[key])
        metrics = json.loads((two / "stages/make_ins_seg_labels/metrics.json").read_text())
        for key in ("ap50", "num_instances", "num_evaluated"):
            assert metrics[key] == pytest.approx(results["make_ins_seg_labels"][key], abs=1e-9), key
    labels = sorted((one / "stages" / stage / "labels").glob("*.png"))
    assert len(labels) == single["num_images"] > 0
    assert sorted(p.name for p in (two / "stages" / stage / "labels").glob("*.png")) == [p.name for p in labels]
    for path in labels:
        np.testing.assert_array_equal(load_label_png(path), load_label_png(two / "stages" / stage / "labels" / path.name))
    metrics = json.loads((two / "stages" / stage / "metrics.json").read_text())
    for key in ("miou", "miou_seeds", "num_evaluated"):
        assert metrics[key] == pytest.approx(single[key], abs=1e-9), key
    assert metrics["phenomena"] == single["phenomena"]  # ratios of the same summed pixel counts


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_relation_labels_same_with_one_or_two_processes(tiny_cfg, synthetic_root: Path, tmp_path: Path) -> None:
    """IRNet's and AffinityNet's CRF relation labels and SEC's cues shard their images over DDP
    ranks: two processes (DDP started by make_cam's Trainer) write the same PNGs and report the
    same scores as one process."""
    stages = ["make_ir_labels", "make_affinity_labels", "make_cues", "make_cam_saliency", "oaa_gen_gt"]
    extra = ["pipeline=irnet", "+stage@stages.make_affinity_labels=make_affinity_labels",
             "+stage@stages.make_cues=make_cues", "+stage@stages.make_cam_saliency=make_cam_saliency",
             "+stage@stages.oaa_gen_gt=oaa_gen_gt", f"pipeline.order=[train_cls,make_cam,eval_cam,{','.join(stages)}]",
             "stages.make_ir_labels.num_workers=0", "stages.make_affinity_labels.num_workers=0",
             "stages.make_cues.num_workers=0", "stages.make_cues.split=train_aug",
             "stages.make_cam_saliency.num_workers=0", "stages.make_cam_saliency.split=train_aug",
             "+stages.oaa_gen_gt.reads.saliency=make_cam_saliency"]  # fmt: skip
    one = tmp_path / "one"
    with _one_thread():
        single = run_pipeline(tiny_cfg(*extra), one)
    two = tmp_path / "two"
    _train_ddp(synthetic_root, tmp_path, two, *extra, f"pipeline.from_run={one}",
               f"pipeline.only=[make_cam,{','.join(stages)}]", timeout=400)
    rank1 = (two / "train_ddp_process_1.log").read_text()
    cues = single["make_cues"]
    assert cues["num_evaluated"] > 0
    metrics = json.loads((two / "stages/make_cues/metrics.json").read_text())
    for key in ("num_evaluated", "coverage_split", "fg_coverage_split", "cue_precision", "cue_fg_precision"):
        assert metrics[key] == pytest.approx(cues[key], abs=1e-12), key
    names = sorted(p.name for p in (one / "stages/make_cues/cues").glob("*.png"))
    assert len(names) == cues["num_images"] and "stage make_cues\n" in rank1
    for name in names:
        np.testing.assert_array_equal(load_label_png(one / "stages/make_cues/cues" / name),
                                      load_label_png(two / "stages/make_cues/cues" / name))  # fmt: skip
    stages.remove("make_cues")
    saliency = single["make_cam_saliency"]
    metrics = json.loads((two / "stages/make_cam_saliency/metrics.json").read_text())
    assert saliency["num_evaluated"] > 0 and "stage make_cam_saliency\n" in rank1
    for key in ("precision", "recall", "f1", "mae", "cam_f1"):
        assert metrics[key] == pytest.approx(saliency[key], abs=1e-12), key
    for path in sorted((one / "stages/make_cam_saliency/saliency").glob("*.png")):
        np.testing.assert_array_equal(load_grey(path, "map"), load_grey(two / "stages/make_cam_saliency/saliency" / path.name, "map"))
    stages.remove("make_cam_saliency")
    for stage in stages:
        assert f"stage {stage}\n" in rank1  # rank 1 labelled its share
        labels = sorted((one / "stages" / stage / "labels").glob("*.png"))
        assert len(labels) == single[stage]["num_images"] > 0
        assert sorted(p.name for p in (two / "stages" / stage / "labels").glob("*.png")) == [p.name for p in labels]
        for path in labels:
            np.testing.assert_array_equal(load_label_png(path), load_label_png(two / "stages" / stage / "labels" / path.name))
        metrics = json.loads((two / "stages" / stage / "metrics.json").read_text())
        for key in ("miou", "miou_confident", "ignored_fraction", "num_evaluated"):
            if key in single[stage] or stage != "oaa_gen_gt":  # OAA's labels have no confident-only score
                assert metrics[key] == pytest.approx(single[stage][key], abs=1e-9), (stage, key)
        assert metrics["phenomena"] == single[stage]["phenomena"]
