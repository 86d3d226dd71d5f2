"""Stage `eval_seg`: segmentation mIoU on the validation split, each protocol reported apart.

``miou`` is single-scale without CRF; ``miou_ms`` adds the configured scales + flip; ``miou_crf``
adds dense CRF on top of the multi-scale (or single-scale) probabilities. Images of the held-out
threshold subset are excluded; ``miou_full_split`` (single-scale) includes them for comparison.
Only images with a GT mask are scored (``num_evaluated``); every image gets a prediction PNG, and
without any GT mask the scores are ``null``.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from wsss.functional.crf import dense_crf
from wsss.functional.segmentation import multiscale_probs
from wsss.io import save_label_png
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.parallel import progress
from wsss.pipeline.context import StageContext, world_size
from wsss.pipeline.image_sets import eval_ids, load_rgb, no_gt_note, source, stage_images
from wsss.pipeline.models import load_stage_model
from wsss.pipeline.per_image import reduce_sum, shard
from wsss.pipeline.scoring import PhenomenaScore
from wsss.pipeline.visualize import cam_panel, publish


def run(ctx: StageContext) -> dict:
    p = ctx.params
    # Any fit stage with a `module` node and a model.pt (train_seg, train_sec, ...) can be evaluated.
    model, device = load_stage_model(ctx, "model"), ctx.device()
    reported = set(eval_ids(ctx, p.split))
    gt_src = source(ctx, p.split, for_eval=True)
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    counts = {"reported": 0, "full": 0}  # images scored (with a GT mask)
    n = ctx.cfg.data.num_classes + 1
    multi = list(p.scales) != [1.0] or p.flip
    kinds = ["single", "full"] + (["ms"] if multi else []) + (["crf"] if p.crf else [])
    sync = world_size() > 1  # under DDP (all_ranks) each rank predicts its share; sums over ranks
    metrics = {kind: SegmentationMetric(n, sync=sync) for kind in kinds}
    crf_params = OmegaConf.to_container(p.crf_params, resolve=True)
    panels: list = []
    # Phenomena of the segmenter itself (single-scale, the headline `miou`) and, when post-processing
    # changes them, of the saved final predictions: a CRF that wipes out foreground is not a collapse.
    final_kind = "crf" if p.crf else ("ms" if multi else "single")
    phenomena = {kind: PhenomenaScore.for_stage(ctx, p.split) for kind in dict.fromkeys(["single", final_kind])}
    for index in progress(shard(range(len(dataset))), desc="eval_seg"):
        item = dataset[index]
        name, image = item["name"], item["image"][None].to(device)
        gt_np = gt_src.load_mask(name) if gt_src.has_mask(name) else None
        gt = torch.from_numpy(gt_np.astype(np.int64)) if gt_np is not None else None
        probs = {"single": multiscale_probs(model, image).cpu()}
        if multi:
            probs["ms"] = multiscale_probs(model, image, p.scales, p.flip).cpu()
        best = probs["ms" if multi else "single"]
        preds = {k: v.argmax(0) for k, v in probs.items()}
        if p.crf:
            marginals = dense_crf(load_rgb(gt_src, name), best.numpy(), **crf_params)
            preds["crf"] = torch.from_numpy(marginals.argmax(0))
        if gt is not None:
            metrics["full"].update(preds["single"], gt)
            counts["full"] += 1
        if gt is not None and name in reported:
            counts["reported"] += 1
            for kind, pred in preds.items():
                metrics[kind].update(pred, gt)
        final = preds[final_kind].numpy().astype(np.uint8)
        if gt is not None and name in reported:
            for kind, scorer in phenomena.items():
                scorer.update(name, preds[kind].numpy().astype(np.uint8), gt_np)
        save_label_png(ctx.out_dir / "predictions" / f"{name}.png", final)
        if final_kind != "single":
            save_label_png(ctx.out_dir / "predictions_single" / f"{name}.png",
                           preds["single"].numpy().astype(np.uint8))  # fmt: skip
        if len(panels) < p.num_examples and name in reported:  # GT column when there is GT
            masks = [final] + ([gt.numpy().astype(np.uint8)] if gt is not None else [])
            panels.append((name, cam_panel(load_rgb(gt_src, name), np.zeros((0,)), *masks)))
    publish(panels, ctx.out_dir / "examples", "eval_seg/examples", ctx.loggers)

    counts = dict(zip(counts, (int(v) for v in reduce_sum(list(counts.values())))))
    names = ("background", *gt_src.class_names)
    # Nothing is computed (or reported) for a kind that scored no image with a GT mask.
    results = {kind: metric.compute() for kind, metric in metrics.items()
               if counts["full" if kind == "full" else "reported"]}

    def miou(kind: str) -> float | None:
        return float(results[kind]["miou"]) if kind in results else None

    def per_class(kind: str) -> dict[str, float]:
        return class_names_iou(results[kind]["iou"], names) if counts["reported"] else {}

    out = {"split": p.split, "num_reported": len(reported), "num_evaluated": counts["reported"],
           "miou": miou("single"), "miou_full_split": miou("full"), "per_class_iou": per_class("single")}
    if multi:
        out["miou_ms"] = miou("ms")
        out["ms_protocol"] = f"scales {list(p.scales)}, flip={bool(p.flip)}"
    if p.crf:
        out["miou_crf"] = miou("crf")
        out["per_class_iou_crf"] = per_class("crf")
    for scorer in phenomena.values():
        scorer.sync()
    if counts["reported"]:
        out["phenomena"] = phenomena["single"].result()
        if final_kind != "single":
            out[f"phenomena_{final_kind}"] = phenomena[final_kind].result()
    out["predictions"] = "predictions (" + ("CRF" if p.crf else "ms" if multi else "single-scale") + ")"
    if final_kind != "single":
        out["predictions"] += "; predictions_single (single-scale)"
    if not counts["reported"]:
        out["note"] = no_gt_note(p.split, len(reported))
    return out
