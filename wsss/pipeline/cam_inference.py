"""Multi-scale CAM inference as a Lightning predict loop, with a writer that saves .npz per image.

`Trainer.predict` shards images across devices under DDP; files are keyed by image id, so the
sampler's padding duplicates are harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from wsss.data.transforms import pil_rescale
from wsss.functional.cam import (
    irn_multiscale_cam,
    multiscale_cam,
    normalize_cam,
    normalize_cam_minmax,
    restrict_to_keys,
)
from wsss.io import save_npz

RESIZE_MODES = ("tensor", "pil_bicubic")
UPSAMPLE_MODES = ("image", "irn")
NORMALIZE_MODES = ("max", "minmax")


def pil_scaled_inputs(raw: torch.Tensor, scales: Sequence[float], mean: Sequence[float],
                      std: Sequence[float]) -> list[torch.Tensor]:  # fmt: skip
    """PSA's / IRN's per-scale inputs: the uint8 ``(H, W, 3)`` image rescaled with PIL bicubic
    (:func:`~wsss.data.transforms.pil_rescale`), then ``(x / 255 - mean) / std`` in float64 and
    stored as float32 (their ``Normalize``); each ``(1, 3, h_s, w_s)``."""
    image = raw.cpu().numpy()
    mean_, std_ = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    out = []
    for scale in scales:
        scaled = (pil_rescale(image, float(scale)) / 255.0 - mean_) / std_
        out.append(torch.from_numpy(scaled.astype(np.float32).transpose(2, 0, 1).copy())[None])
    return out


class CAMInference(L.LightningModule):
    """Wraps any classifier exposing ``cam(images) -> (B, C, h, w)`` for multi-scale inference.

    ``resize``: ``tensor`` (default) resizes the normalised image bilinearly per scale;
    ``pil_bicubic`` rescales the uint8 image (``batch["raw"]``) with PIL bicubic and normalises
    it with ``mean``/``std`` afterwards, as PSA's ``infer_cls.py`` and IRN's ``make_cam.py``.
    ``upsample``: ``image`` (default) resizes each pass's CAMs straight to the image size;
    ``irn`` follows IRN's ``make_cam.py`` (:func:`~wsss.functional.cam.irn_multiscale_cam`:
    flips fused before resizing, high-res CAMs via the stride-16 padded size, and stride-4 CAMs
    returned as ``strided``; always with flips).
    ``normalize``: ``max`` (default; IRN/PSA, :func:`~wsss.functional.cam.normalize_cam`) or
    ``minmax`` (SEAM's ``infer_SEAM.py``, :func:`~wsss.functional.cam.normalize_cam_minmax`).
    """

    def __init__(self, classifier: torch.nn.Module, scales: Sequence[float], flip: bool,
                 resize: str = "tensor", upsample: str = "image", normalize: str = "max",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:  # fmt: skip
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"stages.make_cam.resize must be one of {RESIZE_MODES}, got {resize!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"stages.make_cam.upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"stages.make_cam.normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if upsample == "irn" and not flip:
            raise ValueError("stages.make_cam.upsample=irn fuses each scale with its flip (IRN's CAM "
                             "network); set stages.make_cam.flip=true")  # fmt: skip
        if resize == "pil_bicubic" and (mean is None or std is None):
            raise ValueError("resize=pil_bicubic needs the data mean/std to normalise the rescaled images")
        self.classifier = classifier
        self.scales = tuple(scales)
        self.flip = flip
        self.resize, self.upsample = resize, upsample
        self.normalize = normalize_cam_minmax if normalize == "minmax" else normalize_cam
        self.mean, self.std = mean, std

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Any]]:
        out = []
        for i, name in enumerate(batch["name"]):
            image = batch["image"][i : i + 1]
            prepared = None
            if self.resize == "pil_bicubic":
                prepared = [x.to(image.device) for x in
                            pil_scaled_inputs(batch["raw"][i], self.scales, self.mean, self.std)]  # fmt: skip
            item: dict[str, Any] = {"name": name}
            if self.upsample == "irn":
                if prepared is None:
                    prepared = [image if s == 1 else torch.nn.functional.interpolate(
                        image, size=(max(1, round(image.shape[-2] * s)), max(1, round(image.shape[-1] * s))),
                        mode="bilinear", align_corners=False) for s in self.scales]  # fmt: skip
                strided, summed = irn_multiscale_cam(self.classifier.cam, prepared, tuple(image.shape[-2:]))
                item["strided"] = normalize_cam(restrict_to_keys(strided, batch["labels"][i])[0]).cpu()
            else:
                summed = multiscale_cam(self.classifier.cam, image, scales=self.scales, flip=self.flip,
                                        prepared=prepared)  # fmt: skip
            cams, keys = restrict_to_keys(summed, batch["labels"][i])
            item.update(keys=keys.cpu(), cams=self.normalize(cams).cpu())
            out.append(item)
        return out


class CAMWriter(BasePredictionWriter):
    """Writes ``<dir>/<id>.npz`` with ``keys`` (K,) int64 and ``cams`` (K, H, W) float32 (plus
    ``strided`` (K, ceil(H/4), ceil(W/4)) float32 with ``upsample=irn``)."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for item in prediction:
            extra = {"strided": item["strided"].numpy().astype(np.float32)} if "strided" in item else {}
            save_npz(self.out_dir / f"{item['name']}.npz",
                     keys=item["keys"].numpy().astype(np.int64),
                     cams=item["cams"].numpy().astype(np.float32), **extra)
