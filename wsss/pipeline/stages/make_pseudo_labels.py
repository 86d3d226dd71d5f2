"""Stage `make_pseudo_labels`: CAMs -> label PNGs (background threshold, optional dense CRF).

For every image of the pseudo-label split the scores [threshold, CAM_1..CAM_K] are arg-maxed;
pixels whose best score beats the runner-up by less than ``ignore_margin`` become 255 (unsure).
With ``crf: true`` the same scores, normalised per pixel, go through pydensecrf first, and
both versions are written and evaluated, so their difference is visible in ``metrics.json``.
Work runs in DataLoader workers (the CRF is CPU bound); under DDP each rank labels its share of
the images (``all_ranks``) and the scores are summed over ranks. Labels an interrupted attempt
already wrote are read back, not recomputed.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from wsss.data.labels import IGNORE
from wsss.functional.crf import dense_crf
from wsss.io import load_label_png, save_label_png
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.parallel import progress
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, read_metrics, world_size
from wsss.pipeline.image_sets import eval_ids, load_cams, load_rgb, no_gt_note, source, with_gt
from wsss.pipeline.per_image import reduce_sum, shard, valid_png
from wsss.pipeline.scoring import PhenomenaScore


def scores_to_label(scores: np.ndarray, keys: np.ndarray, margin: float) -> np.ndarray:
    """(K+1, H, W) scores (channel 0 background) -> (H, W) uint8 VOC label, 255 where unsure."""
    order = np.sort(scores, axis=0)
    best = scores.argmax(axis=0)
    values = np.concatenate([[0], keys.astype(np.int64) + 1])
    label = values[best].astype(np.uint8)
    if margin > 0 and len(scores) > 1:
        label[(order[-1] - order[-2]) < margin] = IGNORE
    return label


class _PseudoLabelJob(Dataset):
    def __init__(self, ids, cam_dir, src, out_dir, threshold, margin, crf):
        self.ids, self.cam_dir, self.src, self.out_dir = ids, cam_dir, src, out_dir
        self.threshold, self.margin, self.crf = threshold, margin, crf

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        done = self._done(image_id)
        if done is not None:
            return done
        cams, keys = load_cams(self.cam_dir, image_id)
        background = np.full((1, *cams.shape[1:]), self.threshold, dtype=np.float32)
        scores = np.concatenate([background, cams], axis=0)
        out = {"id": image_id, "plain": scores_to_label(scores, keys, self.margin)}
        save_label_png(self.out_dir / "labels" / f"{image_id}.png", out["plain"])
        if self.crf is not None:
            probs = scores / np.maximum(scores.sum(axis=0, keepdims=True), 1e-5)
            marginals = dense_crf(load_rgb(self.src, image_id), probs, **self.crf)
            out["crf"] = scores_to_label(marginals, keys, self.margin)
            save_label_png(self.out_dir / "labels_crf" / f"{image_id}.png", out["crf"])
        return out

    def _done(self, image_id: str) -> dict | None:
        """The labels an interrupted attempt already wrote for ``image_id`` (None: compute them)."""
        kinds = {"plain": "labels", **({"crf": "labels_crf"} if self.crf is not None else {})}
        paths = {kind: self.out_dir / folder / f"{image_id}.png" for kind, folder in kinds.items()}
        if not all(path.is_file() and valid_png(path) for path in paths.values()):
            return None
        return {"id": image_id, **{kind: load_label_png(path) for kind, path in paths.items()}}


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    make_cam = ctx.read("cams")
    cam_dir = cam_dir_of(make_cam)
    threshold = float(p.threshold) if p.threshold is not None else read_metrics(ctx.read("threshold"))["threshold"]
    crf = OmegaConf.to_container(p.crf_params, resolve=True) if p.crf else None
    ids = source(ctx, p.split).ids
    # Under DDP (all_ranks) each rank labels its share; the scores are summed over ranks.
    job = _PseudoLabelJob(shard(ids), cam_dir, source(ctx, p.split), ctx.out_dir, threshold, p.ignore_margin, crf)
    loader = DataLoader(job, batch_size=None, num_workers=p.num_workers)

    eval_src = source(ctx, proto.eval_split, for_eval=True)
    reported = set(eval_ids(ctx, proto.eval_split)) & set(ids)
    evaluated = set(with_gt(eval_src, reported))  # only images with a GT mask are scored
    n = ctx.cfg.data.num_classes + 1
    sync = world_size() > 1
    metrics = {"plain": SegmentationMetric(n, sync=sync), "crf": SegmentationMetric(n, sync=sync)}
    ignored = {"plain": [0, 0], "crf": [0, 0]}
    phenomena = {kind: PhenomenaScore.for_stage(ctx) for kind in ("plain", "crf")}
    for item in progress(loader, desc="make_pseudo_labels"):
        for kind in ("plain", "crf"):
            if kind not in item:
                continue
            label = torch.as_tensor(item[kind]).long()  # the loader turns arrays into tensors
            ignored[kind][0] += int((label == IGNORE).sum())
            ignored[kind][1] += label.numel()
            if item["id"] in evaluated:
                gt = torch.from_numpy(eval_src.load_mask(item["id"]).astype(np.int64))
                metrics[kind].update(label, gt)
                phenomena[kind].update(item["id"], label.numpy())

    ignored = {kind: reduce_sum(counts) for kind, counts in ignored.items()}  # over DDP ranks
    for score in phenomena.values():
        score.sync()
    out: dict = {"threshold": threshold, "ignore_margin": float(p.ignore_margin), "split": p.split,
                 "num_images": len(ids), "eval_split": proto.eval_split,
                 "label_dir": "labels_crf" if (p.crf and p.use_crf) else "labels"}
    for kind, suffix in (("plain", ""), ("crf", "_crf")):
        if kind == "crf" and crf is None:
            continue
        if evaluated:
            result = metrics[kind].compute()
            out[f"miou{suffix}"] = float(result["miou"])
            out[f"per_class_iou{suffix}"] = class_names_iou(result["iou"], ("background", *eval_src.class_names))
        else:
            out[f"miou{suffix}"], out[f"per_class_iou{suffix}"] = None, {}
        out[f"ignored_fraction{suffix}"] = ignored[kind][0] / max(ignored[kind][1], 1)
        out[f"phenomena{suffix}"] = phenomena[kind].result()
    if p.crf and p.use_crf:  # `phenomena`: of the labels downstream trains on
        out["phenomena_plain"], out["phenomena"] = out["phenomena"], out.pop("phenomena_crf")
    out["num_evaluated"] = len(evaluated)
    out["includes"] = (f"{read_metrics(make_cam).get('includes', 'CAMs')}; unsure (margin "
                       f"{p.ignore_margin}) counted as background in mIoU")
    if not evaluated:
        out["note"] = no_gt_note(proto.eval_split, len(reported))
    return out

