"""Every option of every config group composes and resolves; recipes small / paper."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, TINY, compose_cfg

GROUPS = ["backbone", "method", "pipeline", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.resolve(cfg)  # raises on any broken interpolation
    for stage in cfg.pipeline.order:
        assert stage in cfg.stages, f"{group}={option}: stage {stage} has no config"
        assert cfg.stages[stage]._target_.startswith("wsss.pipeline.stages.")


@pytest.mark.parametrize("option", options("data"))
def test_every_dataset_composes_and_resolves(option: str, tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("cat\ndog\nperson\n")  # read by data=folder
    tiny = [o for o in TINY if not o.startswith("data.synthetic")]
    overrides = [] if option == "voc" else [f"data.root={tmp_path}"]
    cfg = compose_cfg([*tiny, f"data={option}", *overrides], tiny=False)
    OmegaConf.resolve(cfg)
    expected = {"voc": 20, "coco": 80, "context": 59, "folder": 3}[option]
    assert cfg.data.num_classes == expected
    assert cfg.method.num_classes == expected == cfg.stages.train_seg.module.num_classes
    assert cfg.data.module.source._target_ == cfg.data.source._target_


@pytest.mark.parametrize("option", ["coco", "context"])
def test_dataset_without_root_names_the_key(option: str) -> None:
    from wsss.pipeline.context import resolve_data_root

    with pytest.raises(ValueError, match="data.root is required"):
        resolve_data_root(compose_cfg([f"data={option}"], tiny=False))


def test_folder_without_root_names_the_key() -> None:
    with pytest.raises(Exception, match="data.root"):
        OmegaConf.resolve(compose_cfg(["data=folder"], tiny=False))


def test_small_recipe_is_the_default_on_any_data_and_paper_gives_published_values() -> None:
    synthetic = compose_cfg(tiny=False)
    user_tree = compose_cfg(["data.root=/data/VOCdevkit/VOC2012", "recipe=small"], tiny=False)
    paper = compose_cfg(["data.root=/data/VOCdevkit/VOC2012", "backbone=resnet50", "recipe=paper"], tiny=False)
    assert synthetic.backbone.weights is None and user_tree.backbone.weights is None
    assert synthetic.stages.train_cls.crop_size == user_tree.stages.train_cls.crop_size == 112
    assert paper.backbone.weights == "imagenet"
    assert paper.stages.train_cls.crop_size == 512
    assert list(paper.stages.train_cls.scale_range) == [0.5, 1.5]
    assert paper.method.backbone.name == "resnet50"


def test_method_instantiates_with_composed_backbone() -> None:
    cfg = compose_cfg(["backbone=resnet18"])
    model = instantiate(cfg.method)
    assert model.classifier.weight.shape == (20, 512, 1, 1)
    deeplab = instantiate(cfg.stages.train_seg.module)
    assert deeplab.num_classes == 21


def test_eps_coco_experiment_follows_the_official_script(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=eps_coco", f"data.root={tmp_path}",
                       f"data.module.saliency_dir={tmp_path}"], tiny=False)  # fmt: skip
    OmegaConf.resolve(cfg)
    assert cfg.data.source._target_ == "wsss.data.coco.COCOSource" and cfg.data.num_classes == 80
    assert cfg.method._target_ == "wsss.methods.eps.EPSModule"
    assert (cfg.method.tau, cfg.method.lam) == (0.4, 0.9)
    train = cfg.stages.train_cls
    assert (train.batch_size, train.crop_size, train.scale_mode) == (16, 321, "long_side")
    assert list(train.scale_range) == [256, 448]
