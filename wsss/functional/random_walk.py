"""Sparse random walks over in-radius affinities (PSA ``infer_aff.py``, IRN ``propagate_to_edge``).

Both repositories build a dense ``N x N`` affinity matrix (``N = h·w``), raise it to ``β``
element-wise, column-normalise it into ``T`` (``T_ij = A_ij / Σ_k A_kj``), square it ``logt``
times and multiply the seeds: ``M_rw = M · T^(2^logt)`` with ``M`` of shape ``(K, N)``. At
IRN's stride-4 grid (128x128) the dense ``T`` alone is 1 GiB and the squarings are O(N³).

Here ``T`` stays sparse (about ``2P + 1`` non-zeros per column, ``P`` = half-neighbourhood size)
and the same product is evaluated right to left as ``t = 2^logt`` sparse mat-vec products,
``M_{k+1} = M_k · T``, i.e. ``M_{k+1}^T = T^T · M_k^T`` with ``T^T`` stored in CSR. Matrix powers
associate, so ``M · T^t = (((M · T) · T) ... ) · T`` exactly; only float rounding differs.
(Repeated squaring would fill ``T`` in, which is why it is not used.)
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import BACKGROUND
from wsss.functional.affinity import _offsets, pair_valid_mask, pairwise_affinity, shifted

__all__ = [
    "boundary_affinity",
    "irn_scores_to_label",
    "irn_semantic_scores",
    "path_indices",
    "propagate",
    "random_walk_from_boundary",
    "random_walk_from_features",
    "transition_matrix",
    "upsample_scores",
]


@functools.cache
def path_indices(radius: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Grid points on the segment from ``(0, 0)`` to each offset (IRN ``PathIndex``, docs/methods.md, "IRNet").

    A point ``(y, x)`` inside the bounding box of the segment (endpoints included) is on the path
    when its distance to the line through the offset ``(dy, dx)`` is < 1, tested exactly in
    integers as ``(dy·x - dx·y)² < dy² + dx²``. Points at distance exactly 1 are excluded: for
    ``(3, 4)`` that drops ``(1, 3)`` and ``(2, 1)``, which a float test can get wrong.

    Args:
        radius: Neighbourhood radius.

    Returns:
        One tuple of ``(y, x)`` points per offset of ``neighbour_offsets(radius)``, in raster
        order, both endpoints included.
    """
    paths = []
    for dy, dx in _offsets(radius):
        length_sq = dy * dy + dx * dx
        points = tuple(
            (y, x)
            for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 < length_sq
        )
        paths.append(points)
    return tuple(paths)


def boundary_affinity(boundary: Tensor, radius: int) -> Tensor:
    """IRN affinities ``a_ij = 1 - max_{k ∈ path(i, j)} B_k`` for all in-radius pairs.

    IRN pads the boundary map with 1.0 before indexing; here the same padding gives affinity 0 to
    every pair whose path leaves the map. Since a path stays in the bounding box of its two
    endpoints, that is exactly the pairs with an out-of-map target — the non-pairs of the layout
    (see :mod:`wsss.functional.affinity`), so in-map affinities are unaffected.

    Args:
        boundary: Boundary probabilities in [0, 1].
        radius: Neighbourhood radius (IRN: 10 for training, 5 for the walk).

    Shape:
        - boundary: ``(..., h, w)``
        - output: ``(..., P, h, w)`` float32
    """
    pad = radius - 1
    padded = F.pad(boundary.float(), (pad, pad, pad, pad), value=1.0)
    affs = []
    for path in path_indices(radius):
        path_max = shifted(padded, pad, *path[0])
        for dy, dx in path[1:]:
            path_max = torch.maximum(path_max, shifted(padded, pad, dy, dx))
        affs.append(1.0 - path_max)
    return torch.stack(affs, dim=-3)


