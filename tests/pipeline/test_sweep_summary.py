"""A 2-trial Optuna sweep over a finished tiny run's pseudo-label step, and its summary table."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, compose_cfg
from wsss.pipeline.sweep_summary import main as summary_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf/hparams_search").glob("*.yaml")))
def test_search_spaces_compose(name: str) -> None:
    cfg = compose_cfg([f"hparams_search={name}"])
    assert cfg.objective.metric.startswith("miou")
    assert cfg.objective.stage in cfg.pipeline.order


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_trial_optuna_sweep_writes_one_summary(tiny_run: Path, synthetic_root: Path,
                                                   tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    overrides = [*TINY, f"data.synthetic.root={synthetic_root}", f"paths.log_dir={tmp_path}/logs",
                 "hparams_search=pseudo_labels", f"pipeline.from_run={tiny_run}",
                 "pipeline.only=[make_pseudo_labels]", "hydra/launcher=basic",
                 "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                 "stages.make_pseudo_labels.crf_params.n_iter=2", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WSSS_PROGRESS": "off"}
    done = subprocess.run([sys.executable, "train.py", "-m", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1"]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = [float(r["objective_value"]) for r in rows]
    assert best["best_value"] == pytest.approx(max(values), abs=1e-9)
    for row in rows:
        assert row["objective"] == "make_pseudo_labels/miou_crf"
        assert float(row["make_pseudo_labels/miou_crf"]) == float(row["objective_value"])
        assert "stages.make_pseudo_labels.threshold=" in row["overrides"]
        # the reused stages of the finished run are in the table too
        assert float(row["eval_cam/miou"]) >= 0.0
    thresholds = {r["overrides"].split("threshold=")[1].split()[0] for r in rows}
    assert len(thresholds) == 2  # two different trials
    markdown = (sweep_dir / "sweep_summary.md").read_text()
    assert markdown.count("\n| ") == 3  # header + 2 jobs
    first = markdown.splitlines()[4]
    assert f"{max(values):.4f}" in first  # best first

    (sweep_dir / "sweep_summary.csv").unlink()  # the command-line entry point rewrites it
    summary_main([str(sweep_dir)])
    assert len(list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))) == 2
