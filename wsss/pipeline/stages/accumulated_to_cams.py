"""Stage `accumulated_to_cams`: OAA's accumulated attention -> make_cam's CAM files.

Reads ``<train stage>/accumulated/<id>.npz`` (``keys``, ``maps`` at feature resolution, written by
:class:`wsss.methods.oaa.OAAAccumulation`) and writes ``cams/<id>.npz`` with ``keys`` (K,) int64
= the image's gt classes and ``cams`` (K, H, W) float32, upsampled bilinearly to the full image
and max-normalised per class, for every image make_cam would cover. So eval_cam and
make_pseudo_labels consume it unchanged (the OAA pipeline names this stage ``make_cam``).
Images without accumulated maps (e.g. ``include_val: false``) fall back to multi-scale CAMs of
the trained classifier (``scales``/``flip``); their count is reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Subset

from wsss.data.datasets import collate_single
from wsss.functional.cam import normalize_cam
from wsss.io import load_npz, save_npz
from wsss.methods.oaa import ACCUMULATED_DIR
from wsss.pipeline.cam_inference import CAMInference, CAMWriter
from wsss.pipeline.context import StageContext
from wsss.pipeline.image_sets import stage_images
from wsss.pipeline.manifest import HOLDOUT_KEYS, MODEL_KEYS
from wsss.pipeline.models import load_stage_model
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

# What outside stages.accumulated_to_cams shapes its output (its manifest): the network, the data and which
# images the held-out subset holds; not how thresholds are chosen.
GLOBAL_KEYS = (*MODEL_KEYS, *HOLDOUT_KEYS)

def accumulated_to_cam(keys: np.ndarray, maps: np.ndarray, labels: np.ndarray,
                       size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(K', h, w) maps of classes ``keys`` -> (gt keys (K,), (K, H, W) max-normalised CAMs).

    A gt class without an accumulated map gets an all-zero CAM.
    """
    gt = np.flatnonzero(labels > 0).astype(np.int64)
    out = torch.zeros((len(gt), *size), dtype=torch.float32)
    index = {int(k): i for i, k in enumerate(keys)}
    present = [j for j, c in enumerate(gt) if int(c) in index]
    if present:
        chosen = torch.from_numpy(np.stack([maps[index[int(gt[j])]] for j in present]))
        up = F.interpolate(chosen[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        out[present] = normalize_cam(up)
    return gt, out.numpy()


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # header only
        return image.height, image.width


def run(ctx: StageContext) -> dict:
    p = ctx.params
    train_dir = ctx.read("accumulated")
    acc_dir = train_dir / ACCUMULATED_DIR
    if not acc_dir.is_dir():
        raise FileNotFoundError(
            f"{acc_dir} not found: stage {ctx.read_stage('accumulated')!r} wrote no accumulated attention "
            "(train it with method=oaa / method.accumulate=true)"
        )
    dataset = stage_images(ctx, list(p.splits), include_holdout=True)
    src, cam_dir = dataset.source, ctx.out_dir / "cams"
    fallback, missing_classes = [], 0
    for index, image_id in enumerate(tqdm(src.ids, desc="accumulated_to_cams")):
        path = acc_dir / f"{image_id}.npz"
        if not path.is_file():
            fallback.append(index)
            continue
        arrays = load_npz(path)
        if "keys" not in arrays or "maps" not in arrays:
            raise KeyError(f"{path}: expected arrays 'keys' and 'maps', found {sorted(arrays)}")
        labels = src.labels(image_id)
        keys, cams = accumulated_to_cam(arrays["keys"], arrays["maps"], labels,
                                        _image_size(src.image_path(image_id)))
        missing_classes += int(len(keys) - np.isin(keys, arrays["keys"]).sum())
        save_npz(cam_dir / f"{image_id}.npz", keys=keys, cams=cams.astype(np.float32))
    if fallback:
        classifier = load_stage_model(ctx, "model", to_device=False)  # the Trainer places it
        loader = DataLoader(Subset(dataset, fallback), batch_size=1,
                            num_workers=ctx.cfg.data.module.num_workers, collate_fn=collate_single)
        trainer = ctx.trainer(callbacks=[CAMWriter(cam_dir)], logger=False)
        trainer.predict(CAMInference(classifier, p.scales, p.flip), loader, return_predictions=False)
    return {
        "num_images": len(src.ids), "num_accumulated": len(src.ids) - len(fallback),
        "num_fallback": len(fallback), "missing_class_maps": missing_classes, "cam_dir": "cams",
        "splits": list(p.splits), "accumulated_dir": str(acc_dir),
        "includes": (f"OAA accumulated attention ({len(src.ids) - len(fallback)} images); "
                     f"classifier CAMs for {len(fallback)}"),
    }
