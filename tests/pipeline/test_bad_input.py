"""Bad input never wastes a run and never gives a silently wrong number (issue 16).

Each damaged dataset / mistaken config is refused BEFORE any stage, with a message naming the file
or config key. Most cases call the pre-flight functions on configs composed as ``train.py`` would
(fast); a few run ``python train.py`` itself to check the exit code and that nothing trained.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import compose_cfg
from wsss.data.check import DataCheckError, check_data, preflight_data
from wsss.data.sources import open_source
from wsss.pipeline.lock import RunDirLocked, acquire_run_lock, release_run_lock, run_lock
from wsss.pipeline.validate import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[2]
VAL_ID, TRAIN_ID = "2008_000005", None  # a val image of the tiny tree (checked in the fixture)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def voc(synthetic_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny VOC tree (29 images of 64x48)."""
    root = tmp_path / "VOC2012"
    shutil.copytree(synthetic_root, root)
    return root


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()


def _cfg(root: Path, *overrides: str):
    return compose_cfg([f"data.root={root}", "data.check.workers=1", *overrides])


# --------------------------------------------------------------------------- damaged data
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def truncated_jpeg(root: Path) -> str:
    name = _ids(root, "train")[0]
    _truncate(root / "JPEGImages" / f"{name}.jpg")
    return f"{name}.jpg"


def zero_byte_jpeg(root: Path) -> str:
    name = _ids(root, "val")[1]
    (root / "JPEGImages" / f"{name}.jpg").write_bytes(b"")
    return f"{name}.jpg"


def missing_image(root: Path) -> str:
    name = _ids(root, "val")[2]
    (root / "JPEGImages" / f"{name}.jpg").unlink()
    return f"{name}.jpg"


def mask_wrong_size(root: Path) -> str:
    name = _ids(root, "val")[0]
    path = root / "SegmentationClass" / f"{name}.png"
    with Image.open(path) as image:
        image.resize((16, 12), Image.NEAREST).save(path)
    return f"SegmentationClass/{name}.png"


def mask_value_above_classes(root: Path) -> str:
    name = _ids(root, "train")[1]
    path = root / "SegmentationClass" / f"{name}.png"
    with Image.open(path) as image:
        mask = np.array(image)
        palette = image.getpalette()
    mask[0, 0] = 50
    out = Image.fromarray(mask, mode="P")
    out.putpalette(palette)
    out.save(path)
    return f"SegmentationClass/{name}.png"


def truncated_mask(root: Path) -> str:
    name = _ids(root, "val")[3]
    _truncate(root / "SegmentationClass" / f"{name}.png", 0.3)
    return f"{name}.png"


def missing_val_mask(root: Path) -> str:
    name = _ids(root, "val")[4]
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        (root / folder / f"{name}.png").unlink(missing_ok=True)
    return name


def repeated_split_ids(root: Path) -> str:
    path = root / "ImageSets/Segmentation/val.txt"
    ids = _ids(root, "val")
    path.write_text("\n".join(ids + ids[:3]) + "\n")  # the issue: 3 repeats counted twice
    return "val.txt"


def empty_split(root: Path) -> str:
    (root / "ImageSets/Segmentation/val.txt").write_text("\n")
    return "val.txt"


def non_utf8_split(root: Path) -> str:
    path = root / "ImageSets/Segmentation/val.txt"
    path.write_bytes(path.read_bytes() + b"2008_\xff\n")
    return "val.txt"


def malformed_annotation(root: Path) -> str:
    name = _ids(root, "train")[2]
    (root / "Annotations" / f"{name}.xml").write_text("<annotation><object><name>dog")
    return f"{name}.xml"


DATA_CASES: dict[str, Callable[[Path], str]] = {f.__name__: f for f in (
    truncated_jpeg, zero_byte_jpeg, missing_image, mask_wrong_size, mask_value_above_classes,
    truncated_mask, missing_val_mask, repeated_split_ids, empty_split, non_utf8_split,
    malformed_annotation)}  # fmt: skip


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_damaged_voc_tree_stops_before_training_naming_the_file(
    voc: Path, tmp_path: Path, case: str
) -> None:
    culprit = DATA_CASES[case](voc)
    run_dir = tmp_path / "run"
    with pytest.raises(DataCheckError) as err:
        preflight_data(_cfg(voc), run_dir)
    assert culprit in str(err.value)
    assert "nothing was trained" in str(err.value)
    assert not (run_dir / "stages").exists()


