"""experiment=toco_voc / toco_coco / clip_es_voc / clip_es_coco compose with the published settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose_cfg
from wsss.models.vit import build_vit
from wsss.pipeline.preflight import preflight


def test_toco_voc_follows_the_official_recipe() -> None:
    cfg = compose_cfg(["experiment=toco_voc", "data.root=/data/VOCdevkit/VOC2012"], tiny=False)
    OmegaConf.resolve(cfg)
    assert list(cfg.pipeline.order) == ["train_toco", "eval_toco"]
    assert cfg.backbone.name == "vit_base_patch16_224.orig_in21k_ft_in1k" and list(cfg.backbone.aux_layers) == [-3]
    train = cfg.stages.train_toco
    assert (train.crop_size, train.max_steps, train.batch_size, list(train.scale_range)) == (448, 20000, 4, [0.5, 2.0])
    m = train.module
    assert (m.optimizer.lr, m.optimizer.weight_decay, m.new_lr_mult, m.warmup_steps) == (6e-5, 0.01, 10, 1500)
    assert (m.bkg_thre, m.high_thre, m.low_thre) == (0.5, 0.7, 0.25)
    assert (m.w_ptc, m.w_ctc, m.w_seg, m.seg_start_step, m.temp, m.momentum) == (0.2, 0.5, 0.1, 2000, 0.5, 0.9)
    assert (m.local_crop_size, m.num_local_crops, list(m.cam_scales)) == (96, 8, [1.0, 0.5, 1.5])
    assert m.backbone.name == cfg.backbone.name
    ev = cfg.stages.eval_toco
    assert ev._target_ == "wsss.pipeline.stages.eval_seg.run" and ev.reads.model == "train_toco"
    assert list(ev.scales) == [1.0, 1.25, 1.5] and ev.crf and ev.crf_params.sxy_bilateral == 121


def test_toco_coco_and_deit(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=toco_coco", f"data.root={tmp_path}", "backbone=deit_b16"], tiny=False)
    OmegaConf.resolve(cfg)
    assert cfg.data.num_classes == 80 and cfg.stages.train_toco.max_steps == 80000
    assert (cfg.stages.train_toco.module.bkg_thre, cfg.stages.train_toco.module.high_thre) == (0.45, 0.65)
    assert cfg.stages.train_toco.module.backbone.name == "deit_base_patch16_224.fb_in1k"


def test_clip_es_voc_follows_the_official_recipe() -> None:
    cfg = compose_cfg(["experiment=clip_es_voc", "data.root=/data/VOCdevkit/VOC2012"], tiny=False)
    OmegaConf.resolve(cfg)
    assert list(cfg.pipeline.order) == ["make_cam", "eval_cam", "make_pseudo_labels", "train_seg", "eval_seg"]
    cam = cfg.stages.make_cam
    assert cam._target_ == "wsss.pipeline.stages.clip_es_cam.run"
    assert (cam.clip.name, cam.clip.weights, list(cam.templates)) == ("ViT-B-16", "openai", ["a clean origami {}."])
    assert (cam.attn_layers, cam.box_threshold) == (8, 0.4)
    cgl = cfg.stages.make_pseudo_labels
    assert cgl._target_ == "wsss.pipeline.stages.make_cgl_labels.run" and cgl.reads.cams == "make_cam"
    assert (cgl.confidence, cgl.bg_power, cgl.crf_params.sxy_bilateral, cgl.crf_params.srgb_bilateral) == (0.95, 1.0, 67, 3)
    assert cfg.stages.train_seg.reads.labels == "make_pseudo_labels" and cfg.stages.train_seg.reads.init is None
    assert cfg.backbone.name == "resnet101" and cfg.backbone.weights == "imagenet"


def test_clip_es_coco_composes(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=clip_es_coco", f"data.root={tmp_path}"], tiny=False)
    OmegaConf.resolve(cfg)
    assert cfg.data.num_classes == 80 and list(cfg.stages.make_cam.splits) == ["train"]


def test_toco_module_instantiates_from_the_composed_config() -> None:
    cfg = compose_cfg(["pipeline=toco", "backbone=vit_tiny"])
    OmegaConf.update(cfg, "stages.train_toco.module.decoder_width", 8)
    module = instantiate(cfg.stages.train_toco.module)
    assert module.backbone.levels == {"tokens": (64, 16), "block0": (64, 16)}
    assert module.classifier.weight.shape == (20, 64, 1, 1)


def test_readme_toco_commands_pass_preflight_with_the_default_backbone() -> None:
    """`python train.py pipeline=toco` / `pipeline=toco_deeplab` (README results) merge the default
    backbone's keys (resnet18: frozen_bn, output_stride) into the small recipe's ViT."""
    for pipeline in ("toco", "toco_deeplab"):
        cfg = compose_cfg([f"pipeline={pipeline}"], tiny=False)
        preflight(cfg)  # raised PreflightError: build_vit got unknown backbone keys ['frozen_bn']
        module = instantiate(cfg.stages.train_toco.module)
        assert module.backbone.levels["tokens"] == (64, 16)
    with pytest.raises(ValueError, match="no BatchNorm"):
        build_vit("custom", model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 1}, frozen_bn=True)
    with pytest.raises(TypeError, match="dilate"):
        build_vit("custom", model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 1}, dilate=True)
