"""Stage `oaa_gen_gt`: OAA's proxy labels = class attention fused with saliency (``gen_gt``).

Reads the attention of each image's classes from a make_cam-format stage (``reads.cams``; in
the OAA pipeline the accumulated attention converted by ``accumulated_to_cams``, in OAA+ the
integral attention model's maps) and one saliency PNG per image (``saliency_dir``, 0-255), and
writes ``labels/<id>.png`` with :func:`wsss.functional.oaa.oaa_proxy_labels` (OAA's thresholds
0.3 / 0.9 / 0.8 / 32 / 1 %; see docs/methods.md, OAA). ``metrics.json`` has ``label_dir``, so
train_seg trains on it like on make_pseudo_labels' output, and the labels' mIoU on the protocol's
eval split (255 counted as background, as every label mIoU here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsss.data.labels import IGNORE
from wsss.functional.oaa import oaa_proxy_labels
from wsss.io import save_label_png
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, read_metrics, world_size
from wsss.pipeline.image_sets import eval_ids, load_cams, no_gt_note, source, with_gt
from wsss.pipeline.per_image import reduce_sum, shard
from wsss.pipeline.saliency_maps import read_saliency
from wsss.pipeline.scoring import PhenomenaScore
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

LABEL_DIR = "labels"


def load_saliency(folder: Path, image_id: str, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) saliency in [0, 1] of one image; must match the image size ``size`` (H, W)."""
    path = folder / f"{image_id}.png"
    if not path.is_file():
        raise FileNotFoundError(f"saliency map not found: {path} (stage oaa_gen_gt)")
    with Image.open(path) as image:
        sal = np.array(image.convert("L"), dtype=np.float32) / 255.0
    if sal.shape != tuple(size):
        raise ValueError(f"{path}: saliency is {sal.shape}, the attention of {image_id!r} is {tuple(size)}")
    return torch.from_numpy(sal)


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    cams = ctx.read("cams")
    cam_dir = cam_dir_of(cams)
    src = source(ctx, p.split)
    # reads.saliency (a saliency stage), else data.module.saliency_dir, else the stage's own default
    sal_dir = read_saliency(ctx, src.root, p.saliency_dir)
    thresholds = {k: float(p[k]) for k in ("fg_threshold", "conflict", "attention_threshold", "min_foreground")}
    thresholds["salient_background"] = float(p.salient_background) / 255.0

    eval_src = source(ctx, proto.eval_split, for_eval=True)
    evaluated = set(with_gt(eval_src, set(eval_ids(ctx, proto.eval_split)) & set(src.ids)))
    # Under DDP (all_ranks) every rank labels its share of the images; the counts are summed.
    metric = SegmentationMetric(ctx.cfg.data.num_classes + 1, sync=world_size() > 1)
    phenomena = PhenomenaScore.for_stage(ctx)
    ignored = counted = dropped = 0
    out_dir = ctx.out_dir / LABEL_DIR
    for image_id in tqdm(shard(src.ids), desc="oaa_gen_gt"):
        attention, keys = load_cams(cam_dir, image_id)
        sal = load_saliency(sal_dir, image_id, attention.shape[-2:])
        label = oaa_proxy_labels(sal, torch.from_numpy(attention), torch.from_numpy(keys), **thresholds)
        save_label_png(out_dir / f"{image_id}.png", label.numpy())
        ignored += int((label == IGNORE).sum())
        counted += label.numel()
        dropped += bool((label == IGNORE).all())
        if image_id in evaluated:
            lab = label.long()
            metric.update(torch.where(lab == IGNORE, 0, lab),
                          torch.from_numpy(eval_src.load_mask(image_id).astype(np.int64)))  # fmt: skip
            phenomena.update(image_id, label.numpy())
    ignored, counted, dropped = (int(v) for v in reduce_sum([ignored, counted, dropped]))
    phenomena.sync()
    out: dict = {"split": p.split, "num_images": len(src.ids), "label_dir": LABEL_DIR,
                 "cams": str(cam_dir), "saliency_dir": str(sal_dir), **thresholds,
                 "ignored_fraction": ignored / max(counted, 1), "images_all_ignored": dropped,
                 "eval_split": proto.eval_split, "num_evaluated": len(evaluated)}  # fmt: skip
    if evaluated:
        result = metric.compute()
        out["miou"] = float(result["miou"])
        out["per_class_iou"] = class_names_iou(result["iou"], ("background", *eval_src.class_names))
        out["phenomena"] = phenomena.result()
    else:
        out["miou"], out["note"] = None, no_gt_note(proto.eval_split, len(evaluated))
    out["includes"] = (f"OAA gen_gt: {read_metrics(cams).get('includes', 'attention')} fused with "
                       f"saliency {sal_dir.name}; ignored pixels counted as background in mIoU")
    return out