def test_the_untouched_tree_passes_and_the_second_check_is_cached(voc: Path) -> None:
    cfg = _cfg(voc)
    first = check_data(cfg)
    assert first.ok, first.problems
    assert first.num_images == 29 and first.num_cached == 0
    assert set(first.splits) == {"train_aug", "val", "train"}
    second = check_data(cfg)
    assert second.ok and second.num_cached == 29
    # a changed file is checked again, the others come from the cache
    truncated_jpeg(voc)
    third = check_data(cfg)
    assert third.num_cached == 28 and len(third.bad_ids) == 1


def test_parallel_workers_find_the_same_problems(voc: Path) -> None:
    culprit = truncated_jpeg(voc)
    report = check_data(_cfg(voc), workers=2, use_cache=False)
    assert [p for p in report.problems if culprit in p], report.problems
    assert len(report.bad_ids) == 1


def test_on_error_skip_records_and_really_excludes_the_bad_images(
    voc: Path, tmp_path: Path
) -> None:
    culprit = truncated_jpeg(voc)
    bad = culprit.removesuffix(".jpg")
    cfg = _cfg(voc, "data.check.on_error=skip")
    report = preflight_data(cfg, tmp_path / "run")
    assert list(report.bad_ids) == [bad]
    skipped = tmp_path / "run/data_check/skipped.txt"
    assert skipped.read_text().split() == [bad]
    assert culprit in (tmp_path / "run/data_check/problems.txt").read_text()
    assert cfg.data.source.exclude == str(skipped)
    for split in ("train_aug", "train", "val"):  # every reader the stages open leaves it out
        src = open_source(cfg.data.source, voc, split, splits=cfg.data.splits)
        assert bad not in src.ids
    assert len(open_source(cfg.data.source, voc, "train").ids) == len(_ids(voc, "train")) - 1


def test_split_problems_are_never_skipped(voc: Path, tmp_path: Path) -> None:
    repeated_split_ids(voc)
    with pytest.raises(DataCheckError, match="duplicate id"):
        preflight_data(_cfg(voc, "data.check.on_error=skip"), tmp_path / "run")


def test_voc_reader_refuses_repeated_ids(voc: Path) -> None:
    repeated_split_ids(voc)
    from wsss.data.voc import VOCSource

    with pytest.raises(ValueError, match=r"val.txt, line \d+: duplicate id"):
        VOCSource(voc, "val")


# --------------------------------------------------------------------------- other formats
def test_folder_with_non_utf8_labels_csv_names_the_file_and_line(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from tests.data.fake_folder import write_folder_from_voc
    from wsss.data.folder import FolderSource

    root = write_folder_from_voc(synthetic_root, tmp_path / "folder")
    labels = root / "labels.csv"
    lines = labels.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b"\xe9,", 1)  # a Latin-1 byte in an id
    labels.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"labels.csv, line 4: byte 0xe9 is not UTF-8"):
        FolderSource(root, "all")
    cfg = compose_cfg([f"data.root={root}", "data=folder", "data.check.workers=1"], tiny=False)
    report = check_data(cfg)
    assert any("labels.csv, line 4" in p for p in report.problems), report.problems


