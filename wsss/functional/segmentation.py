"""Test-time operations of the segmentation stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def multiscale_probs(
    model: Callable[[Tensor], Tensor], image: Tensor, scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Average softmax probabilities over scales (and horizontal flips).

    Args:
        model: maps (B, 3, h, w) normalised images to (B, C, h', w') logits.
        image: (1, 3, H, W) normalised image.
        scales: resize factors of the input; 1.0 alone is single-scale inference.
        flip: also run each scale on the mirrored image and flip the result back.

    Shape:
        returns (C, H, W) probabilities summing to one over C.
    """
    height, width = image.shape[-2:]
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = image if size == (height, width) else F.interpolate(
            image, size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        logits = F.interpolate(model(batch), size=(height, width), mode="bilinear", align_corners=False)
        probs = logits.float().softmax(dim=1)
        if flip:
            probs = torch.stack([probs[0], probs[1].flip(-1)])
        summed = probs.sum(dim=0)
        total = summed if total is None else total + summed
    return total / (len(scales) * (2 if flip else 1))
