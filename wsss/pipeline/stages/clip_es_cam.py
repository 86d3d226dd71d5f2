"""Stage `clip_es_cam`: training-free CAMs from a frozen CLIP (CLIP-ES), in the make_cam format.

Covers the same images as make_cam (``splits`` + the held-out threshold subset; complete files of
an interrupted attempt are kept). Prompts come from the dataset's class names (``prompt_set``;
VOC/COCO get the paper's synonyms and background words), CAMs are softmax Grad-CAMs refined by
class-aware attention affinity and written as ``cams/<id>.npz`` (``keys`` (K,) int64 classes of
the image, ``cams`` (K, H, W) float32 in [0, 1]), so eval_cam / make_pseudo_labels /
make_cgl_labels / train_seg run after it unchanged. Pipelines use it under the stage name
``make_cam`` (conf/pipeline/clip_es.yaml).
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
from wsss.pipeline.manifest import HOLDOUT_KEYS
from wsss.pipeline.per_image import pending, valid_npz

# What outside stages.make_cam shapes its output: the data and which images the held-out subset
# holds (the CLIP model is this stage's own config).
GLOBAL_KEYS = ("data", "seed", "precision", *HOLDOUT_KEYS)


def run(ctx: StageContext) -> dict:
    import open_clip

    p = ctx.params
    names = class_names(ctx, with_background=False)
    synonyms = OmegaConf.to_container(p.synonyms, resolve=True) if p.get("synonyms") else None
    prompts, background = class_prompts(names, p.prompt_set, synonyms)
    if p.get("background") is not None:
        background = tuple(p.background)
    device = ctx.device()
    model = ClipES(instantiate(p.clip), open_clip.get_tokenizer(p.tokenizer), prompts, background,
                   attn_layers=p.attn_layers, box_threshold=p.box_threshold, templates=list(p.templates)).to(device)
    dataset = stage_images(ctx, list(p.splits), include_holdout=True)
    cam_dir = ctx.out_dir / "cams"
    todo = set(pending(dataset.source.ids, lambda i: cam_dir / f"{i}.npz",
                       lambda path: valid_npz(path, ("keys", "cams"))))
    indices = [k for k, i in enumerate(dataset.source.ids) if i in todo]
    for index in tqdm(indices, desc="clip_es_cam"):
        item = dataset[index]
        rgb = item["raw"].numpy()
        keys = [int(k) for k in torch.as_tensor(item["labels"]).nonzero()[:, 0]]
        image = preprocess(rgb, model.patch_size).to(device)
        cams = model.cams(image, keys, tuple(rgb.shape[:2])).cpu().numpy()
        save_npz(cam_dir / f"{item['name']}.npz", keys=np.asarray(keys, dtype=np.int64), cams=cams.astype(np.float32))
    return {"num_images": len(dataset), "num_predicted": len(indices), "num_resumed": len(dataset) - len(indices),
            "splits": list(p.splits), "cam_dir": "cams", "prompts": dict(zip(names, prompts)),
            "background": list(background),
            "includes": "CLIP-ES CAMs (softmax Grad-CAM + class-aware attention affinity), single scale, no CRF"}
