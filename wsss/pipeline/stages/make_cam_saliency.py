"""Stage `make_cam_saliency`: saliency maps from the classifier's own CAMs and image edges.

For every image of ``split`` the present-class CAMs of the stage read as ``cams`` (make_cam
format, max-normalised) become a foreground probability that is 0.5 at the background threshold
(``threshold``; null = the one ``eval_cam`` chose on the held-out images, read as ``threshold``),
averaged within SLIC superpixels, optionally combined with a class-agnostic background prior
(boundary connectivity, ``boundary_sigma``) and sharpened by a two-label dense CRF
(:func:`wsss.functional.cam_saliency.cam_saliency`). Writes ``saliency/<id>.png`` (0..255
greyscale, the SALImages format), so EPS (``train_cls`` with ``reads.saliency``), SEC
(``make_cues``) and OAA (``oaa_gen_gt``) can train without a saliency model. ``metrics.json`` has
``saliency_dir`` and the maps' precision / recall / F1 / MAE against the GT foreground on the
protocol's eval split, beside the same scores of the unrefined CAM foreground (``cam_*``).
Maps an interrupted attempt already wrote are read back, not recomputed.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import OmegaConf

from wsss.data.sources import Source
from wsss.functional.cam_saliency import cam_foreground, cam_saliency, to_uint8
from wsss.io import load_grey, save_label_png
from wsss.metrics.saliency import SaliencyScore
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import eval_ids, load_cams, load_rgb, no_gt_note, source, with_gt
from wsss.pipeline.per_image import run_per_image, shard, valid_png
from wsss.pipeline.saliency_maps import SALIENCY_DIR


def _saliency(image_id: str, cam_dir: Path, src: Source, out_dir: Path, threshold: float,
              n_segments: int | None, compactness: float, crf: dict | None,
              boundary_sigma: float | None) -> dict:  # fmt: skip
    cams, _ = load_cams(cam_dir, image_id)
    raw = to_uint8(cam_foreground(cams, threshold))  # scored beside the refined map
    path = out_dir / f"{image_id}.png"
    if path.is_file() and valid_png(path):  # written by an interrupted attempt
        return {"id": image_id, "saliency": load_grey(path, "saliency map"), "cam": raw}
    sal = to_uint8(cam_saliency(load_rgb(src, image_id), cams, threshold, n_segments, compactness, crf,
                                boundary_sigma))
    save_label_png(path, sal, palette=False)
    return {"id": image_id, "saliency": sal, "cam": raw}


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    cams = ctx.read("cams")
    threshold = (float(p.threshold) if p.threshold is not None
                 else float(read_metrics(ctx.read("threshold"))["threshold"]))
    crf = OmegaConf.to_container(p.crf_params, resolve=True) if p.crf else None
    src = source(ctx, p.split)
    work = functools.partial(_saliency, cam_dir=cam_dir_of(cams), src=src, out_dir=ctx.out_dir / SALIENCY_DIR,
                             threshold=threshold, n_segments=p.n_segments, compactness=float(p.compactness),
                             crf=crf, boundary_sigma=p.boundary_sigma)  # fmt: skip
    eval_src = source(ctx, proto.eval_split, for_eval=True)
    evaluated = set(with_gt(eval_src, set(eval_ids(ctx, proto.eval_split)) & set(src.ids)))
    refined, unrefined = SaliencyScore(), SaliencyScore()
    # Under DDP (all_ranks) every rank makes its share of the maps; the scores' counts are summed.
    for item in run_per_image(shard(src.ids), work, p.num_workers, "make_cam_saliency"):
        if item["id"] in evaluated:
            gt = eval_src.load_mask(item["id"])
            refined.update(item["saliency"], gt)
            unrefined.update(item["cam"], gt)
    refined.sync()
    unrefined.sync()
    steps = ["CAM foreground (0.5 at the threshold)"]
    steps += [f"SLIC mean ({p.n_segments} segments)"] if p.n_segments else []
    steps += [f"x boundary-connectivity prior (sigma {p.boundary_sigma})"] if p.boundary_sigma is not None else []
    steps += ["2-label dense CRF"] if crf is not None else []
    out: dict = {"split": p.split, "num_images": len(src.ids), "saliency_dir": SALIENCY_DIR,
                 "threshold": threshold, "eval_split": proto.eval_split, "num_evaluated": len(evaluated),
                 **refined.compute(), **unrefined.compute("cam_"),
                 "includes": f"saliency from {read_metrics(cams).get('includes', 'CAMs')}: "
                             + " -> ".join(steps) + "; scores: saliency > 0.5 vs GT foreground"}  # fmt: skip
    if not evaluated:
        out["note"] = no_gt_note(proto.eval_split, len(set(eval_ids(ctx, proto.eval_split)) & set(src.ids)))
    ctx.log_metrics({k: v for k, v in out.items()
                     if k in ("precision", "recall", "f1", "mae") and v is not None})
    return out
