"""Training data of SEC: images with their localisation cues on the network's output grid.

Each sample is a dict:

* ``image`` (3, S, S) float32, normalised — the image warped to ``input_size`` (SEC warps to
  321 x 321 without keeping the aspect ratio) or, with ``resize="crop"``, randomly rescaled and
  cropped to ``S`` x ``S`` (padded with the mean colour);
* ``cues`` (g, g) int64 — 0 background, c + 1 class c, 255 no cue, on the cue grid;
* ``raw`` (g, g, 3) uint8 — the (augmented) image downscaled to the cue grid for the training CRF,
  with SEC's ``scipy.ndimage.zoom`` (order 1, rounded), so the CRF sees what SEC's ``CRFLayer`` saw;
* ``labels`` (20,) float32 multi-hot; ``name`` str; ``index`` int.

SEC uses no flip; ``hflip_prob`` makes it configurable.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import zoom
from torch.utils.data import Dataset

from wsss.data.labels import IGNORE
from wsss.data.sources import Source
from wsss.io import load_label_png

RESIZE_MODES = ("warp", "crop")


def downscale_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 by linear ``zoom`` and rounding (SEC's ``CRFLayer``)."""
    h, w = size
    small = zoom(image.astype(np.float32), (h / image.shape[0], w / image.shape[1], 1.0), order=1)
    return np.ascontiguousarray(np.clip(np.round(small), 0, 255).astype(np.uint8))


def _resize(x: torch.Tensor, size: tuple[int, int], nearest: bool) -> torch.Tensor:
    """Resize a (C, H, W) tensor; labels use nearest, images bilinear (float)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if nearest:
        return F.interpolate(x[None].float(), size=size, mode="nearest")[0].to(x.dtype)
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


class CueDataset(Dataset):
    """Images of ``source`` with the cue label maps ``<cue_dir>/<id>.png`` written by ``make_cues``.

    Args:
        source: the training split.
        cue_dir: folder of cue PNGs (all the same grid size).
        input_size: network input side S (SEC: 321).
        mean, std: normalisation of [0, 1] RGB.
        resize: ``warp`` (SEC) or ``crop`` (random rescale by ``scale_range`` then random crop).
        scale_range: rescale factors for ``crop``.
        hflip_prob: horizontal flip probability (SEC: 0).
    """

    def __init__(self, source: Source, cue_dir: str | os.PathLike, input_size: int,
                 mean: Sequence[float], std: Sequence[float], resize: str = "warp",
                 scale_range: Sequence[float] = (1.0, 1.0), hflip_prob: float = 0.0) -> None:  # fmt: skip
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.source, self.cue_dir = source, Path(cue_dir)
        if not self.cue_dir.is_dir():
            raise FileNotFoundError(f"cue directory not found: {self.cue_dir} (written by make_cues)")
        self.input_size, self.resize = int(input_size), resize
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip_prob = float(hflip_prob)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.source)

    def load_cues(self, name: str) -> np.ndarray:
        path = self.cue_dir / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"cue map not found: {path} (make_cues did not cover image {name!r})")
        return load_label_png(path)

    def _crop(self, image: torch.Tensor, cues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random rescale + crop of the image, cues brought to image size and back (nearest)."""
        grid = tuple(cues.shape[-2:])
        h, w = image.shape[-2:]
        s = random.uniform(*self.scale_range)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        image = _resize(image, size, nearest=False)
        cues = _resize(cues, size, nearest=True)
        side = self.input_size
        pad = (0, max(0, side - size[1]), 0, max(0, side - size[0]))
        canvas = self.mean.expand(3, size[0] + pad[3], size[1] + pad[1]).clone()  # pad = mean colour
        canvas[:, : size[0], : size[1]] = image
        image, cues = canvas, F.pad(cues, pad, value=IGNORE)
        top = random.randint(0, image.shape[-2] - side)
        left = random.randint(0, image.shape[-1] - side)
        image = image[:, top : top + side, left : left + side]
        cues = cues[:, top : top + side, left : left + side]
        return image, _resize(cues, grid, nearest=True)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.source.ids[index]
        rgb = self.source.load_image(name)
        cue_map = self.load_cues(name)
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0)
        cues = torch.from_numpy(cue_map.astype(np.int64))[None]
        grid = tuple(cue_map.shape)
        if self.resize == "warp":
            image = _resize(image, (self.input_size, self.input_size), nearest=False)
        else:
            image, cues = self._crop(image, cues)
        if self.hflip_prob > 0 and random.random() < self.hflip_prob:
            image, cues = image.flip(-1), cues.flip(-1)
        # The CRF image comes from the augmented view so it stays aligned with the cues.
        raw_full = (image * 255.0).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        raw = downscale_rgb(raw_full, grid)
        return {"image": (image - self.mean) / self.std, "cues": cues[0], "raw": torch.from_numpy(raw),
                "labels": torch.from_numpy(self.source.labels(name)), "name": name, "index": index}
