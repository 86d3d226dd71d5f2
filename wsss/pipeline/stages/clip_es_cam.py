"""Stage `clip_es_cam`: training-free CAMs from a frozen CLIP (CLIP-ES), in the make_cam format.

Covers the same images as make_cam (``splits`` + the held-out threshold subset). Prompts come
from the dataset's class names (``prompt_set``; VOC/COCO get the paper's synonyms and background
words), CAMs are softmax Grad-CAMs refined by class-aware attention affinity and written as
``cams/<id>.npz`` (``keys`` (K,) int64 classes of the image, ``cams`` (K, H, W) float32 in [0, 1]),
so eval_cam / make_pseudo_labels / make_cgl_labels / train_seg run after it unchanged.
Used in pipelines under the stage name ``make_cam`` (see conf/pipeline/clip_es.yaml).
"""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from wsss.io import save_npz
from wsss.methods.clip_es import ClipES, class_prompts, preprocess
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import class_names, stage_images


def run(ctx: StageContext) -> dict:
    import open_clip

    p = ctx.params
    names = class_names(ctx, with_background=False)
    synonyms = OmegaConf.to_container(p.synonyms, resolve=True) if p.get("synonyms") else None
    prompts, background = class_prompts(names, p.prompt_set, synonyms)
    if p.get("background") is not None:
        background = tuple(p.background)
    device = torch.device("cuda" if torch.cuda.is_available() and ctx.cfg.trainer.accelerator != "cpu" else "cpu")
    model = ClipES(instantiate(p.clip), open_clip.get_tokenizer(p.tokenizer), prompts, background,
                   attn_layers=p.attn_layers, box_threshold=p.box_threshold, templates=list(p.templates)).to(device)
    dataset = stage_images(ctx, list(p.splits), include_holdout=True)
    cam_dir = ctx.out_dir / "cams"
    for index in tqdm(range(len(dataset)), desc="clip_es_cam"):
        item = dataset[index]
        rgb = item["raw"].numpy()
        keys = [int(k) for k in torch.as_tensor(item["labels"]).nonzero()[:, 0]]
        image = preprocess(rgb, model.patch_size).to(device)
        cams = model.cams(image, keys, tuple(rgb.shape[:2])).cpu().numpy()
        save_npz(cam_dir / f"{item['name']}.npz", keys=np.asarray(keys, dtype=np.int64), cams=cams.astype(np.float32))
    return {"num_images": len(dataset), "splits": list(p.splits), "cam_dir": "cams",
            "prompts": dict(zip(names, prompts)), "background": list(background),
            "includes": "CLIP-ES CAMs (softmax Grad-CAM + class-aware attention affinity), single scale, no CRF"}
