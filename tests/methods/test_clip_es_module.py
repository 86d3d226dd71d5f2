"""CLIP-ES on a 2-layer random open_clip model: prompts from class names, CAM shapes, Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.data.coco import COCO_CLASSES
from wsss.data.labels import VOC_CLASSES
from wsss.methods.clip_es import BACKGROUND_COCO, BACKGROUND_VOC, ClipES, class_prompts, preprocess
from wsss.models.clip import build_clip

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_prompts_follow_the_dataset_names() -> None:
    voc, bg = class_prompts(VOC_CLASSES)
    assert voc[VOC_CLASSES.index("person")] == "person with clothes,people,human"
    assert voc[VOC_CLASSES.index("tvmonitor")] == "tvmonitor screen" and bg == BACKGROUND_VOC
    coco, bg = class_prompts(COCO_CLASSES)
    assert coco[COCO_CLASSES.index("couch")] == "sofa" and coco[COCO_CLASSES.index("tie")] == "necktie"
    assert bg == BACKGROUND_COCO and "keyboard" not in bg
    plain, bg = class_prompts(["road_sign", "sky", "cat"])  # a user folder: own names, no own class as bg
    assert plain == ["road sign", "sky", "cat"] and "sky" not in bg and "ground" in bg
    assert class_prompts(["cat"], synonyms={"cat": "kitty"})[0] == ["kitty"]
    with pytest.raises(ValueError, match="prompt_set"):
        class_prompts(["cat"], "klingon")


def test_cams_of_a_tiny_clip() -> None:
    import open_clip

    torch.manual_seed(0)
    model = ClipES(build_clip(weights=None, model_cfg=TINY), open_clip.get_tokenizer("ViT-B-16"),
                   ["cat", "dog", "car"], ["sky", "road"])
    assert model.fg_text.shape == (3, 32) and model.bg_text.shape == (2, 32)
    assert torch.allclose(model.fg_text.norm(dim=1), torch.ones(3), atol=1e-5)
    rgb = (np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)
    image = preprocess(rgb)
    assert image.shape == (1, 3, 48, 80)  # sides rounded up to whole 16 px patches
    cams = model.cams(image, [0, 2], (40, 70))
    assert cams.shape == (2, 40, 70) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert cams.amax(dim=(1, 2)).min() > 0.9  # each map is rescaled to max 1
    assert model.cams(image, [], (40, 70)).shape == (0, 40, 70)
    assert all(p.grad is None for p in model.clip.parameters())  # CLIP stays frozen


def test_clip_weights_errors(monkeypatch, tmp_path) -> None:
    import open_clip

    with pytest.raises(FileNotFoundError, match="clip.weights"):
        build_clip(weights=str(tmp_path / "ViT-B-16.pt"))

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"(?s)openaipublic.*ViT-B-16\.pt.*clip\.weights"):
        build_clip("ViT-B-16", "openai")
    with pytest.raises(ValueError, match="random"):
        build_clip(weights="openai", model_cfg=TINY)