def transition_matrix(affinity: Tensor, radius: int, beta: float, sources: str = "all") -> Tensor:
    """Sparse transposed transition matrix ``T^T`` from half-neighbourhood affinities.

    ``A`` is symmetric (each pair placed at ``(i, j)`` and ``(j, i)``) with a unit diagonal; entries
    are raised to ``β`` and columns normalised, ``T_ij = A_ij^β / Σ_k A_kj^β``. Non-pairs (target
    outside the map) are dropped. Row ``j`` of the returned CSR matrix is column ``j`` of ``T``.

    Args:
        affinity: Pair affinities in the layout of :mod:`wsss.functional.affinity`.
        radius: The radius ``affinity`` was computed with.
        beta: Exponent β.
        sources: ``"all"`` or ``"psa"`` (PSA/IRN's border-cropped sources), see
            :func:`wsss.functional.affinity.pair_valid_mask`.

    Shape:
        - affinity: ``(P, h, w)``
        - output: sparse CSR ``(h·w, h·w)`` float32
    """
    _, height, width = affinity.shape
    device = affinity.device
    num = height * width
    pad = radius - 1
    valid = pair_valid_mask(radius, height, width, device=device, sources=sources)
    powered = torch.where(valid, affinity.float().pow(beta), torch.zeros((), device=device))
    powered_pad = F.pad(powered, (pad, pad, pad, pad))
    valid_pad = F.pad(valid, (pad, pad, pad, pad))
    # Row j of A holds the pairs leaving j (offset o) and those arriving at j (from j - o, whose
    # value sits at source j - o), plus the unit self-loop: 2P + 1 slots per row.
    slots = [((0, 0), torch.ones(height, width, device=device), torch.ones_like(valid[0]))]
    for p, (dy, dx) in enumerate(_offsets(radius)):
        slots.append(((dy, dx), powered[p], valid[p]))
        slots.append(((-dy, -dx), shifted(powered_pad[p], pad, -dy, -dx),
                      shifted(valid_pad[p], pad, -dy, -dx)))  # fmt: skip
    # Sorting slots by index step keeps the columns of every CSR row sorted; two slots share a
    # step only where at most one of them is a real pair.
    slots.sort(key=lambda slot: slot[0][0] * width + slot[0][1])
    steps = torch.tensor([dy * width + dx for (dy, dx), _, _ in slots], device=device)
    values = torch.stack([v.reshape(-1) for _, v, _ in slots], dim=1)  # (N, 2P + 1)
    keep = torch.stack([m.reshape(-1) for _, _, m in slots], dim=1)
    # A is symmetric, so column j of T (= row j of T^T) is row j of A over its sum.
    values = values / values.sum(dim=1, keepdim=True)
    # int32 indices when they fit: less memory traffic per mat-vec (~25 % faster walks on CPU).
    index_dtype = torch.int32 if num * steps.numel() < 2**31 else torch.long
    cols = torch.arange(num, device=device, dtype=index_dtype).unsqueeze(1) + steps.to(index_dtype)
    crow = torch.cat([torch.zeros(1, dtype=index_dtype, device=device),
                      keep.sum(1, dtype=index_dtype).cumsum(0, dtype=index_dtype)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            crow, cols[keep], values[keep], (num, num), check_invariants=False
        )


def propagate(seeds: Tensor, transition_t: Tensor, n_steps: int) -> Tensor:
    """``seeds · T^n_steps`` by repeated sparse mat-vec products with ``T^T``.

    Shape:
        - seeds: ``(K, h, w)``
        - transition_t: sparse ``(h·w, h·w)`` (from :func:`transition_matrix`)
        - output: ``(K, h, w)`` float32
    """
    num_seeds, height, width = seeds.shape
    state = seeds.float().reshape(num_seeds, -1).t().contiguous()
    for _ in range(n_steps):
        state = transition_t @ state
    return state.t().reshape(num_seeds, height, width)


def random_walk_from_features(
    seeds: Tensor, features: Tensor, radius: int = 5, beta: float = 8, logt: int = 8,
    sources: str = "all",
) -> Tensor:
    """PSA random walk with AffinityNet affinities (``infer_aff.py``, docs/methods.md, "PSA / AffinityNet").

    Affinities ``exp(-mean_channels |f_i - f_j|)`` within ``radius`` (symmetric, unit self-loops),
    ``A^β``, column-normalised ``T``, and ``M_rw = M · T^(2^logt)``.

    Args:
        seeds: Seed scores on the feature grid (PSA: [bg, CAMs] 8x8 average-pooled).
        features: AffinityNet features.
        radius: Neighbourhood radius. Default 5.
        beta: Affinity exponent β. Default 8.
        logt: log2 of the number of steps. Default 8 (t = 256).
        sources: ``"all"`` (default) or ``"psa"`` (PSA's border-cropped pair sources, exact
            reproduction of ``infer_aff.py``), see :func:`~wsss.functional.affinity.pair_valid_mask`.

    Shape:
        - seeds: ``(K, h, w)``
        - features: ``(D, h, w)``
        - output: ``(K, h, w)`` float32
    """
    aff = pairwise_affinity(features.unsqueeze(0), radius)[0]
    return propagate(seeds.to(aff.device), transition_matrix(aff, radius, beta, sources), 2**logt)


def random_walk_from_boundary(
    seeds: Tensor, boundary: Tensor, radius: int = 5, beta: float = 10, exp_times: int = 8,
    sources: str = "all",
) -> Tensor:
    """IRN random walk with boundary affinities (``propagate_to_edge``, docs/methods.md, "IRNet").

    ``a_ij = 1 - max_{path} B``, symmetric with unit diagonal, ``A^β``, column-normalised, and
    ``M · T^(2^exp_times)``. The seeds are used as given; IRN's ``× (1 - B)`` attenuation is in
    :func:`irn_semantic_scores`.

    Args:
        seeds: Seed scores on the boundary grid.
        boundary: Boundary probabilities.
        radius: Neighbourhood radius. Default 5.
        beta: Affinity exponent β. Default 10.
        exp_times: log2 of the number of steps. Default 8 (t = 256).
        sources: ``"all"`` (default) or ``"psa"`` (IRN's ``PathIndex`` crops its sources the
            same way as PSA), see :func:`~wsss.functional.affinity.pair_valid_mask`.

    Shape:
        - seeds: ``(K, h, w)``
        - boundary: ``(h, w)``
        - output: ``(K, h, w)`` float32
    """
    aff = boundary_affinity(boundary, radius)
    return propagate(seeds.to(aff.device), transition_matrix(aff, radius, beta, sources), 2**exp_times)


def irn_semantic_scores(
    cams: Tensor, boundary: Tensor, radius: int = 5, beta: float = 10, exp_times: int = 8,
    sources: str = "all",
) -> Tensor:
    """IRN walk scores: seeds ``cams · (1 - B)`` propagated by :func:`random_walk_from_boundary`.

    No background channel takes part in the walk (docs/methods.md, "IRNet"); add it afterwards with
    :func:`upsample_scores` and :func:`irn_scores_to_label`.

    Shape:
        - cams: ``(K, h, w)`` stride-4 CAMs of the present classes (or instance CAMs)
        - boundary: ``(h, w)``
        - output: ``(K, h, w)`` float32
    """
    seeds = cams.float() * (1.0 - boundary.float())
    return random_walk_from_boundary(seeds, boundary, radius, beta, exp_times, sources)


def upsample_scores(scores: Tensor, size: tuple[int, int], stride: int = 4) -> Tensor:
    """Bilinear ×``stride`` upsampling (align_corners False), cropped to ``size`` as IRN does.

    Shape:
        - scores: ``(K, h, w)``
        - output: ``(K, H, W)`` with ``(H, W) = size``
    """
    up = F.interpolate(
        scores.float().unsqueeze(0), scale_factor=stride, mode="bilinear", align_corners=False
    )[0]
    return up[:, : size[0], : size[1]]


def irn_scores_to_label(scores: Tensor, keys: Tensor, bg_threshold: float = 0.25) -> Tensor:
    """IRN semantic pseudo label from upsampled walk scores (``make_sem_seg_labels``, docs/methods.md, "IRNet").

    Scores are divided by their *global* max over classes and pixels (not per class), a constant
    background ``bg_threshold`` is prepended, and the argmax is mapped through ``[0, keys + 1]``.

    Args:
        scores: Upsampled walk scores, one channel per key.
        keys: Foreground class index 0..19 of each channel.
        bg_threshold: Constant background score. Default 0.25 (``sem_seg_bg_thres``).

    Returns:
        int64 mask: 0 = background, ``c + 1`` = class ``c``.

    Shape:
        - scores: ``(K, H, W)``
        - keys: ``(K,)``
        - output: ``(H, W)`` int64
    """
    scores = scores.float()
    # Guard against an all-zero map (IRN would divide by zero); such a map becomes background.
    norm = scores / scores.amax().clamp_min(1e-12) if scores.numel() else scores
    bg = scores.new_full((1, *scores.shape[1:]), bg_threshold)
    winner = torch.cat([bg, norm]).argmax(dim=0)
    lut = torch.cat(
        [torch.tensor([BACKGROUND], device=scores.device), keys.to(scores.device).long() + 1]
    )
    return lut[winner]
