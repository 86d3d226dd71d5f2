"""Stage `make_affinity_labels`: PSA affinity labels from CAMs (METHODS.md 2.3), one PNG per image.

For each image of ``split`` the present-class CAMs get a background ``(1 - max)^alpha`` twice,
with the low (4) and high (32) alpha, and each score stack goes through the PSA soft dense CRF.
Confident foreground is the low-alpha argmax, confident background the high-alpha argmax, the
band between is 255 (:func:`wsss.functional.affinity.psa_affinity_label`). Labels are written at
full resolution (0 = bg, c + 1 = class c, 255 = ignore) so they crop with the image; AffinityNet
pools them to its feature grid at training time.

Also holds the per-image job / label-scoring helpers shared by the other refinement stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from wsss.data.labels import IGNORE, channels_to_label
from wsss.functional.affinity import psa_affinity_label
from wsss.functional.cam import background_power
from wsss.functional.crf import dense_crf
from wsss.io import save_label_png
from wsss.metrics.segmentation import SegmentationMetric, class_names_iou
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import eval_ids, load_cams, load_rgb, no_gt_note, source
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY


class PerImage(Dataset):
    """Runs ``work(image_id) -> dict`` per item, so DataLoader workers share the CPU-bound work."""

    def __init__(self, ids: list[str], work: Callable[[str], dict]) -> None:
        self.ids, self.work = ids, work

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        torch.set_num_threads(1)  # CPU is shared between workers (and other jobs)
        return self.work(self.ids[index])


def _as_is(item: dict) -> dict:
    return item  # keep numpy arrays as they are (the default collate makes tensors)


def run_per_image(ids: list[str], work: Callable[[str], dict], num_workers: int, desc: str) -> Iterable[dict]:
    loader = DataLoader(PerImage(ids, work), batch_size=None, num_workers=num_workers,
                        collate_fn=_as_is)
    yield from tqdm(loader, total=len(ids), desc=desc)


class LabelScore:
    """mIoU of label maps vs GT on the evaluated ids, with 255 (unsure) scored two ways.

    ``miou``: 255 counted as background (the repo convention, IRN eval). ``miou_confident``: only
    pixels the label commits to. ``ignored_fraction``: share of 255 over all labelled pixels.
    Only evaluated ids with a GT mask are scored (``num_evaluated``); with none, the scores are
    ``None`` (``miou: null`` in metrics.json) and ``note`` says why.
    """

    def __init__(self, ctx: StageContext) -> None:
        proto = ctx.cfg.protocol
        self.split = proto.eval_split
        self.evaluated = set(eval_ids(ctx, proto.eval_split))
        self.gt_src = source(ctx, proto.eval_split, for_eval=True)
        n = ctx.cfg.data.num_classes + 1
        self.all, self.confident = SegmentationMetric(n), SegmentationMetric(n)
        self.ignored, self.total, self.num_evaluated, self.num_without_gt = 0, 0, 0, 0

    def update(self, image_id: str, label: np.ndarray) -> None:
        label_t = torch.as_tensor(np.asarray(label)).long()
        self.ignored += int((label_t == IGNORE).sum())
        self.total += label_t.numel()
        if image_id not in self.evaluated:
            return
        if not self.gt_src.has_mask(image_id):
            self.num_without_gt += 1
            return
        gt = torch.from_numpy(self.gt_src.load_mask(image_id).astype(np.int64))
        self.all.update(label_t, gt)
        self.confident.update(label_t, torch.where(label_t == IGNORE, IGNORE, gt))
        self.num_evaluated += 1

    def result(self, with_confident: bool = True) -> dict[str, Any]:
        if not self.num_evaluated:
            out: dict[str, Any] = {"miou": None, "num_evaluated": 0, "per_class_iou": {},
                                   "ignored_fraction": self.ignored / max(self.total, 1),
                                   "note": no_gt_note(self.split, self.num_without_gt)}  # fmt: skip
            if with_confident:
                out["miou_confident"] = None
            return out
        names = ("background", *self.gt_src.class_names)
        scores = self.all.compute()
        out = {"miou": float(scores["miou"]), "num_evaluated": self.num_evaluated,
               "per_class_iou": class_names_iou(scores["iou"], names),
               "ignored_fraction": self.ignored / max(self.total, 1)}  # fmt: skip
        if with_confident:
            out["miou_confident"] = float(self.confident.compute()["miou"])
        return out


def cam_dir_of(ctx: StageContext) -> Path:
    make_cam = ctx.input("make_cam")
    return make_cam / read_metrics(make_cam)["cam_dir"]


def cam_baseline(ctx: StageContext) -> float | None:
    """The CAM mIoU of ``eval_cam`` (same eval ids) for side-by-side reporting, if it ran and
    had GT masks to score against."""
    try:
        miou = read_metrics(ctx.input("eval_cam"))["miou"]
    except (FileNotFoundError, KeyError):
        return None
    return None if miou is None else float(miou)


def _affinity_label(image_id: str, cam_dir: Path, src, out_dir: Path, low: float, high: float,
                    crf: dict) -> dict:  # fmt: skip
    cams, keys = load_cams(cam_dir, image_id)
    cams = torch.from_numpy(cams)
    image = load_rgb(src, image_id)
    stacks = [torch.cat([background_power(cams, a)[None], cams]).numpy() for a in (low, high)]
    la, ha = (torch.from_numpy(dense_crf(image, s, **crf)) for s in stacks)
    channel = psa_affinity_label(la, ha).numpy()
    label = channels_to_label(channel, keys)
    save_label_png(out_dir / f"{image_id}.png", label)
    return {"id": image_id, "label": label}


def run(ctx: StageContext) -> dict:
    p = ctx.params
    src = source(ctx, p.split)
    crf = OmegaConf.to_container(p.crf_params, resolve=True)
    work = functools.partial(_affinity_label, cam_dir=cam_dir_of(ctx), src=src,
                             out_dir=ctx.out_dir / "labels", low=float(p.low_alpha),
                             high=float(p.high_alpha), crf=crf)  # fmt: skip
    score = LabelScore(ctx)
    for item in run_per_image(src.ids, work, p.num_workers, "make_affinity_labels"):
        score.update(item["id"], item["label"])
    return {"split": p.split, "num_images": len(src.ids), "label_dir": "labels",
            "low_alpha": float(p.low_alpha), "high_alpha": float(p.high_alpha), **score.result(),
            "cam_miou": cam_baseline(ctx),
            "includes": f"PSA affinity labels: dCRF of [(1-max CAM)^{p.low_alpha}, CAMs] for fg and "
                        f"^{p.high_alpha} for bg, band between = 255; miou counts 255 as background"}
