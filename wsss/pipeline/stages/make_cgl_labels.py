"""Stage `make_cgl_labels`: CLIP-ES confidence-guided pseudo-labels from CAMs (any make_cam format).

Per image of ``split``: scores = [(1 - max CAM)^bg_power, CAMs], dense CRF, argmax; pixels whose
CRF probability is below ``confidence`` become 255, so the segmentation loss ignores them (the
paper's confidence-guided loss). ``miou`` scores the CRF labels without the ignore rule (the
paper's pseudo-label protocol, VOC train 75.0); ``miou_confident`` only the confident pixels.
Used in pipelines under the stage name ``make_pseudo_labels`` so train_seg reads it unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.data.labels import IGNORE
from wsss.functional.clip_es import background_score, confidence_guided_label
from wsss.functional.crf import dense_crf
from wsss.io import save_label_png
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import eval_ids, load_cams, load_rgb, no_gt_note, source, with_gt


class _CGLJob(Dataset):
    def __init__(self, ids, cam_dir, src, out_dir, bg_power, confidence, crf):
        self.ids, self.cam_dir, self.src, self.out_dir = ids, cam_dir, src, out_dir
        self.bg_power, self.confidence, self.crf = bg_power, confidence, crf

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        cams, keys = load_cams(self.cam_dir, image_id)
        probs = np.concatenate([background_score(cams, self.bg_power), cams], axis=0)
        if self.crf is not None:
            probs = dense_crf(load_rgb(self.src, image_id), probs, **self.crf)
        label, plain = confidence_guided_label(probs, keys, self.confidence)
        save_label_png(self.out_dir / "labels" / f"{image_id}.png", label)
        return {"id": image_id, "label": label, "plain": plain}


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    cams_stage = ctx.read("cams")
    cam_dir = cam_dir_of(cams_stage)
    crf = OmegaConf.to_container(p.crf_params, resolve=True) if p.crf else None
    ids = source(ctx, p.split).ids
    job = _CGLJob(ids, cam_dir, source(ctx, p.split), ctx.out_dir, p.bg_power, p.confidence, crf)
    loader = DataLoader(job, batch_size=None, num_workers=p.num_workers)
    eval_src = source(ctx, proto.eval_split, for_eval=True)
    evaluated = set(with_gt(eval_src, set(eval_ids(ctx, proto.eval_split)) & set(ids)))
    n = ctx.cfg.data.num_classes + 1
    full, confident = SegmentationMetric(n), SegmentationMetric(n)
    ignored = total = 0
    for item in tqdm(loader, total=len(job), desc="make_cgl_labels"):
        label = torch.as_tensor(item["label"]).long()
        ignored += int((label == IGNORE).sum())
        total += label.numel()
        if item["id"] in evaluated:
            gt = torch.from_numpy(eval_src.load_mask(item["id"]).astype(np.int64))
            full.update(torch.as_tensor(item["plain"]).long(), gt)
            confident.update(label, gt.masked_fill(label == IGNORE, IGNORE))
    out: dict = {"split": p.split, "num_images": len(ids), "eval_split": proto.eval_split, "label_dir": "labels",
                 "confidence": float(p.confidence), "crf": bool(p.crf), "num_evaluated": len(evaluated),
                 "ignored_fraction": ignored / max(total, 1)}
    names = ("background", *eval_src.class_names)
    if evaluated:
        result = full.compute()
        out["miou"] = float(result["miou"])
        out["per_class_iou"] = class_names_iou(result["iou"], names)
        out["miou_confident"] = float(confident.compute()["miou"])
    else:
        out.update(miou=None, per_class_iou={}, miou_confident=None, note=no_gt_note(proto.eval_split, len(ids)))
    out["includes"] = (f"{read_metrics(cams_stage).get('includes', 'CAMs')}; background (1 - max)^{p.bg_power}"
                       + (", dense CRF" if crf else "") + f"; miou without the <{p.confidence} ignore rule")
    return out
