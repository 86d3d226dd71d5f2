"""Every option of every config group composes and resolves, and the real-data switch works."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_cfg

GROUPS = ["backbone", "method", "pipeline", "trainer", "logger", "data"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.resolve(cfg)  # raises on any broken interpolation
    for stage in cfg.pipeline.order:
        assert stage in cfg.stages, f"{group}={option}: stage {stage} has no config"
        assert cfg.stages[stage]._target_.startswith("wsss.pipeline.stages.")


def test_synthetic_defaults_switch_to_real_voc_defaults_with_data_root() -> None:
    synthetic = compose_cfg(tiny=False)
    real = compose_cfg(["data.root=/data/VOCdevkit/VOC2012", "backbone=resnet50"], tiny=False)
    assert synthetic.backbone.weights is None and real.backbone.weights == "imagenet"
    assert synthetic.stages.train_cls.crop_size == 112
    assert real.stages.train_cls.crop_size == 512
    assert list(real.stages.train_cls.scale_range) == [0.5, 1.5]
    assert real.method.backbone.name == "resnet50"


def test_method_instantiates_with_composed_backbone() -> None:
    cfg = compose_cfg(["backbone=resnet18"])
    model = instantiate(cfg.method)
    assert model.classifier.weight.shape == (20, 512, 1, 1)
    deeplab = instantiate(cfg.stages.train_seg.module)
    assert deeplab.num_classes == 21
