"""Pixel-adaptive refinement (PAR, Ru et al. CVPR 2022; used by ToCo): propagate scores between
dilated 8-neighbours with weights from local colour contrast plus a small spatial prior.

Constants from the official code (docs/methods.md, ToCo): dilations [1, 2, 4, 8, 12, 24],
10 iterations, w1 = 0.3 (colour / position temperature), w2 = 0.01 (weight of the position term).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DILATIONS = (1, 2, 4, 8, 12, 24)

# The 8 neighbours of a 3x3 window in row-major order (centre excluded).
_OFFSETS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]


def dilated_neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """The 8 neighbours at each dilation, clamped at the border (replicate padding).

    Shape:
        x: (B, C, H, W) -> (B, C, 8 * len(dilations), H, W)
    """
    h, w = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, [pad] * 4, mode="replicate")  # clamping once serves every dilation
    out = []
    for d in dilations:
        for i, j in _OFFSETS:
            y0, x0 = pad + (i - 1) * d, pad + (j - 1) * d
            out.append(padded[..., y0:y0 + h, x0:x0 + w])
    return torch.stack(out, dim=2)


def par_affinity(images: Tensor, dilations: Sequence[int] = DILATIONS, w1: float = 0.3,
                 w2: float = 0.01) -> Tensor:
    """Neighbour weights of PAR: softmax over neighbours of -(|ΔI| / (std_I · w1))², averaged over
    colour channels, plus ``w2`` times the softmax of the same on neighbour distances.

    Shape:
        images: (B, 3, H, W) (any normalisation: the colour term divides by the local std)
        returns (B, 1, 8 * len(dilations), H, W); sums to 1 + w2 over the neighbour axis.
    """
    b, _, h, w = images.shape
    neighbours = dilated_neighbours(images, dilations)
    diff = (neighbours - images.unsqueeze(2)).abs()
    std = neighbours.std(dim=2, keepdim=True)
    aff = (-(diff / (std + 1e-8) / w1) ** 2).mean(dim=1, keepdim=True)
    ring = torch.ones(8, device=images.device, dtype=images.dtype)
    ring[[0, 2, 5, 7]] = math.sqrt(2.0)  # diagonal neighbours are sqrt(2) * d away
    pos = torch.cat([ring * d for d in dilations]).view(1, 1, -1, 1, 1).expand(b, 1, -1, h, w)
    pos_aff = -(pos / (pos.std(dim=2, keepdim=True) + 1e-8) / w1) ** 2
    return F.softmax(aff, dim=2) + w2 * F.softmax(pos_aff, dim=2)


def par_refine(images: Tensor, masks: Tensor, dilations: Sequence[int] = DILATIONS, num_iter: int = 10,
               w1: float = 0.3, w2: float = 0.01) -> Tensor:
    """Refine score maps with PAR.

    Args:
        images: (B, 3, H, W) images (ToCo passes de-normalised 0..255 RGB at half resolution).
        masks: (B, K, h, w) scores (resized bilinearly, align_corners=True, to (H, W) first).
        num_iter: propagation steps; each replaces a score by the weighted sum of its neighbours.

    Shape:
        returns (B, K, H, W).
    """
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    aff = par_affinity(images, dilations, w1, w2)
    for _ in range(num_iter):
        masks = (dilated_neighbours(masks, dilations) * aff).sum(dim=2)
    return masks
