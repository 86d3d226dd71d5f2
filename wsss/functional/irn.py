"""IRNet losses and instance pseudo labels (docs/methods.md, "IRNet").

Displacements are in pixels of the stride-4 grid, channel 0 = dy (rows) and channel 1 = dx
(columns), matching IRN's ``disp_target`` built from ``(dy, dx)`` offsets. A pixel at ``x_i`` points
to the centroid ``x_i + D_i``.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.functional.affinity import _offsets, affinity_labels, shifted
from wsss.functional.random_walk import boundary_affinity, irn_semantic_scores, upsample_scores

__all__ = [
    "instance_centroids",
    "instance_masks_from_walk",
    "instances_from_displacement",
    "irn_losses",
    "irn_total_loss",
]


def irn_losses(
    boundary: Tensor, displacement: Tensor, label: Tensor, radius: int = 10
) -> dict[str, Tensor]:
    """The four IRNet training losses (``train_irn.py`` + ``AffinityDisplacementLoss``).

    With ``a = 1 - max_path B`` over every in-radius pair ``(i, j = i + (dy, dx))``:

    * ``pos = ½ Σ_{bg+} -log(a + 1e-5) / (|bg+| + 1e-5) + ½ (same over fg+)``;
    * ``neg = Σ_{neg} -log(1 + 1e-5 - a) / (|neg| + 1e-5)``;
    * ``dp_fg = Σ_{fg+} ‖(D_i - D_j) - (x_j - x_i)‖₁ / (2|fg+| + 1e-5)`` — zero when the pair points to
      one centroid, ``x_i + D_i = x_j + D_j``;
    * ``dp_bg = Σ_{bg+} ‖D_i - D_j‖₁ / (2|bg+| + 1e-5)``.

    Counts are pooled over the batch. The ``2|·|`` denominators (the two displacement channels)
    follow the code. Pairs are all in-map pairs, not only IRN's border-cropped sources.

    Args:
        boundary: Boundary probabilities (after the sigmoid).
        displacement: Displacement field, channel 0 = dy, 1 = dx, in stride-4 pixels.
        label: Relation label at the same resolution (IRN: ir_label downscaled x0.25, nearest),
            0 = background, 255 = ignore.
        radius: Pair radius. Default 10 (training).

    Returns:
        Dict with scalar float32 tensors ``pos``, ``neg``, ``dp_fg``, ``dp_bg``.

    Shape:
        - boundary: ``(B, 1, h, w)``
        - displacement: ``(B, 2, h, w)``
        - label: ``(B, h, w)``
    """
    aff = boundary_affinity(boundary[:, 0], radius)
    bg_pos, fg_pos, neg = affinity_labels(label.to(aff.device), radius)
    zero = torch.zeros((), device=aff.device)
    pos_term = -torch.log(aff + 1e-5)
    bg_count, fg_count = bg_pos.sum(), fg_pos.sum()
    pos = (torch.where(bg_pos, pos_term, zero).sum() / (bg_count + 1e-5)) / 2 + (
        torch.where(fg_pos, pos_term, zero).sum() / (fg_count + 1e-5)
    ) / 2
    neg_loss = torch.where(neg, -torch.log(1.0 + 1e-5 - aff), zero).sum() / (neg.sum() + 1e-5)

    disp = displacement.float()
    pad = radius - 1
    padded = F.pad(disp, (pad, pad, pad, pad))
    dp_fg = zero
    dp_bg = zero
    for p, (dy, dx) in enumerate(_offsets(radius)):
        pair = disp - shifted(padded, pad, dy, dx)  # D_i - D_j, (B, 2, h, w)
        fg_err = (pair[:, 0] - dy).abs() + (pair[:, 1] - dx).abs()
        dp_fg = dp_fg + torch.where(fg_pos[:, p], fg_err, zero).sum()
        dp_bg = dp_bg + torch.where(bg_pos[:, p], pair.abs().sum(dim=1), zero).sum()
    return {
        "pos": pos,
        "neg": neg_loss,
        "dp_fg": dp_fg / (2 * fg_count + 1e-5),
        "dp_bg": dp_bg / (2 * bg_count + 1e-5),
    }


def irn_total_loss(losses: dict[str, Tensor]) -> Tensor:
    """IRN objective ``(pos + neg)/2 + (dp_fg + dp_bg)/2`` from :func:`irn_losses`."""
    return (losses["pos"] + losses["neg"]) / 2 + (losses["dp_fg"] + losses["dp_bg"]) / 2


def instance_centroids(displacement: Tensor, n_iter: int = 300) -> Tensor:
    """Converged instance centroid of every pixel (IRN ``find_centroids_with_refinement``).

    Every pixel starts at its own coordinate and moves by the bilinearly sampled displacement
    (corners ``floor``/``ceil`` as in IRN) for ``n_iter`` steps, clipped to the map after each step;
    the result is rounded (half to even, like ``np.round``).

    Args:
        displacement: Displacement field, channel 0 = dy, 1 = dx.
        n_iter: Refinement steps. Default 300 (IRN: any integer >= 100).

    Shape:
        - displacement: ``(2, h, w)``
        - output: ``(2, h, w)`` int64, (row, column) of each pixel's centroid
    """
    disp = displacement.float()
    height, width = disp.shape[-2:]
    flat = disp.reshape(2, -1)
    cy, cx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=disp.device),
        torch.arange(width, dtype=torch.float32, device=disp.device),
        indexing="ij",
    )

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat[:, (yy * width + xx).long()]

    for _ in range(n_iter):
        y0, x0 = cy.floor(), cx.floor()
        y1, x1 = cy.ceil(), cx.ceil()
        wy, wx = cy - y0, cx - x0
        step = (
            at(y1, x1) * (wy * wx)
            + at(y0, x1) * ((1 - wy) * wx)
            + at(y1, x0) * (wy * (1 - wx))
            + at(y0, x0) * ((1 - wy) * (1 - wx))
        )
        cy = (cy + step[0]).clamp(0, height - 1)
        cx = (cx + step[1]).clamp(0, width - 1)
    return torch.stack([cy.round(), cx.round()]).long()


def instances_from_displacement(
    displacement: Tensor, radius_threshold: float = 2.5, n_iter: int = 300
) -> Tensor:
    """Instance map from a displacement field (IRN ``cluster_centroids``, docs/methods.md, "IRNet").

    The weak-displacement region ``|D| < radius_threshold`` is split into 4-connected components;
    each pixel takes the component at its converged centroid (:func:`instance_centroids`). As in
    IRN (``compress_range`` then one-hot), the pixels whose centroid lands outside every
    component form one extra instance of their own, and the ids are compressed to ``0..I-1`` in
    increasing component order, so that group (if any) gets id 0.

    Args:
        displacement: Displacement field, channel 0 = dy, 1 = dx.
        radius_threshold: Weak-displacement threshold in stride-4 pixels. Default 2.5.
        n_iter: Centroid refinement steps. Default 300.

    Shape:
        - displacement: ``(2, h, w)``
        - output: ``(h, w)`` int64 instance ids ``0..I-1`` (every id is used)
    """
    centroids = instance_centroids(displacement, n_iter).cpu().numpy()
    strength = displacement.float().norm(dim=0).cpu().numpy()
    components, _ = scipy.ndimage.label(strength < radius_threshold)  # cross = 4-connectivity
    clusters = components[centroids[0], centroids[1]]
    _, compact = np.unique(clusters, return_inverse=True)
    return torch.from_numpy(compact.reshape(clusters.shape).astype(np.int64)).to(
        displacement.device
    )


def instance_masks_from_walk(
    cams: Tensor,
    keys: Tensor,
    boundary: Tensor,
    instance_map: Tensor,
    image_size: tuple[int, int],
    radius: int = 5,
    beta: float = 10,
    exp_times: int = 8,
    bg_threshold: float = 0.25,
    min_fragment_ratio: float = 0.01,
    stride: int = 4,
) -> dict[str, np.ndarray]:
    """IRN instance pseudo labels (``make_ins_seg_labels``, docs/methods.md, "IRNet").

    1. Seeds: every class CAM times every instance mask, ``K·I`` maps ordered class-major.
    2. Walk: :func:`irn_semantic_scores` (seeds × (1 - B), radius 5, β 10, 2^8 steps).
    3. Upsample ×``stride``, crop to ``image_size``, divide by the global max, prepend a constant
       background ``bg_threshold`` and take the argmax.
    4. Split each winning (class, instance) mask into 4-connected components; a component's score
       is the max normalised walk score inside it, or 0 when it covers less than
       ``min_fragment_ratio`` of the image (kept, as in IRN).

    Args:
        cams: Stride-4 CAMs of the present classes.
        keys: Foreground class index 0..19 of each CAM channel.
        boundary: Boundary probabilities on the same grid.
        instance_map: Instance ids ``0..I-1`` (:func:`instances_from_displacement`).
        image_size: ``(H, W)`` of the original image.
        radius, beta, exp_times: Walk parameters. Defaults 5, 10, 8.
        bg_threshold: Background score after normalisation. Default 0.25 (``ins_seg_bg_thres``).
        min_fragment_ratio: Area fraction below which a fragment scores 0. Default 0.01.
        stride: Grid stride. Default 4.

    Returns:
        ``masks`` (N, H, W) bool, ``classes`` (N,) int64 in 0..19, ``scores`` (N,) float32 —
        plain arrays, ready for ``np.savez``.

    Shape:
        - cams: ``(K, h, w)``; keys: ``(K,)``; boundary, instance_map: ``(h, w)``
    """
    height, width = image_size
    num_instances = int(instance_map.max()) + 1 if instance_map.numel() else 0
    one_hot = F.one_hot(instance_map.long(), num_instances).permute(2, 0, 1).to(cams.device)
    seeds = (cams.float().unsqueeze(1) * one_hot.unsqueeze(0)).flatten(0, 1)
    scores = irn_semantic_scores(seeds, boundary, radius, beta, exp_times)
    up = upsample_scores(scores, (height, width), stride)
    up = up / up.amax().clamp_min(1e-12) if up.numel() else up
    with_bg = torch.cat([up.new_full((1, height, width), bg_threshold), up])
    winner = with_bg.argmax(dim=0).cpu().numpy()
    up_np = up.cpu().numpy()
    class_of = np.repeat(keys.cpu().numpy().astype(np.int64), num_instances)
    min_size = height * width * min_fragment_ratio

    masks, classes, out_scores = [], [], []
    for index in range(up_np.shape[0]):
        components, count = scipy.ndimage.label(winner == index + 1)
        for comp in range(1, count + 1):
            segment = components == comp
            score = 0.0 if segment.sum() < min_size else float(up_np[index][segment].max())
            masks.append(segment)
            classes.append(class_of[index])
            out_scores.append(score)
    return {
        "masks": np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
        "classes": np.asarray(classes, dtype=np.int64),
        "scores": np.asarray(out_scores, dtype=np.float32),
    }
