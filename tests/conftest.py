"""Shared fixtures: composed Hydra configs shrunk for CPU tests, and a tiny synthetic VOC tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from wsss.conf import register_resolvers

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# Smallest settings that still exercise every code path of a pipeline.
TINY = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=8",
    "data.synthetic.image_size=[64,48]",
    "data.module.num_workers=0",
    "stages.train_cls.max_epochs=1",
    "stages.train_cls.crop_size=48",
    "stages.make_cam.scales=[1.0,0.5]",
    "stages.make_pseudo_labels.num_workers=0",
    "stages.train_seg.max_epochs=1",
    "stages.train_seg.crop_size=48",
    "stages.eval_seg.scales=[1.0,0.5]",
    "logger=csv",
    "protocol.holdout_fraction=0.25",
]


def compose_cfg(overrides: list[str] | None = None, tiny: bool = True) -> DictConfig:
    """Compose `conf/train.yaml` like `python train.py OVERRIDES` would (without running)."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # `++`: pipelines without one of TINY's stages (pipeline=toco has no train_cls) still compose.
        tiny_overrides = [("++" + o if o.startswith("stages.") else o) for o in TINY] if tiny else []
        return compose("train", overrides=tiny_overrides + list(overrides or []), return_hydra_config=False)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic VOC tree shared by the session (generated once, read-only afterwards)."""
    from wsss.data.synthetic import generate_voc

    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    generate_voc(root, num_train=16, num_val=8, image_size=(64, 48), seed=0)
    return root


@pytest.fixture
def tiny_cfg(synthetic_root: Path, tmp_path: Path):
    """Factory: a composed config whose synthetic data is the session tree and logs go to tmp."""

    def make(*overrides: str) -> DictConfig:
        cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={tmp_path}/logs",
                           *overrides])
        with open_dict(cfg):
            cfg.logger.csv.save_dir = str(tmp_path / "logs")
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished CAM-baseline run on the session tree (classifier, CAMs, pseudo-labels,
    DeepLab, eval), shared read-only by the W&B, sweep, notebook, predict and export tests."""
    from wsss.pipeline.runner import run_pipeline

    base = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_cfg([f"data.synthetic.root={synthetic_root}", f"paths.log_dir={base}/logs",
                       "stages.eval_seg.crf=false"])
    run_dir = base / "run"
    run_pipeline(cfg, run_dir)
    # What `python train.py` leaves next to the stages: the composed config (read by predict).
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir
