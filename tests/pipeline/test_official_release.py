"""experiment=irn_release: IRN's released weights run through our stages, nothing trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_cfg
from wsss.models.official.fill import official_state_from_fixture
from wsss.pipeline.runner import run_pipeline

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"


def release(tmp_path: Path, name: str) -> Path:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        state = official_state_from_fixture(dict(data))
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_irn_release_runs_through_our_stages(tiny_cfg, tmp_path) -> None:
    cam, irn = release(tmp_path, "irn_cam"), release(tmp_path, "irn_irn")
    cfg = tiny_cfg(
        "experiment=irn_release",
        f"stages.train_cls.from_checkpoint={cam}",
        f"stages.train_irn.from_checkpoint={irn}",
        "pipeline.order=[train_cls,make_cam,eval_cam,train_irn,calibrate_irn,make_sem_seg_labels]",
        "stages.train_irn.module.pad_to=96",
        "stages.make_cam.scales=[1.0]",
        "stages.make_sem_seg_labels.exp_times=2",
        "stages.eval_cam.num_examples=0",
    )
    run_dir = tmp_path / "run"
    results = run_pipeline(cfg, run_dir)
    assert results["train_cls"]["checkpoint_format"] == "irn_cam"
    # IRN's make_cam: PIL-bicubic inputs, stride-4 CAMs stored for the walk.
    assert results["make_cam"]["resize"] == "pil_bicubic" and results["make_cam"]["upsample"] == "irn"
    cam_file = next((run_dir / "stages/make_cam/cams").glob("*.npz"))
    with np.load(cam_file) as cams:
        assert cams["strided"].shape[-2:] == tuple((s - 1) // 4 + 1 for s in cams["cams"].shape[-2:])
    # The release's own displacement mean shift is kept (IRN's inference uses the stored one).
    shift = official_state_from_fixture(dict(np.load(FIXTURES / "irn_irn.npz")))["mean_shift.running_mean"]
    assert results["train_irn"]["mean_shift"] == pytest.approx(shift.tolist())
    calibration = results["calibrate_irn"]
    assert calibration["source"] == "checkpoint" and calibration["num_images"] == 0
    assert [calibration["mean_dy"], calibration["mean_dx"]] == pytest.approx(shift.tolist())
    # recompute_release=true averages the release's displacements over the split instead.
    from omegaconf import open_dict

    from wsss.pipeline.context import StageContext
    from wsss.pipeline.stages import calibrate_irn

    with open_dict(cfg):
        cfg.stages.calibrate_irn.recompute_release = True
    redone = calibrate_irn.run(StageContext(cfg, "calibrate_irn", run_dir))
    assert redone["source"] == "recomputed" and redone["num_images"] > 0
    assert abs(redone["mean_dy"] - float(shift[0])) > 1e-3
    assert (
        results["train_cls"]["epochs"] == 0 and results["train_irn"]["checkpoint_format"] == "irn"
    )
    saved = torch.load(run_dir / "stages/train_cls/model.pt", weights_only=True)
    expected = official_state_from_fixture(dict(np.load(FIXTURES / "irn_cam.npz")))
    torch.testing.assert_close(saved["classifier.weight"], expected["classifier.weight"])
    assert 0.0 <= results["eval_cam"]["miou"] <= 1.0
    sem = results["make_sem_seg_labels"]
    assert sem["bg_threshold"] == 0.25 and 0.0 <= sem["miou"] <= 1.0
    assert (
        len(list((run_dir / "stages/make_sem_seg_labels/labels").glob("*.png")))
        == sem["num_images"]
        > 0
    )


def test_psa_release_composes_psa_networks_and_walk() -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg(
        [
            "experiment=psa_release",
            "stages.train_cls.from_checkpoint=a.pth",
            "stages.train_affinity.from_checkpoint=b.pth",
        ],
        tiny=False,
    )
    assert cfg.backbone.name == "resnet38" and cfg.stages.random_walk.sources == "psa"
    assert cfg.stages.train_cls.checkpoint_format == "psa"
    module = instantiate(cfg.stages.train_affinity.module)
    assert module.levels == ["conv4", "conv5", "conv6"] and module.stride == 8


def test_psa_release_vgg16_composes_loads_and_passes_preflight(tiny_cfg, tmp_path) -> None:
    from hydra.utils import instantiate

    from wsss.models.official import FORMATS
    from wsss.pipeline.preflight import check

    cls, aff = release(tmp_path, "psa_vgg_cls"), release(tmp_path, "psa_vgg_aff")
    cfg = tiny_cfg("experiment=psa_release_vgg16", f"stages.train_cls.from_checkpoint={cls}",
                   f"stages.train_affinity.from_checkpoint={aff}")  # fmt: skip
    assert check(cfg) == []
    assert cfg.stages.make_cam.resize == "pil_bicubic" and cfg.stages.random_walk.sources == "psa"
    classifier = instantiate(cfg.method)
    assert classifier.sqrt_cam and classifier.backbone.fc6_dilation == 1
    FORMATS[cfg.stages.train_cls.checkpoint_format](classifier, torch.load(cls, weights_only=True), str(cls))
    affinity = instantiate(cfg.stages.train_affinity.module)
    assert affinity.backbone.fc6_dilation == 4 and affinity.levels == ["conv4", "conv5", "fc7"]
    fmt = cfg.stages.train_affinity.checkpoint_format
    FORMATS[fmt](affinity, torch.load(aff, weights_only=True), str(aff))


def test_train_sec_loads_the_sec_release_instead_of_training(tmp_path) -> None:
    from wsss.pipeline.context import StageContext
    from wsss.pipeline.stages import train_sec

    path = release(tmp_path, "sec")
    cfg = compose_cfg(
        [
            "experiment=sec",
            "+backbone.deeplab_pools=true", "backbone.weights=null",
            f"stages.train_sec.from_checkpoint={path}",
            "stages.train_sec.checkpoint_format=sec",
            "stages.train_sec.reads.cues=null",
        ],
        tiny=False,
    )
    metrics = train_sec.run(StageContext(cfg, "train_sec", tmp_path / "run"))
    assert metrics["checkpoint_format"] == "sec" and metrics["epochs"] == 0
    saved = torch.load(tmp_path / "run/stages/train_sec/model.pt", weights_only=True)
    expected = official_state_from_fixture(dict(np.load(FIXTURES / "sec.npz")))
    torch.testing.assert_close(saved["head.fc8.weight"], expected["fc8.weight"])