def test_folder_truncated_jpeg_is_caught_by_both_checkers(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from tests.data.fake_folder import write_folder_from_voc
    from wsss.data.folder_check import check_folder

    root = write_folder_from_voc(synthetic_root, tmp_path / "folder")
    jpeg = min((root / "images").glob("*.jpg"))
    _truncate(jpeg)
    assert any(jpeg.name in p and "decode" in p for p in check_folder(root).problems)
    cfg = compose_cfg([f"data.root={root}", "data=folder", "data.check.workers=1"], tiny=False)
    with pytest.raises(DataCheckError, match=jpeg.name):
        preflight_data(cfg, tmp_path / "run")


def test_coco_truncated_image_is_named(synthetic_root: Path, tmp_path: Path) -> None:
    from tests.data.fake_coco import write_coco_from_voc

    root = write_coco_from_voc(synthetic_root, tmp_path / "coco")
    jpeg = min((root / "val2014").glob("*.jpg"))
    _truncate(jpeg)
    cfg = compose_cfg([f"data.root={root}", "data=coco", "data.check.workers=1"], tiny=False)
    report = check_data(cfg)
    assert [p for p in report.problems if jpeg.name in p], report.problems


def test_context_mask_of_the_wrong_size_is_named(synthetic_root: Path, tmp_path: Path) -> None:
    from tests.data.fake_context import write_context_from_voc

    root = write_context_from_voc(synthetic_root, tmp_path / "context")
    jpeg = min((root / "JPEGImages").glob("*.jpg"))
    with Image.open(jpeg) as image:
        image.convert("RGB").resize((20, 10)).save(jpeg)
    cfg = compose_cfg([f"data.root={root}", "data=context", "data.check.workers=1"], tiny=False)
    report = check_data(cfg)
    assert [p for p in report.problems if "10x20" in p and jpeg.name in p], report.problems


# --------------------------------------------------------------------------- saliency: one key
def test_the_readme_saliency_key_works_as_written(voc: Path, tmp_path: Path) -> None:
    """README: EPS reads data.module.saliency_dir (maps from `python -m wsss.data.saliency`)."""
    maps = tmp_path / "saliency"
    shutil.move(voc / "SALImages", maps)  # our own VOC-format tree: no SALImages under the root
    cfg = _cfg(voc, "method=eps", f"data.module.saliency_dir={maps}")
    validate_config(cfg)
    assert cfg.method.saliency_dir == str(maps)  # the method reads the one key
    assert check_data(cfg).ok
    with pytest.raises(
        DataCheckError, match="data.module.saliency_dir=SALImages: saliency folder not found"
    ):
        preflight_data(_cfg(voc, "method=eps"), tmp_path / "run")
    with pytest.raises(
        ConfigError, match="method.saliency_dir=.*set data.module.saliency_dir instead"
    ):
        validate_config(_cfg(voc, "method=eps", f"method.saliency_dir={maps}"))


def test_eps_corrupt_saliency_png_is_named(voc: Path, tmp_path: Path) -> None:
    name = _ids(voc, "train")[0]
    _truncate(voc / "SALImages" / f"{name}.png", 0.3)
    with pytest.raises(DataCheckError, match=f"SALImages/{name}.png"):
        preflight_data(_cfg(voc, "method=eps"), tmp_path / "run")


# --------------------------------------------------------------------------- config values
CONFIG_CASES = [
    (["stages.train_cls.max_epochs=abc"], "stages.train_cls.max_epochs='abc'"),
    (["stages.train_cls.max_epochs=-1"], "stages.train_cls.max_epochs=-1"),
    (["stages.train_cls.max_epochs=0"], "untrained network"),
    (["stages.train_seg.max_epochs=2.5"], "stages.train_seg.max_epochs=2.5"),
    (["stages.train_cls.batch_size=0"], "stages.train_cls.batch_size=0"),
    (["stages.train_cls.crop_size=-8"], "stages.train_cls.crop_size=-8"),
    (["stages.make_cam.scales=[1.0,0]"], "stages.make_cam.scales"),
    (["stages.eval_cam.threshold=1.5"], "stages.eval_cam.threshold=1.5"),
    (["stages.eval_cam.thresholds=[0.1,2]"], "stages.eval_cam.thresholds"),
    (["stages.train_cls.scale_range=[1.5,0.5]"], "stages.train_cls.scale_range"),
    (["protocol.holdout_fraction=-0.1"], "protocol.holdout_fraction"),
    (["data.module.num_workers=-1"], "data.module.num_workers"),
    (["pipeline.from_run=/no/such/run"], "pipeline.from_run=/no/such/run"),
    (["+pipeline.inputs.make_cam=/no/such/dir"], "pipeline.inputs.make_cam"),
    (["backbone.weights=/no/such/weights.pth"], "backbone.weights=/no/such/weights.pth"),
    (["data.check.on_error=ignore"], "data.check.on_error"),
    (["data.root=/no/such/VOC2012"], "data.root=/no/such/VOC2012"),
]


@pytest.mark.parametrize("overrides,key", CONFIG_CASES, ids=[c[0][0] for c in CONFIG_CASES])
def test_bad_config_values_are_refused_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(overrides))
    assert key in str(err.value)


