"""EPS: explicit pseudo-pixel supervision from an off-the-shelf saliency map (docs/methods.md, "EPS").

Follows ``EPS:eps.py: get_eps_loss``. EPS's map has ``C + 1`` channels with the background
LAST (index C), is not ReLU'd, and the saliency target stays continuous.

Defaults ``tau=0.5, lam=0.5`` are the code defaults. The released scripts use
``tau=0.4, lam=0.5`` for PASCAL VOC (``script/voc12_eps.sh``) and ``tau=0.4, lam=0.9`` for
COCO (``script/coco_eps.sh``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["eps_overlap_ratio", "eps_saliency_estimate", "eps_saliency_loss"]


def eps_overlap_ratio(probs: Tensor, saliency: Tensor) -> Tensor:
    """Fraction of each class's predicted region that is salient (``iou_saliency`` in EPS).

    ``r_c = sum(round(P_c) * round(S)) / sum(round(P_c) + 1e-4)``. The 1e-4 is added per pixel
    before the sum, as in the code, so the denominator is ``|round(P_c)| + 1e-4 * h * w``.
    ``torch.round`` rounds half to even, so exactly 0.5 counts as 0.

    Args:
        probs: Softmax probabilities of the foreground channels (detached by the caller).
        saliency: Saliency at the same resolution, in ``[0, 1]``.

    Shape:
        - probs: ``(B, C, h, w)``
        - saliency: ``(B, 1, h, w)``
        - output: ``(B, C)``
    """
    pred = torch.round(probs.float())
    inter = (pred * torch.round(saliency.float())).flatten(2).sum(-1)
    return inter / (pred + 1e-4).flatten(2).sum(-1)


def eps_saliency_estimate(
    cam: Tensor, saliency: Tensor, labels: Tensor, tau: float = 0.5, lam: float = 0.5
) -> Tensor:
    """The saliency map EPS reconstructs from the class maps (before the MSE).

    ``P = softmax(cam)`` over all ``C + 1`` channels. A present class with overlap ratio
    ``r_c > tau`` is foreground; a present class with ``r_c <= tau`` joins the background set
    together with the background channel; absent classes are in neither. Then
    ``S_hat = lam * sum_fg P_c + (1 - lam) * (1 - sum_bg P_c)``.

    Args:
        cam: Raw class maps, background channel LAST.
        saliency: Saliency map in ``[0, 1]``; nearest-resized to ``(h, w)`` like EPS's default
            ``F.interpolate`` (no-op when the size already matches).
        labels: Image-level multi-hot foreground labels.
        tau: Overlap-ratio threshold. Default 0.5 (VOC/COCO scripts: 0.4).
        lam: Foreground/background blend. Default 0.5 (COCO script: 0.9).

    Shape:
        - cam: ``(B, C + 1, h, w)``
        - saliency: ``(B, 1, H, W)``
        - labels: ``(B, C)``
        - output: ``(B, 1, h, w)`` float32
    """
    b, c1, h, w = cam.shape
    if labels.shape != (b, c1 - 1):
        raise ValueError(f"labels must be (B, C) = {(b, c1 - 1)}, got {tuple(labels.shape)}")
    sal = F.interpolate(saliency.float(), size=(h, w), mode="nearest")
    probs = F.softmax(cam.float(), dim=1)
    present = labels.bool()
    salient = eps_overlap_ratio(probs[:, :-1].detach(), sal) > tau
    ones = torch.ones_like(present[:, :1])
    fg_sel = torch.cat([present & salient, ~ones], dim=1).float()[:, :, None, None]
    bg_sel = torch.cat([present & ~salient, ones], dim=1).float()[:, :, None, None]
    fg_map = (probs * fg_sel).sum(1, keepdim=True)
    bg_map = (probs * bg_sel).sum(1, keepdim=True)
    return lam * fg_map + (1 - lam) * (1 - bg_map)


def eps_saliency_loss(
    cam: Tensor,
    saliency: Tensor,
    labels: Tensor,
    tau: float = 0.5,
    lam: float = 0.5,
    return_map: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """EPS saliency loss ``L_sal = mean((S_hat - S)^2)`` at CAM resolution.

    See :func:`eps_saliency_estimate` for ``S_hat``; ``S`` is the nearest-resized, continuous
    saliency map. EPS trains with ``L = L_cls + L_sal`` where ``L_cls`` is the multilabel
    soft-margin loss on the GAP of the first ``C`` channels.

    Args:
        cam: Raw class maps, background channel LAST.
        saliency: Saliency map in ``[0, 1]``.
        labels: Image-level multi-hot foreground labels.
        tau: Default 0.5 (code default; VOC and COCO scripts use 0.4).
        lam: Default 0.5 (VOC script 0.5; COCO script 0.9).
        return_map: Also return ``S_hat``. Default False.

    Shape:
        - cam: ``(B, C + 1, h, w)``
        - saliency: ``(B, 1, H, W)``
        - labels: ``(B, C)``
        - output: scalar float32, or ``(scalar, (B, 1, h, w))`` with ``return_map``
    """
    estimate = eps_saliency_estimate(cam, saliency, labels, tau, lam)
    target = F.interpolate(saliency.float(), size=cam.shape[-2:], mode="nearest")
    loss = F.mse_loss(estimate, target)
    return (loss, estimate) if return_map else loss
