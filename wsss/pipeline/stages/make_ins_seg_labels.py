"""Stage `make_ins_seg_labels`: IRN instance pseudo labels (``make_ins_seg_labels.py``, docs/methods.md, "IRNet").

Per image: displacement field -> centroids (300 steps) -> instance map (weak-displacement
components, |D| < 2.5); class CAM x instance seeds walked on the boundary affinities (radius 5,
beta 10, 2^8 steps); background 0.25 after global-max normalisation; each winning mask split into
4-connected fragments scored by their max (fragments < 1 % of the image score 0). Written as
``instances/<id>.npz`` with ``masks`` (N, H, W) bool, ``classes`` (N,) int64 0..19 and
``scores`` (N,) float32 (no pickle).

Evaluated with APr50 (VOC protocol, :func:`wsss.metrics.instance.apr`) on the evaluated ids.
Ground truth: ``SegmentationObject/<id>.png`` when the VOC tree has it (instance ids per pixel,
class = majority of ``SegmentationClass`` inside; 255 void belongs to no instance, as in
chainercv), else connected components of the semantic GT (:func:`instances_from_semantic`).
"""

from __future__ import annotations

import numpy as np
import torch

from wsss.functional.irn import instance_masks_from_walk, instances_from_displacement
from wsss.io import save_npz
from wsss.metrics.instance import InstanceAP, instances_from_semantic, match_image
from wsss.parallel import progress
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, rank, read_metrics
from wsss.pipeline.image_sets import (
    eval_ids,
    load_cams,
    load_strided_cams,
    no_gt_note,
    source,
    stage_images,
    with_gt,
)
from wsss.pipeline.irn_seeds import STRIDE, seed_floor, walk_seeds
from wsss.pipeline.models import load_calibrated_irn, torch_threads
from wsss.pipeline.per_image import done_npz, gather_in_order, reduce_sum, shard

INSTANCE_KEYS = ("masks", "classes", "scores")


def gt_instances(src, image_id: str) -> tuple[np.ndarray, np.ndarray, str]:
    """GT instance masks ``(N, H, W)``, classes ``(N,)`` and where they came from: the source's
    own instances when it has them (VOC ``SegmentationObject``, COCO annotations), else the
    connected components of the semantic mask."""
    loader = getattr(src, "load_instances", None)
    found = loader(image_id) if loader is not None else None
    if found is not None:
        return found[0], found[1], src.INSTANCE_GT
    masks, labels = instances_from_semantic(src.load_mask(image_id))
    return masks, labels, "semantic"


def _strided(cam_dir, name: str) -> torch.Tensor | None:
    strided = load_strided_cams(cam_dir, name)
    return None if strided is None else torch.from_numpy(strided)


def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def _run(ctx: StageContext) -> dict:
    p = ctx.params
    # "make_sem_seg_labels": the background threshold the stage read as `sem_labels` used
    # (e.g. its held-out choice).
    bg = p.bg_threshold
    if bg == "make_sem_seg_labels":
        bg = read_metrics(ctx.read("sem_labels"))["bg_threshold"]
    bg = float(bg)
    model = load_calibrated_irn(ctx)
    cam_dir = cam_dir_of(ctx.read("cams"))
    floor = seed_floor(ctx, p.get("seed_floor"))
    gt_src = source(ctx, ctx.cfg.protocol.eval_split, for_eval=True)
    reported = set(eval_ids(ctx, ctx.cfg.protocol.eval_split))
    evaluated = set(with_gt(gt_src, reported))  # only images with a GT mask are scored
    dataset = stage_images(ctx, [p.split], include_holdout=False)
    instance_dir = ctx.out_dir / "instances"
    # Under DDP (all_ranks) every rank labels its share of the images and matches the evaluated
    # ones against their GT; the matches (scores and TP flags, no masks) are gathered in the
    # dataset's order, as APr50 ranks all predictions of the split together.
    num_instances, matched, positions = 0, [], []
    indices = shard(range(len(dataset)))
    for index in progress(indices, desc="make_ins_seg_labels"):
        item = dataset[index]
        name, size = item["name"], item["size"]
        path = instance_dir / f"{name}.npz"
        result = done_npz(path, INSTANCE_KEYS)  # written by an interrupted attempt
        if result is None:
            cams, keys = (torch.from_numpy(a) for a in load_cams(cam_dir, name))
            boundary, displacement = model.edge_displacement(item["image"])
            instance_map = instances_from_displacement(displacement, p.displacement_threshold, p.n_iter)
            result = instance_masks_from_walk(
                walk_seeds(cams, _strided(cam_dir, name), floor, tuple(boundary.shape)), keys, boundary, instance_map, size,
                radius=p.radius, beta=p.beta, exp_times=p.exp_times, bg_threshold=bg,
                min_fragment_ratio=p.min_fragment_ratio, stride=STRIDE,
            )
            save_npz(path, **result)
        num_instances += len(result["scores"])
        if name in evaluated:
            gt_masks, gt_classes, kind = gt_instances(gt_src, name)
            matched.append((match_image(result["masks"], result["classes"], result["scores"], gt_masks,
                                        gt_classes), kind))  # fmt: skip
            positions.append(index)
    # (collectives: past them, every rank's instance files are written, which the COCO export reads)
    num_instances = int(reduce_sum([num_instances])[0])
    meter, gt_kinds = InstanceAP(iou_thresh=0.5), set()
    for image_match, kind in gather_in_order(matched, positions):
        meter.add(image_match)
        gt_kinds.add(kind)
    ap50, per_class = None, {}
    if meter.num_images:
        ap = meter.compute(num_classes=ctx.cfg.data.num_classes)
        ap50 = float(ap["map"])
        per_class = {gt_src.class_names[c]: float(v) for c, v in enumerate(ap["ap"]) if not np.isnan(v)}
    gt_from = " + ".join(sorted(gt_kinds)) or "none"
    out = {"split": p.split, "num_images": len(dataset), "num_evaluated": meter.num_images,
           "instance_dir": "instances", "num_instances": num_instances,
           "mean_instances_per_image": num_instances / max(len(dataset), 1),
           "ap50": ap50, "per_class_ap50": per_class, "gt_instances": gt_from, "seed_floor": floor,
           "includes": "IRN instance pseudo labels (displacement clustering + boundary random walk, "
                       f"bg {bg:.2f}); APr50 (VOC) vs GT instances from {gt_from}"
                       + (" (connected components of the semantic GT)" if "semantic" in gt_kinds else "")}
    if p.get("coco_json") and rank() == 0:  # the instances as one COCO annotation file (RLE masks)
        from wsss.data.coco_export import instance_dir_to_coco

        counts = instance_dir_to_coco(instance_dir, ctx.out_dir / "instances_coco.json",
                                      gt_src.class_names, lambda i: dataset.source.image_path(i).name)
        out.update(coco_json="instances_coco.json", coco_annotations=counts["annotations"])
    if not meter.num_images:
        out["note"] = no_gt_note(ctx.cfg.protocol.eval_split, len(reported & set(dataset.source.ids)))
    return out
