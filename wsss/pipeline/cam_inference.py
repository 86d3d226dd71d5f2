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

from wsss.functional.cam import multiscale_cam, normalize_cam, restrict_to_keys
from wsss.io import save_npz


def image_cams(cam_fn, image: torch.Tensor, labels: torch.Tensor, scales: Sequence[float],
               flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_cam``'s maps of one image: ``(keys (K,) int64, cams (K, H, W) float32)``.

    Multi-scale + flip CAMs of all classes, restricted to the present ones, ReLU'd and
    max-normalised per class. (Upsampling only the present classes would save little and is not
    bit-identical: PyTorch's bilinear kernel rounds differently with another channel count.)
    """
    summed = multiscale_cam(cam_fn, image, scales=scales, flip=flip)
    cams, keys = restrict_to_keys(summed, labels)
    return keys, normalize_cam(cams)


class CAMInference(L.LightningModule):
    """Wraps any classifier exposing ``cam(images) -> (B, C, h, w)`` for multi-scale inference."""

    def __init__(self, classifier: torch.nn.Module, scales: Sequence[float], flip: bool) -> None:
        super().__init__()
        self.classifier = classifier
        self.scales = tuple(scales)
        self.flip = flip

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Any]]:
        out = []
        for i, name in enumerate(batch["name"]):
            keys, cams = image_cams(self.classifier.cam, batch["image"][i : i + 1], batch["labels"][i],
                                    self.scales, self.flip)
            out.append({"name": name, "keys": keys.cpu(), "cams": cams.cpu()})
        return out


class CAMWriter(BasePredictionWriter):
    """Writes ``<dir>/<id>.npz`` with ``keys`` (K,) int64 and ``cams`` (K, H, W) float32."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for item in prediction:
            save_npz(self.out_dir / f"{item['name']}.npz",
                     keys=item["keys"].numpy().astype(np.int64),
                     cams=item["cams"].numpy().astype(np.float32))
