"""Joint image / mask / saliency augmentation with ``torchvision.transforms.v2``.

Inputs are wrapped as :class:`tv_tensors.Image` (uint8 (3, H, W)), :class:`tv_tensors.Mask`
(uint8 (H, W)) and :class:`SaliencyMap` (float (1, H, W)) so that every geometric op is applied
identically to all of them; masks and saliency are always resized with NEAREST by v2. The
transforms take and return a dict ``{"image": ..., "mask": ..., "saliency": ...}`` (keys optional).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from wsss.data.labels import IGNORE


class SaliencyMap(tv_tensors.Mask):
    """(1, H, W) float saliency in [0, 1]: geometry like a mask, but padded with 0 instead of 255."""


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int or a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class RandomRescale(v2.Transform):
    """Rescale all inputs by one random factor, keeping the aspect ratio.

    ``mode="factor"``: factor ~ U(scale_range); ``mode="long_side"``: the long side becomes
    ~ U(scale_range) pixels. Images use bilinear (antialiased), masks nearest.
    """

    def __init__(self, scale_range: Sequence[float], mode: str = "factor") -> None:
        super().__init__()
        if mode not in ("factor", "long_side"):
            raise ValueError(f"mode must be 'factor' or 'long_side', got {mode!r}")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        self.scale_range, self.mode = (lo, hi), mode

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        value = random.uniform(*self.scale_range)  # torch/python RNG: seeded per worker
        scale = value if self.mode == "factor" else value / max(h, w)
        return {"size": [max(1, round(h * scale)), max(1, round(w * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            # NEAREST_EXACT samples pixel centres like the image's bilinear resize; v2's default
            # NEAREST shifts masks by up to half an input pixel (visible when upscaling).
            data = inpt.as_subclass(torch.Tensor)
            out = F.resize_image(data[None] if data.ndim == 2 else data, params["size"],
                                 interpolation=v2.InterpolationMode.NEAREST_EXACT)  # fmt: skip
            return tv_tensors.wrap(out[0] if data.ndim == 2 else out, like=inpt)
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)

    # torchvision < 0.21 calls the private names
    _get_params = make_params
    _transform = transform


class PadTo(v2.Transform):
    """Pad bottom/right up to at least ``size`` (H, W): image 0 (= mean after normalisation),
    mask 255 (ignore), saliency 0."""

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = _size2(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        fill = (
            0
            if isinstance(inpt, SaliencyMap)
            else IGNORE
            if isinstance(inpt, tv_tensors.Mask)
            else 0
        )
        return self._call_kernel(F.pad, inpt, params["padding"], fill=fill)

    _get_params = make_params
    _transform = transform


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    # only images become float; masks stay uint8 (saliency is float already)
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean=list(mean), std=list(std))]  # fmt: skip


def build_train_transform(*, crop_size: int | Sequence[int], scale_range: Sequence[float],
                          mean: Sequence[float], std: Sequence[float],
                          color_jitter: Mapping[str, float] | None = None,
                          hflip_prob: float = 0.5, scale_mode: str = "factor") -> v2.Compose:  # fmt: skip
    """Random rescale → h-flip → colour jitter (image only) → normalise → random crop with padding.

    Args:
        crop_size: output (H, W) or side; smaller images are padded (image with the mean colour,
            i.e. 0 after normalisation; mask with 255; saliency with 0).
        scale_range: rescale factor range, or long-side pixel range if ``scale_mode="long_side"``.
        mean, std: per-channel normalisation of [0, 1] RGB (e.g. ImageNet).
        color_jitter: kwargs of ``v2.ColorJitter`` (brightness, contrast, saturation, hue) or None.
        hflip_prob: probability of a horizontal flip.
    """
    crop = _size2(crop_size)
    steps: list[v2.Transform] = [RandomRescale(scale_range, scale_mode)]
    if hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if color_jitter:
        steps.append(v2.ColorJitter(**dict(color_jitter)))
    steps += _normalise(mean, std)
    fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE, SaliencyMap: 0.0}
    steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill=fill, padding_mode="constant"))
    return v2.Compose(steps)


def build_eval_transform(*, mean: Sequence[float], std: Sequence[float],
                         resize_long_side: int | None = None,
                         pad_to: int | Sequence[int] | None = None) -> v2.Compose:  # fmt: skip
    """Deterministic: optional resize (long side → ``resize_long_side``, masks nearest),
    normalise, optional bottom/right padding to ``pad_to`` (H, W) so images can be batched."""
    steps: list[v2.Transform] = []
    if resize_long_side is not None:
        steps.append(RandomRescale((resize_long_side, resize_long_side), mode="long_side"))
    steps += _normalise(mean, std)
    if pad_to is not None:
        steps.append(PadTo(pad_to))
    return v2.Compose(steps)


def _as_tensor(array: Any) -> torch.Tensor:
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def to_tv_tensors(image: Any, mask: Any = None, saliency: Any = None) -> dict[str, torch.Tensor]:
    """Wrap numpy arrays as tv_tensors: image (H, W, 3) uint8, mask (H, W) uint8,
    saliency (H, W) uint8 0..255 → {"image", ["mask"], ["saliency" (1, H, W) float in [0, 1]]}."""
    chw = _as_tensor(image).permute(2, 0, 1).contiguous()
    out: dict[str, torch.Tensor] = {"image": tv_tensors.Image(chw)}
    if mask is not None:
        out["mask"] = tv_tensors.Mask(_as_tensor(mask))
    if saliency is not None:
        sal = _as_tensor(saliency).float().div(255.0)[None]
        out["saliency"] = SaliencyMap(sal)
    return out


def finalize(sample: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain tensors: image (3, H, W) float32, mask (H, W) int64, saliency (1, H, W) float32."""
    out = {"image": sample["image"].as_subclass(torch.Tensor).float()}
    if "mask" in sample:
        out["mask"] = sample["mask"].as_subclass(torch.Tensor).long()
    if "saliency" in sample:
        out["saliency"] = sample["saliency"].as_subclass(torch.Tensor).float().clamp_(0, 1)
    return out


def pil_rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Rescale a uint8 ``(H, W, 3)`` image with PIL bicubic, as PSA's and IRN's CAM inference.

    The size is ``(round(H * scale), round(W * scale))`` with NumPy's round-half-to-even (IRN's
    ``imutils.pil_rescale``; PSA's ``round`` gives the same); an unchanged size returns the image.
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"pil_rescale needs a uint8 (H, W, C) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    size = (int(np.round(height * scale)), int(np.round(width * scale)))
    if size == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))


__all__ = [
    "PadTo",
    "RandomRescale",
    "SaliencyMap",
    "build_eval_transform",
    "build_train_transform",
    "finalize",
    "pil_rescale",
    "to_tv_tensors",
]  # fmt: skip