def test_valid_configs_pass(tmp_path: Path) -> None:
    for overrides in ([], ["pipeline=irnet"], ["pipeline=sec"], ["method=seam", "pipeline=affinitynet"],
                      ["method=oaa_iam", "pipeline=oaa_iam"], ["pipeline=iterative"],
                      ["backbone=efficientnet_lite0", "backbone.weights=package"]):  # fmt: skip
        validate_config(compose_cfg(overrides))
    (tmp_path / "run/stages").mkdir(parents=True)
    validate_config(compose_cfg([f"pipeline.from_run={tmp_path / 'run'}"]))


def test_folder_with_a_missing_root_speaks_of_a_folder() -> None:
    with pytest.raises(
        ConfigError,
        match=r"data.root=/no/such/folder: directory not found; expected folder layout",
    ):
        validate_config(compose_cfg(["data=folder", "data.root=/no/such/folder"], tiny=False))


# --------------------------------------------------------------------------- loaders name the file
def test_loaders_name_the_file(tmp_path: Path) -> None:
    import torch

    from wsss.io import load_label_png, load_npz, load_rgb, load_weights, save_npz

    npz = tmp_path / "cam.npz"
    save_npz(npz, cams=np.zeros((1, 2, 2), np.float32))
    _truncate(npz)
    with pytest.raises(ValueError, match=f"cannot read {npz} as .npz arrays"):
        load_npz(npz)
    weights = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    _truncate(weights)
    with pytest.raises(ValueError, match=f"cannot load model weights {weights}"):
        load_weights(weights, "model weights")
    jpeg = tmp_path / "x.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(jpeg)
    _truncate(jpeg)
    with pytest.raises(ValueError, match=f"cannot decode image {jpeg}"):
        load_rgb(jpeg)
    png = tmp_path / "m.png"
    png.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"cannot read {png} as a label PNG"):
        load_label_png(png)
    assert not zipfile.is_zipfile(npz)


# --------------------------------------------------------------------------- the run-dir lock
def _holder(run_dir: Path) -> subprocess.Popen:
    code = (
        f"from wsss.pipeline.lock import acquire_run_lock; import sys, time; "
        f"acquire_run_lock({str(run_dir)!r}); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_run_dir_stops_and_a_dead_holder_does_not_block(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid}"):
            acquire_run_lock(run_dir)
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / ".lock").is_file()  # the stale file stays, its lock died with the process
    with run_lock(run_dir):
        acquire_run_lock(run_dir)  # re-entrant in one process
    release_run_lock(run_dir)


# --------------------------------------------------------------------------- python train.py
def _train(*overrides: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def test_train_py_refuses_a_bad_value_before_anything_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _train("stages.train_cls.max_epochs=abc", f"hydra.run.dir={run_dir}")
    assert done.returncode != 0
    assert "stages.train_cls.max_epochs='abc'" in done.stderr
    assert not (run_dir / "stages").exists()


def test_train_py_stops_on_a_truncated_jpeg_before_training(voc: Path, tmp_path: Path) -> None:
    culprit = truncated_jpeg(voc)
    run_dir = tmp_path / "run"
    done = _train(f"data.root={voc}", f"hydra.run.dir={run_dir}", "data.check.workers=1")
    assert done.returncode != 0
    assert culprit in done.stderr and "data.check.on_error=skip" in done.stderr
    assert not (run_dir / "stages").exists()


def test_train_py_second_process_on_one_run_dir_stops_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        done = _train(f"hydra.run.dir={run_dir}")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    assert f"in use by pid {holder.pid}" in done.stderr
    assert not (run_dir / ".hydra").exists()  # Hydra did not overwrite the holder's config


def test_check_command_lists_the_problems(voc: Path, capsys: pytest.CaptureFixture) -> None:
    from wsss.data.check import main

    assert main([f"data.root={voc}", "data.check.workers=1"]) == 0
    assert "29 images" in capsys.readouterr().out
    culprit = mask_value_above_classes(voc)
    assert main([f"data.root={voc}", "data.check.workers=1"]) == 1
    out = capsys.readouterr().out
    assert f"problem: {voc / culprit}: mask values [50] are not valid for 20 classes" in out
