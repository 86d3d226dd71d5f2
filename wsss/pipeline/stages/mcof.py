"""Stage `mcof`: MCOF (Wang et al., CVPR 2018), iteratively mining common object features.

Per training image: SLIC superpixels, region features pooled from the trained classifier's
(frozen) backbone, region-pooled CAM scores and (optionally) saliency. Then, for iteration
t = 0 .. iterations-1:

1. region labels: t = 0 the initial object seeds (region CAM score vs the background threshold of
   ``reads.threshold``, an unsure band ignored); t > 0 the superpixel majority of the previous
   PixelNet's predictions (restricted to the image's classes);
2. RegionNet (:class:`wsss.methods.mcof.RegionNet`, FC layers on the pooled features) is trained
   on them and re-predicts every region (background + the image's classes);
3. t = 0 only: saliency-guided refinement, the RegionNet foreground probability combined with the
   region's saliency (:func:`wsss.functional.mcof.bayes_saliency_refine`), recovers salient
   regions RegionNet missed and drops non-salient ones;
4. the regions are painted into ``iter_<t>/labels/<id>.png`` and PixelNet (``module``: DeepLab)
   is trained on them from the initial weights;
5. PixelNet predicts the training split (``iter_<t>/pred/``), which feeds step 1 of t + 1.

Per iteration ``metrics.json`` has ``seed_miou`` (region labels RegionNet trained on),
``region_miou`` (its refined region predictions = PixelNet's labels), ``val_miou`` (PixelNet,
single scale, val minus the held-out images), ``pred_miou`` (PixelNet on the training split) and
the collapse guard. The last PixelNet is ``model.pt`` for eval_seg (``model_from: mcof``).
What deviates from the paper (frozen feature backbone, the Bayesian form of the refinement)
is said in docs/methods.md (MCOF).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image
from skimage.segmentation import slic

from wsss.data.labels import IGNORE
from wsss.functional.mcof import (
    bayes_saliency_refine,
    paint_regions,
    region_majority,
    region_pool,
    seed_region_labels,
)
from wsss.functional.segmentation import multiscale_probs
from wsss.io import save_label_png, write_json
from wsss.methods.mcof import RegionNet, fit_region_net, region_probs
from wsss.metrics.segmentation import SegmentationMetric
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.collapse import collapse_guard
from wsss.pipeline.context import MODEL_FILE, StageContext, read_metrics, save_model
from wsss.pipeline.image_sets import eval_ids, images_of, load_cams, source, with_gt
from wsss.pipeline.models import fit_on_labels, init_from, load_stage_model
from wsss.pipeline.saliency_maps import read_saliency
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_regions(ctx: StageContext, backbone: torch.nn.Module, ids: list[str], cam_dir: Path,
                    sal_dir: Path | None) -> dict[str, dict]:  # fmt: skip
    """Per image: superpixels, pooled features (float16), pooled CAM scores, keys, saliency."""
    p, device = ctx.params, ctx.device()
    levels = list(p.feature_levels) if p.feature_levels else list(backbone.channels)
    backbone = backbone.to(device).eval()
    dataset = images_of(ctx, p.split, ids)
    out: dict[str, dict] = {}
    for index in tqdm(range(len(dataset)), desc="mcof[regions]"):
        item = dataset[index]
        name, raw = item["name"], item["raw"].numpy()
        segments = torch.from_numpy(slic(raw, n_segments=int(p.n_segments), compactness=float(p.compactness),
                                         start_label=0, channel_axis=-1).astype(np.int64))  # fmt: skip
        feats = backbone(item["image"][None].to(device))
        # features are pooled on a grid of stride `pool_stride` (cheap); a superpixel missing from
        # that grid gets zero features. CAM scores and saliency are pooled at full resolution.
        s = max(1, int(p.pool_stride))
        coarse = segments[s // 2 :: s, s // 2 :: s].contiguous()
        n_regions = int(segments.max()) + 1
        pooled = torch.cat([region_pool(feats[k][0].float().cpu(), coarse, n_regions) for k in levels], dim=1)
        cams, keys = load_cams(cam_dir, name)
        scores = region_pool(torch.from_numpy(cams), segments) if len(keys) else torch.zeros(len(pooled), 0)
        entry = {"segments": segments, "features": pooled.half(), "scores": scores,
                 "keys": torch.from_numpy(keys)}
        if sal_dir is not None:
            with Image.open(sal_dir / f"{name}.png") as image:
                sal = torch.from_numpy(np.array(image.convert("L"), dtype=np.float32) / 255.0)
            entry["saliency"] = region_pool(sal[None], segments)[:, 0]
        out[name] = entry
    return out


def _label_miou(labels: dict[str, torch.Tensor], gt_src, evaluated: list[str], n: int) -> float | None:
    if not evaluated:
        return None
    metric = SegmentationMetric(n)
    for name in evaluated:
        lab = labels[name].long()
        metric.update(torch.where(lab == IGNORE, 0, lab), torch.from_numpy(gt_src.load_mask(name).astype(np.int64)))
    return float(metric.compute()["miou"])


@torch.no_grad()
def _predict(ctx: StageContext, model: torch.nn.Module, split: str, ids: list[str],
             restrict: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """Single-scale argmax of ``model`` per id ((H, W) int64), optionally over bg + image classes."""
    device, out = ctx.device(), {}
    dataset = images_of(ctx, split, ids)
    model.eval().to(device)
    for index in range(len(dataset)):
        item = dataset[index]
        probs = multiscale_probs(model, item["image"][None].to(device)).cpu()
        if restrict:
            allowed = torch.cat([torch.ones(1, dtype=torch.bool), torch.as_tensor(item["labels"]) > 0.5])
            probs[~allowed] = -1.0
        out[item["name"]] = probs.argmax(0)
    return out


def _train_pixelnet(ctx: StageContext, labels: Path, it_dir: Path) -> torch.nn.Module:
    p = ctx.params
    model = instantiate(p.module)
    init_from(ctx, model)  # optional role `init`: a classifier's backbone (as train_seg)
    return fit_on_labels(ctx, model, labels, it_dir / "checkpoints")  # resumes mid-fit


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    if int(p.iterations) < 1:
        raise ValueError(f"stages.{ctx.name}.iterations must be >= 1, got {p.iterations}")
    cams = ctx.read("cams")
    cam_dir = cam_dir_of(cams)
    threshold = float(p.threshold) if p.threshold is not None else float(read_metrics(ctx.read("threshold"))["threshold"])
    classifier = load_stage_model(ctx, "classifier", to_device=False)
    src = source(ctx, p.split)
    ids = list(src.ids)
    # reads.saliency (a saliency stage), else data.module.saliency_dir, else the stage's own default
    sal_dir = read_saliency(ctx, src.root, p.saliency_dir, required=False,
                            key="data.module.saliency_dir, else stages.mcof.saliency_dir; null disables "
                                "the saliency-guided refinement")
    regions = extract_regions(ctx, classifier.backbone, ids, cam_dir, sal_dir)
    del classifier

    n = ctx.cfg.data.num_classes + 1
    gt_src = source(ctx, proto.eval_split, for_eval=True)
    evaluated = with_gt(gt_src, [i for i in eval_ids(ctx, proto.eval_split) if i in regions])
    val_split = ctx.cfg.data.module.val_split
    val_gt = source(ctx, val_split, for_eval=True)
    val_ids = with_gt(val_gt, eval_ids(ctx, val_split))
    prediction: dict[str, torch.Tensor] | None = None
    per_iter, model = [], None
    for t in range(int(p.iterations)):
        it_dir = ctx.out_dir / f"iter_{t}"
        # 1. region labels: seeds from CAMs, then PixelNet's predictions by superpixel majority
        region_labels = {}
        for name, r in regions.items():
            if prediction is None:
                region_labels[name] = seed_region_labels(r["scores"], r["keys"], threshold, float(p.seed_margin))
            else:
                region_labels[name] = region_majority(prediction[name], r["segments"], num_labels=n)
        seeds_px = {k: paint_regions(v, regions[k]["segments"]) for k, v in region_labels.items()}
        # 2. RegionNet on the labelled regions of every image
        net = RegionNet(regions[ids[0]]["features"].shape[1], ctx.cfg.data.num_classes, int(p.region_hidden))
        torch.manual_seed(int(ctx.cfg.seed) + t)
        losses = fit_region_net(net, torch.cat([regions[k]["features"] for k in ids]).float(),
                                torch.cat([region_labels[k] for k in ids]), int(p.region_epochs),
                                float(p.region_lr), seed=int(ctx.cfg.seed) + t)  # fmt: skip
        # 3. re-predict regions; saliency-guided refinement in the first iteration
        refined, fg_regions = {}, [0, 0]
        for name, r in regions.items():
            probs = region_probs(net, r["features"].float(), r["keys"])
            lut = torch.cat([torch.zeros(1, dtype=torch.long), r["keys"].long() + 1])
            label = lut[probs.argmax(1)]
            if t == 0 and "saliency" in r and len(r["keys"]):
                post = bayes_saliency_refine(1 - probs[:, 0], r["saliency"])
                label = torch.where(post > 0.5, lut[1:][probs[:, 1:].argmax(1)], torch.zeros_like(label))
            fg_regions[0] += int((label > 0).sum())
            fg_regions[1] += len(label)
            refined[name] = paint_regions(label, r["segments"])
            save_label_png(it_dir / "labels" / f"{name}.png", refined[name].numpy().astype(np.uint8))
        # 4. PixelNet on the refined regions
        model = _train_pixelnet(ctx, it_dir / "labels", it_dir)
        save_model(model, it_dir / MODEL_FILE)
        metrics: dict = {"iteration": t, "seed_miou": _label_miou(seeds_px, gt_src, evaluated, n),
                         "region_miou": _label_miou(refined, gt_src, evaluated, n),
                         "region_fg_fraction": fg_regions[0] / max(fg_regions[1], 1),
                         "region_net_loss": losses[-1] if losses else None,
                         "saliency_refinement": bool(t == 0 and sal_dir is not None)}  # fmt: skip
        val_pred = _predict(ctx, model, val_split, val_ids, restrict=False)
        metrics["val_miou"] = _label_miou(val_pred, val_gt, val_ids, n)
        metrics.update(collapse_guard(ctx, model, it_dir / "labels", ids, tag=f"iteration {t}"))
        # 5. PixelNet re-predicts the training split (image labels known) for the next iteration
        prediction = _predict(ctx, model, p.split, ids, restrict=True)
        metrics["pred_miou"] = _label_miou(prediction, gt_src, evaluated, n)
        write_json(it_dir / "metrics.json", metrics)
        per_iter.append(metrics)
        log.info("mcof iteration %d: %s", t, {k: v for k, v in metrics.items() if k.endswith("miou")})
        model.cpu()
    save_model(model, ctx.out_dir / MODEL_FILE)

    out: dict = {"iterations": int(p.iterations), "split": p.split, "threshold": threshold,
                 "saliency_dir": str(sal_dir) if sal_dir else None, "n_segments": int(p.n_segments),
                 "num_images": len(ids), "eval_split": proto.eval_split, "num_evaluated": len(evaluated),
                 "iteration_metrics": per_iter}  # fmt: skip
    for m in per_iter:
        for key in ("seed_miou", "region_miou", "val_miou", "pred_miou"):
            out[f"{key}_iter_{m['iteration']}"] = m[key]
    last = per_iter[-1]
    out["val_miou"] = last["val_miou"]
    out["label_dir"] = f"iter_{len(per_iter) - 1}/labels"
    out.update({k: v for k, v in last.items() if k.startswith("collapse_")})
    out["includes"] = ("seed/region/pred mIoU on the eval split (255 as background); val_miou single "
                       "scale on val minus the held-out images; eval_seg reports the last PixelNet")
    return out
