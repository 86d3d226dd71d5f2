"""ToCo (Ru et al., CVPR 2023): token contrast losses and online pseudo-labels, as pure functions.

Constants follow the official code (rulixiang/ToCo, docs/methods.md): CAM thresholds
bkg 0.5 / high 0.7 / low 0.25 on VOC (COCO: 0.45 / 0.65 / 0.25), CTC temperature 0.5, 10 views
(2 global + 8 local 96 px crops), a local crop is a *negative* when at most 20 % of it is uncertain.
Labels use 0 = background, c + 1 = class c, ``ignore_index`` (255) = unsure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.functional.par import DILATIONS, par_refine


def masked_ptc_loss(features: Tensor, aff_mask: Tensor) -> Tensor:
    """Patch-token contrast: pull same-label token pairs to |cos| = 1, push different-label pairs to 0.

    loss = 0.5 (1 - Σ_pos |cos| / (n_pos + 1)) + 0.5 Σ_neg |cos| / (n_neg + 1).

    Shape:
        features: (B, D, h, w) patch tokens; aff_mask: (B, hw, hw) with 1 (same label),
        0 (different label), anything else ignored (255). Returns a scalar.
    """
    b, d, h, w = features.shape
    x = F.normalize(features.reshape(b, d, h * w), p=2, dim=1, eps=1e-8)
    cos = torch.matmul(x.transpose(1, 2), x).abs()
    pos, neg = (aff_mask == 1).to(cos.dtype), (aff_mask == 0).to(cos.dtype)
    return 0.5 * (1 - (pos * cos).sum() / (pos.sum() + 1)) + 0.5 * (neg * cos).sum() / (neg.sum() + 1)


def ctc_loss(student: Tensor, teacher: Tensor, flags: Tensor, temp: float = 0.5) -> Tensor:
    """Class-token contrast (InfoNCE over projected class tokens), as ToCo's ``CTCLoss_neg``.

    For image i, each teacher global view t and each positive student view j (flag 1):
    -log(e_tj / (e_tj + Σ_neg e_tn + 1e-4)) with e = exp(<t, s> / temp); plus one term
    -log(1 / (1 + Σ_neg e_tn + 1e-4)) per teacher view; summed, halved (two teacher views) and
    divided by (number of positives + 1e-4), then averaged over images.

    Shape:
        student: (V * B, P) view-major (views 0-1 global, 2.. local); teacher: (2 * B, P);
        flags: (B, V) with 1 = positive view, 0 = negative. Returns a scalar.
    """
    b, views = flags.shape
    s = student.reshape(views, b, -1).permute(1, 0, 2)
    t = teacher.reshape(2, b, -1).permute(1, 0, 2)
    logits = torch.exp(torch.matmul(t, s.transpose(1, 2)) / temp)  # (B, 2, V)
    total = logits.new_zeros(())
    for i in range(b):
        negatives = logits[i][:, flags[i] == 0].sum(dim=1)  # (2,)
        positives = logits[i][:, flags[i] != 0]  # (2, n_pos)
        loss = -torch.log(positives / (positives + negatives[:, None] + 1e-4)).sum(dim=1)
        loss = loss - torch.log(1 / (1 + negatives + 1e-4))
        total = total + loss.sum() / 2 / (positives.shape[1] + 1e-4)
    return total / b


def balanced_seg_loss(logits: Tensor, label: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean of the background-only and the foreground-only cross-entropies (ToCo ``get_seg_loss``).

    Shape:
        logits: (B, C + 1, H, W); label: (B, H, W) long. Returns a scalar (NaN-free only when both
        parts have pixels: an empty part gives NaN, as in the official code; callers guard).
    """
    bg = label.masked_fill(label != 0, ignore_index)
    fg = label.masked_fill(label == 0, ignore_index)
    parts = []
    for target in (bg, fg):
        if (target != ignore_index).any():
            parts.append(F.cross_entropy(logits, target, ignore_index=ignore_index))
        else:
            parts.append(logits.sum() * 0.0)
    return 0.5 * (parts[0] + parts[1])


