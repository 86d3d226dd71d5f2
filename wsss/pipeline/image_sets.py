"""Which image ids each stage touches, resolved from the data splits and the protocol."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from wsss.data.datasets import InferenceDataset
from wsss.data.sources import Source, open_source
from wsss.data.transforms import build_eval_transform
from wsss.io import load_npz
from wsss.pipeline.context import StageContext
from wsss.pipeline.protocol import MissingGroundTruthError, holdout_ids


def source(ctx: StageContext, split: str, for_eval: bool = False, check_images: bool = True) -> Source:
    """The ``data.source`` reader of a (generic) split; evaluation reads ``data.eval_mask_dir``
    (VOC: the official masks with the void band)."""
    data = ctx.cfg.data
    mask_dir = data.get("eval_mask_dir") if for_eval else data.module.get("mask_dir")
    key = (str(split), mask_dir, check_images)
    if key not in ctx.sources:
        ctx.sources[key] = open_source(data.get("source"), ctx.data_root(), split,
                                       splits=data.get("splits"), mask_dir=mask_dir,
                                       check_images=check_images)  # fmt: skip
    # A shallow copy: callers may reassign ``ids``; the parsed annotations stay shared.
    return copy.copy(ctx.sources[key])


def class_names(ctx: StageContext, with_background: bool = True) -> tuple[str, ...]:
    """The dataset's class names (index c = mask value c + 1), background first if asked."""
    names = source(ctx, ctx.cfg.protocol.eval_split, check_images=False).class_names
    return ("background", *names) if with_background else tuple(names)


def threshold_ids(ctx: StageContext) -> list[str]:
    """Held-out labelled images used only to choose background thresholds."""
    proto = ctx.cfg.protocol
    return holdout_ids(source(ctx, proto.holdout_split).ids, proto.holdout_fraction, proto.seed)


def threshold_ids_with_gt(ctx: StageContext) -> list[str]:
    """The held-out threshold images that have a GT mask: what thresholds and rounds are chosen on."""
    return with_gt(source(ctx, ctx.cfg.protocol.holdout_split, for_eval=True), threshold_ids(ctx))


def required_threshold_ids(ctx: StageContext, setting: str, fix: str) -> list[str]:
    """:func:`threshold_ids_with_gt` for a ``setting`` chosen on them (e.g. ``random_walk:
    bg_alpha=holdout``); none raises :class:`MissingGroundTruthError` naming ``fix``, the
    setting to use instead (stages call this from their ``preflight``: before any training)."""
    held = threshold_ids_with_gt(ctx)
    if not held:
        raise MissingGroundTruthError(
            f"{setting} needs held-out images with GT masks "
            f"(protocol.holdout_split={ctx.cfg.protocol.holdout_split!r}); set {fix}"
        )
    return held


def eval_ids(ctx: StageContext, split: str) -> list[str]:
    """Ids of ``split`` minus the held-out threshold subset (so tuning images are not reported)."""
    held = set(threshold_ids(ctx))
    return [i for i in source(ctx, split).ids if i not in held]


def with_gt(src: Source, ids: Iterable[str]) -> list[str]:
    """The ids (order kept) that have a GT mask in ``src``; evaluation scores only these.

    Datasets with masks for every image (VOC, COCO, Context) keep every id; a folder of images
    without ``masks/`` keeps none, and stages then report ``miou: null`` (see :func:`no_gt_note`).
    """
    return [i for i in ids if src.has_mask(i)]


def no_gt_note(split: str, num_ids: int) -> str:
    """The ``note`` of a stage whose evaluated images have no GT mask (nothing was scored)."""
    return (f"no GT masks: none of the {num_ids} evaluated images of split {split!r} has a mask, "
            "so nothing is scored (scores are null); every label / prediction file is still written")


def stage_images(ctx: StageContext, splits: Sequence[str], include_holdout: bool) -> Dataset:
    """Full-size inference dataset over the union of ``splits`` (+ held-out ids), each id once."""
    ids: dict[str, None] = {}
    for split in splits:
        ids.update(dict.fromkeys(source(ctx, split).ids))
    if include_holdout:
        ids.update(dict.fromkeys(threshold_ids(ctx)))
    data = ctx.cfg.data.module
    union = source(ctx, splits[0], check_images=False)
    union.ids = list(ids)
    transform = build_eval_transform(mean=list(data.mean), std=list(data.std))
    return InferenceDataset(union, transform, with_mask=False)


def images_of(ctx: StageContext, split: str, ids: Sequence[str]) -> Dataset:
    """Full-size inference dataset over the given ids (of ``split``'s dataset), in order."""
    data = ctx.cfg.data.module
    src = source(ctx, split, check_images=False)
    src.ids = list(ids)
    transform = build_eval_transform(mean=list(data.mean), std=list(data.std))
    return InferenceDataset(src, transform, with_mask=False)


def load_rgb(src: Source, image_id: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image (for the CRF and for visualisation)."""
    return np.ascontiguousarray(src.load_image(image_id), dtype=np.uint8)


def load_cams(cam_dir: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(cams (K, H, W) float32, keys (K,) int64) of one image from a make_cam-format directory."""
    path = cam_file(cam_dir, image_id)
    arrays = load_npz(path)
    if "cams" not in arrays or "keys" not in arrays:
        raise KeyError(f"{path}: expected arrays 'cams' and 'keys', found {sorted(arrays)}")
    cams, keys = arrays["cams"].astype(np.float32), arrays["keys"].astype(np.int64)
    if cams.ndim != 3 or len(cams) != len(keys):
        raise ValueError(f"{path}: cams {cams.shape} must be (K, H, W) with K = len(keys) = {len(keys)}")
    return cams, keys


def load_strided_cams(cam_dir: Path, image_id: str) -> np.ndarray | None:
    """IRN's stride-4 CAMs ``(K, h, w)`` float32 of one image (make_cam ``upsample=irn``), or None."""
    arrays = load_npz(cam_file(cam_dir, image_id))
    return arrays["strided"].astype(np.float32) if "strided" in arrays else None


def cam_file(cam_dir: Path, image_id: str) -> Path:
    path = cam_dir / f"{image_id}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"CAM file missing: {path} (make_cam did not cover image {image_id!r})")
    return path
