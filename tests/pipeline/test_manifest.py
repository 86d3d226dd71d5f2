"""Manifests: what a finished stage records, and reuse only when config and inputs still match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from tests.conftest import compose_cfg
from wsss.io import load_npz
from wsss.pipeline.manifest import config_diff, fingerprint, list_artifacts
from wsss.pipeline.per_image import pending, valid_npz
from wsss.pipeline.runner import InputArtifactError, ReuseMismatchError, run_pipeline

FIRST = ["train_cls", "make_cam", "eval_cam"]


def _cfg(synthetic_root: Path, logs: Path, *overrides: str):
    cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={logs}", *overrides])
    with open_dict(cfg):
        cfg.logger.csv.save_dir = str(logs)
    return cfg


@pytest.fixture(scope="module")
def base_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train_cls -> make_cam -> eval_cam once for this module (copied before any change)."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    run_pipeline(_cfg(synthetic_root, run_dir.parent / "logs", f"pipeline.only=[{','.join(FIRST)}]"), run_dir)
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def test_manifest_records_config_inputs_and_artifacts(base_run: Path, synthetic_root: Path) -> None:
    manifest = json.loads((base_run / "stages/make_cam/manifest.json").read_text())
    cams = sorted((base_run / "stages/make_cam/cams").glob("*.npz"))
    assert manifest["stage"] == "make_cam"
    assert manifest["config"]["stage"]["scales"] == [1.0, 0.5]
    assert manifest["config"]["global"]["backbone"]["name"] == "resnet18"
    assert manifest["config"]["global"]["method"]["_target_"] == "wsss.methods.cam.CAMModule"
    train = json.loads((base_run / "stages/train_cls/manifest.json").read_text())
    assert manifest["inputs"] == {"model": {"stage": "train_cls", "dir": str((base_run / "stages/train_cls").resolve()),
                                            "manifest_hash": train["manifest_hash"]}}  # fmt: skip
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {f"cams/{p.name}" for p in cams} <= paths and "metrics.json" in paths
    assert manifest["num_artifacts"] == len(paths) == len(cams) + 1  # cams + metrics.json
    assert manifest["versions"]["torch"] and "checkpoints" not in str(paths)
    # The config hash is what a rerun compares: same config, same hash.
    cfg = _cfg(synthetic_root, base_run.parent / "logs")
    assert fingerprint(cfg, "make_cam")["config_hash"] == manifest["config_hash"]
    assert not (base_run / "stages/train_cls/checkpoints").exists()  # resume state is removed


@pytest.mark.parametrize("override, key", [("method=seam", "method._target_"),
                                           ("backbone=resnet50", "backbone.name")])
def test_from_run_with_another_method_or_backbone_is_refused(base_run: Path, synthetic_root: Path,
                                                               tmp_path: Path, override: str, key: str) -> None:
    cfg = _cfg(synthetic_root, tmp_path / "logs", f"pipeline.from_run={base_run}", override)
    with pytest.raises(ReuseMismatchError) as err:
        run_pipeline(cfg, tmp_path / "run")
    text = str(err.value)
    assert "stage train_cls" in text and key in text and "nothing was run" in text
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_reuse_force_reuses_and_records_it(base_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(synthetic_root, tmp_path / "logs", f"pipeline.from_run={base_run}", "pipeline.only=[eval_cam]",
               "stages.make_cam.flip=false", "pipeline.reuse=force")
    run_pipeline(cfg, tmp_path / "run")
    manifest = json.loads((tmp_path / "run/stages/eval_cam/manifest.json").read_text())
    assert manifest["reuse_forced"]["make_cam"] == ["stages.make_cam.flip: true -> false"]
    assert manifest["inputs"]["cams"]["dir"] == str((base_run / "stages/make_cam").resolve())


def test_changed_stage_config_in_this_run_is_rerun_not_reused(base_run: Path, synthetic_root: Path,
                                                              tmp_path: Path) -> None:
    run_dir = _copy(base_run, tmp_path)
    cfg = _cfg(synthetic_root, tmp_path / "logs", "stages.eval_cam.threshold=0.3",
               "protocol.threshold_mode=fixed", "pipeline.order=[train_cls,make_cam,eval_cam]")
    results = run_pipeline(cfg, run_dir)
    assert results["eval_cam"]["threshold"] == 0.3  # rerun with the new config
    # The protocol does not shape the classifier or the CAMs: both are reused.
    assert results["make_cam"] == json.loads((base_run / "stages/make_cam/metrics.json").read_text())
    assert results["train_cls"] == json.loads((base_run / "stages/train_cls/metrics.json").read_text())
    replaced = [p.name for p in (run_dir / "replaced").iterdir()]
    assert len(replaced) == 1 and replaced[0].startswith("eval_cam-")


def test_truncated_cam_in_reused_stage_is_refused(base_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    copy = _copy(base_run, tmp_path)
    victim = min((copy / "stages/make_cam/cams").glob("*.npz"))
    victim.write_bytes(victim.read_bytes()[:50])
    cfg = _cfg(synthetic_root, tmp_path / "logs", f"pipeline.from_run={copy}", "pipeline.only=[eval_cam]")
    with pytest.raises(ReuseMismatchError, match=f"{victim}.*written by stage make_cam"):
        run_pipeline(cfg, tmp_path / "run")


def test_corrupt_cam_of_same_size_names_file_and_stage(base_run: Path, synthetic_root: Path,
                                                       tmp_path: Path) -> None:
    copy = _copy(base_run, tmp_path)
    victim = min((copy / "stages/make_cam/cams").glob("*.npz"))
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size: only loading can tell
    cfg = _cfg(synthetic_root, tmp_path / "logs", f"pipeline.from_run={copy}", "pipeline.only=[eval_cam]")
    with pytest.raises(InputArtifactError) as err:
        run_pipeline(cfg, tmp_path / "run")
    text = str(err.value)
    assert str(victim) in text and "stage 'make_cam'" in text and "rerun stage 'make_cam'" in text


def test_interrupted_make_cam_resumes_only_missing_or_broken_files(base_run: Path, synthetic_root: Path,
                                                                   tmp_path: Path) -> None:
    run_dir = _copy(base_run, tmp_path)
    stage = run_dir / "stages/make_cam"
    # A killed attempt: no manifest / metrics yet, some CAMs missing, one truncated file (as a
    # non-atomic writer would leave it), and the temp file of a write that never finished.
    (stage / "manifest.json").unlink()
    (stage / "metrics.json").unlink()
    cams = sorted((stage / "cams").glob("*.npz"))
    originals = {p.name: load_npz(p) for p in cams[:3]}
    for p in cams[:2]:
        p.unlink()
    cams[2].write_bytes(cams[2].read_bytes()[:100])
    (stage / "cams" / f".{cams[3].name}.abc.npz").write_bytes(b"half")
    kept = {p.name: p.stat().st_mtime_ns for p in cams[3:]}
    assert len(pending([p.stem for p in cams], lambda i: stage / "cams" / f"{i}.npz",
                       lambda p: valid_npz(p, ("cams",)))) == 3  # fmt: skip
    results = run_pipeline(_cfg(synthetic_root, tmp_path / "logs", "pipeline.only=[make_cam]"), run_dir)
    assert results["make_cam"]["num_predicted"] == 3
    assert results["make_cam"]["num_resumed"] == len(cams) - 3
    assert {p.name: p.stat().st_mtime_ns for p in cams[3:]} == kept  # finished images untouched
    assert not list((stage / "cams").glob(".*"))  # the temp file is gone
    for name, arrays in originals.items():  # recomputed: the same CAMs as the first attempt
        again = load_npz(stage / "cams" / name)
        np.testing.assert_array_equal(again["keys"], arrays["keys"])
        np.testing.assert_allclose(again["cams"], arrays["cams"], atol=1e-6)
    assert (stage / "manifest.json").is_file()
    assert len(list_artifacts(stage)) == len(cams) + 1


def test_config_diff_lists_changed_keys() -> None:
    assert config_diff({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": [1, 2]}, "d": 0}) == [
        "a.b: 1 -> 2", 'd: "<absent>" -> 0']


def test_resumed_run_prefers_its_own_stages_over_from_run(base_run: Path, synthetic_root: Path,
                                                         tmp_path: Path) -> None:
    """An interrupted `pipeline.from_run=X` run restarted with the same command: stages after one this
    run finished itself are run here, not compared with X's copies (made from other inputs)."""
    run_dir = tmp_path / "run"
    (run_dir / "stages").mkdir(parents=True)
    shutil.copytree(base_run / "stages/make_cam", run_dir / "stages/make_cam")  # finished here
    cfg = _cfg(synthetic_root, tmp_path / "logs", f"pipeline.from_run={base_run}",
               "stages.eval_cam.threshold=0.3", "protocol.threshold_mode=fixed",
               "pipeline.order=[train_cls,make_cam,eval_cam]")
    results = run_pipeline(cfg, run_dir)  # X's eval_cam (another threshold) is not a reuse candidate
    assert results["eval_cam"]["threshold"] == 0.3
    assert (run_dir / "stages/eval_cam/manifest.json").is_file()
    assert not (run_dir / "stages/train_cls").exists()  # still reused from X


def test_added_stage_keys_at_their_old_behaviour_keep_earlier_runs_reusable(synthetic_root: Path,
                                                                            tmp_path: Path) -> None:
    from wsss.pipeline.manifest import stage_config

    cfg = _cfg(synthetic_root, tmp_path / "logs")
    default = stage_config(cfg, "make_cam")
    assert "normalize" not in default and "resize" not in default and default["scales"]
    seam = _cfg(synthetic_root, tmp_path / "logs", "stages.make_cam.normalize=minmax")
    assert stage_config(seam, "make_cam")["normalize"] == "minmax"
    assert fingerprint(seam, "make_cam")["config_hash"] != fingerprint(cfg, "make_cam")["config_hash"]