def cam_to_label(cams: Tensor, labels: Tensor, bkg_thre: float, high_thre: float | None = None,
                 low_thre: float | None = None, ignore_mid: bool = False, valid: Tensor | None = None,
                 ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """CAMs -> (masked CAMs, pseudo-label).

    The label is argmax + 1 where the best present-class score exceeds ``bkg_thre``, else 0.
    With ``ignore_mid``: scores in (low_thre, high_thre] become ``ignore_index`` and those
    <= low_thre background. Pixels outside ``valid`` (the real image inside a padded crop) are ignored.

    Shape:
        cams: (B, C, h, w) in [0, 1]; labels: (B, C) multi-hot; valid: (B, h, w) bool or None.
        returns (B, C, h, w) cams * labels and (B, h, w) long.
    """
    masked = cams * labels[:, :, None, None]
    value, index = masked.max(dim=1)
    label = index + 1
    label[value <= bkg_thre] = 0
    if ignore_mid:
        label[value <= high_thre] = ignore_index
        label[value <= low_thre] = 0
    if valid is not None:
        label = label.masked_fill(~valid, ignore_index)
    return masked, label


def roi_mask(cams: Tensor, labels: Tensor, low_thre: float, high_thre: float) -> Tensor:
    """0 = confident background (<= low), 2 = confident foreground (>= high), 1 = uncertain.

    Shape: cams (B, C, h, w), labels (B, C) -> (B, h, w) int64.
    """
    value = (cams * labels[:, :, None, None]).max(dim=1).values
    roi = torch.ones_like(value, dtype=torch.long)
    roi[value <= low_thre] = 0
    roi[value >= high_thre] = 2
    return roi


def label_to_aff_mask(label: Tensor, ignore_index: int = 255) -> Tensor:
    """Pairwise targets: 1 same label, 0 different, ``ignore_index`` if either is ignored or i = j.

    Shape: (B, h, w) -> (B, hw, hw) long.
    """
    b = label.shape[0]
    flat = label.reshape(b, -1)
    aff = (flat[:, :, None] == flat[:, None, :]).long()
    ignored = flat == ignore_index
    aff = aff.masked_fill(ignored[:, :, None] | ignored[:, None, :], ignore_index)
    diag = torch.arange(flat.shape[1], device=label.device)
    aff[:, diag, diag] = ignore_index
    return aff


def crop_local_views(images: Tensor, roi: Tensor, num_crops: int = 8, crop_size: int = 96,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random ``crop_size`` crops at non-confident-foreground positions (roi <= 1); a crop whose
    roi sum / crop area <= 0.2 is a negative (flag 0), else positive (ToCo ``crop_from_roi_neg``).

    Shape:
        images: (B, 3, H, W); roi: (B, H, W) from :func:`roi_mask` at image resolution.
        returns crops (num_crops, B, 3, crop, crop) and flags (B, num_crops + 2) (2 global views: 1).
    """
    b, c, h, w = images.shape
    if h < crop_size or w < crop_size:
        raise ValueError(f"local crops of {crop_size}px need images at least that large, got {h}x{w}")
    margin = crop_size // 2
    crops = images.new_zeros(num_crops, b, c, crop_size, crop_size)
    flags = images.new_ones(b, num_crops + 2)
    for i in range(b):
        inner = roi[i, margin:h - margin, margin:w - margin]
        candidates = (inner <= 1).nonzero()
        if len(candidates) < num_crops:
            candidates = (inner >= 0).nonzero()
        if len(candidates) == 0:  # image barely larger than the crop: use the top-left corner
            candidates = torch.zeros(1, 2, dtype=torch.long, device=images.device)
        if len(candidates) >= num_crops:
            order = torch.randperm(len(candidates), generator=generator)[:num_crops]
        else:  # fewer positions than crops: sample with replacement
            order = torch.randint(len(candidates), (num_crops,), generator=generator)
        pick = candidates[order.to(candidates.device)]
        for j, (y, x) in enumerate(pick.tolist()):
            crops[j, i] = images[i, :, y:y + crop_size, x:x + crop_size]
            window = roi[i, y:y + crop_size, x:x + crop_size]
            if window.sum() / (crop_size * crop_size) <= 0.2:
                flags[i, j + 2] = 0
    return crops, flags


def refine_cams_with_bkg(images: Tensor, cams: Tensor, labels: Tensor, high_thre: float, low_thre: float,
                         valid: Tensor | None = None, ignore_index: int = 255, down_scale: int = 2,
                         dilations: Sequence[int] = DILATIONS, num_iter: int = 10) -> Tensor:
    """ToCo's online pseudo-label: PAR-refine [bg, present CAMs] twice, with the background score
    set to ``high_thre`` and to ``low_thre``; a pixel is background only if both runs say so,
    foreground where the high-background run says so, ignored otherwise.

    Args:
        images: (B, 3, H, W) de-normalised RGB (0..255); PAR runs at 1 / ``down_scale`` resolution.
        cams: (B, C, H, W) masked CAMs in [0, 1] (from :func:`cam_to_label`).
        labels: (B, C) multi-hot image labels.

    Shape:
        returns (B, H, W) long labels (0 bg, c + 1, ``ignore_index``).
    """
    b, _, h, w = images.shape
    small = (h // down_scale, w // down_scale)
    images_small = F.interpolate(images, size=small, mode="bilinear", align_corners=False)
    present = torch.cat([labels.new_ones(b, 1), labels], dim=1) > 0  # background always
    probs = []
    for bkg in (high_thre, low_thre):
        scores = torch.cat([cams.new_full((b, 1, h, w), bkg), cams], dim=1)
        scores = F.interpolate(scores, size=small, mode="bilinear", align_corners=False)
        # softmax over the image's classes only (absent classes get probability 0)
        probs.append(scores.masked_fill(~present[:, :, None, None], float("-inf")).softmax(dim=1))
    # PAR is linear per channel: both background levels of an image go through one call, over
    # the image's classes only (absent channels would cost time and stay zero).
    both = torch.cat(probs, dim=1)
    keep = torch.cat([present, present], dim=1)
    labels_out = torch.full((2, b, h, w), ignore_index, dtype=torch.long, device=cams.device)
    for i in range(b):
        index = keep[i].nonzero()[:, 0]
        refined = par_refine(images_small[i:i + 1], both[i:i + 1, index], dilations, num_iter)
        refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)[0]
        k = len(index) // 2
        for level, (part, keys) in enumerate(((refined[:k], index[:k]), (refined[k:], index[k:] - present.shape[1]))):
            labels_out[level, i] = keys[part.argmax(dim=0)]
    results = []
    for out in labels_out:
        if valid is not None:
            out = out.masked_fill(~valid, ignore_index)
        results.append(out)
    high, low = results
    label = high.clone()
    label[high == 0] = ignore_index
    label[(high + low) == 0] = 0
    return label
