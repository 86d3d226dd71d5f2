"""Inter-pixel affinities, their pair labels and the AffinityNet loss (docs/methods.md, "PSA / AffinityNet", "IRNet").

Layout used throughout (PSA and IRN both enumerate pairs this way, docs/methods.md, "PSA / AffinityNet", "IRNet"): a map of
size ``(h, w)`` and a radius ``r`` give ``P = len(neighbour_offsets(r))`` offsets ``(dy, dx)``,
half of the neighbourhood so each unordered pair appears once. A pair tensor has shape
``(..., P, h, w)``: entry ``[p, y, x]`` is the pair (source ``(y, x)``, target
``(y + dy_p, x + dx_p)``). Entries whose target falls outside the map are *not pairs*: their masks
are ``False`` and their affinities 0. Unlike the official code, which crops a border of ``r - 1``
source positions so that every offset stays inside, all in-map pairs are kept.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import BACKGROUND, IGNORE

__all__ = [
    "affinity_labels",
    "affinity_loss",
    "irn_label_from_cams",
    "neighbour_offsets",
    "pair_valid_mask",
    "pairwise_affinity",
    "psa_affinity_label",
    "shifted",
]


@functools.cache
def _offsets(radius: int) -> tuple[tuple[int, int], ...]:
    if radius < 2:
        raise ValueError(f"radius must be >= 2 to have any neighbour, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return tuple(offsets)


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Half-neighbourhood offsets ``(dy, dx)`` with ``dx² + dy² < radius²`` (PSA/IRN order).

    ``dy = 0`` with ``dx = 1..r-1`` first, then ``dy = 1..r-1`` with ``dx = -(r-1)..(r-1)``. Radius 5
    gives 34 offsets, radius 10 gives 152.

    Args:
        radius: Exclusive neighbourhood radius ``r`` (>= 2).

    Returns:
        A fresh list of ``P`` offsets.
    """
    return list(_offsets(radius))


SOURCES = ("all", "psa")


def pair_valid_mask(
    radius: int, height: int, width: int, device: torch.device | None = None, sources: str = "all"
) -> Tensor:
    """Which ``(offset, source)`` entries are real pairs, i.e. have their target inside the map.

    ``sources="all"`` (default): every pixel is a source. ``sources="psa"``: only the sources PSA
    and IRN index (``get_indices_of_pairs`` / ``PathIndex``), which drop the last ``r - 1`` rows
    and the first and last ``r - 1`` columns, so every offset's target is inside the map; pixels
    there still take part as targets. The default keeps those pairs, as the border pixels
    otherwise have fewer neighbours in the walk; ``"psa"`` reproduces the official walks.

    Shape:
        - output: ``(P, h, w)`` bool
    """
    if sources not in SOURCES:
        raise ValueError(f"sources must be one of {SOURCES}, got {sources!r}")
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    pad = radius - 1
    if sources == "psa":
        src = (ys < height - pad)[:, None] & ((xs >= pad) & (xs < width - pad))[None, :]
    else:
        src = torch.ones(height, width, dtype=torch.bool, device=device)
    masks = []
    for dy, dx in _offsets(radius):
        row_ok = (ys + dy >= 0) & (ys + dy < height)
        col_ok = (xs + dx >= 0) & (xs + dx < width)
        masks.append(row_ok[:, None] & col_ok[None, :] & src)
    return torch.stack(masks)


def shifted(padded: Tensor, pad: int, dy: int, dx: int) -> Tensor:
    """View ``out[..., y, x] = x_orig[..., y + dy, x + dx]`` of a map padded by ``pad`` on all sides.

    Shape:
        - padded: ``(..., h + 2 pad, w + 2 pad)``
        - output: ``(..., h, w)``
    """
    height, width = padded.shape[-2] - 2 * pad, padded.shape[-1] - 2 * pad
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def affinity_labels(label: Tensor, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pair labels from a label map with ignore (PSA ``ExtractAffinityLabelInRadius``, IRN 3.4).

    * bg-positive: equal labels, both background (0);
    * fg-positive: equal labels, foreground (> 0), both valid (!= 255);
    * negative: different labels, both valid.

    Out-of-map targets count as ignore, so they belong to none of the three sets.

    Args:
        label: Integer label map, 0 = background, 255 = ignore.
        radius: Neighbourhood radius (PSA: 5, IRN training: 10).

    Returns:
        ``(bg_pos, fg_pos, neg)`` boolean masks in the module's pair layout.

    Shape:
        - label: ``(..., h, w)``
        - outputs: ``(..., P, h, w)`` bool
    """
    pad = radius - 1
    src = label.long()
    padded = F.pad(src, (pad, pad, pad, pad), value=IGNORE)
    tgt = torch.stack([shifted(padded, pad, dy, dx) for dy, dx in _offsets(radius)], dim=-3)
    src = src.unsqueeze(-3)
    valid = (src != IGNORE) & (tgt != IGNORE)
    equal = src == tgt
    bg_pos = equal & (src == BACKGROUND)
    fg_pos = equal & (src != BACKGROUND) & valid
    neg = ~equal & valid
    return bg_pos, fg_pos, neg


def pairwise_affinity(features: Tensor, radius: int, chunk_bytes: int = 2**20) -> Tensor:
    """AffinityNet affinities ``a_ij = exp(-mean_channels |f_i - f_j|)`` for all in-radius pairs.

    The PSA code takes the channel *mean* of the L1 distance (the paper writes the sum), docs/methods.md, "PSA / AffinityNet".
    Computed in float32; entries with an out-of-map target are 0.

    Without autograd (inference, the random walk) the L1 distances are accumulated over channel
    chunks into the ``(B, P, h, w)`` result with one reused buffer of at most ``chunk_bytes``, so
    no ``(B, D, h, w)`` temporary is allocated per offset (VOC size, D = 448: ~12 MiB instead of
    ~140 MiB peak). With autograd the per-offset form is used (its graph needs the temporaries).
    The two differ only by float summation order (~1e-7 relative).

    Args:
        features: Affinity feature maps.
        radius: Neighbourhood radius.
        chunk_bytes: Size bound of the no-grad path's work buffer (1 MiB: cache-sized, measured fastest).

    Returns:
        Affinities in ``(0, 1]``.

    Shape:
        - features: ``(B, D, h, w)``
        - output: ``(B, P, h, w)``
    """
    feats = features.float()
    height, width = feats.shape[-2:]
    pad = radius - 1
    valid = pair_valid_mask(radius, height, width, device=feats.device)
    if torch.is_grad_enabled() and feats.requires_grad:
        padded = F.pad(feats, (pad, pad, pad, pad))
        # One offset at a time keeps the transient at (B, D, h, w) instead of (B, P, D, h, w).
        affs = [
            torch.exp(-(feats - shifted(padded, pad, dy, dx)).abs().mean(dim=1))
            for dy, dx in _offsets(radius)
        ]
        aff = torch.stack(affs, dim=1)
        return torch.where(valid, aff, torch.zeros((), device=aff.device))
    with torch.no_grad():
        return _pairwise_affinity_lean(feats, radius, chunk_bytes).masked_fill_(~valid, 0.0)


def _pairwise_affinity_lean(feats: Tensor, radius: int, chunk_bytes: int) -> Tensor:
    """No-grad :func:`pairwise_affinity` (before masking): channel chunks, one reused buffer."""
    batch, depth, height, width = feats.shape
    pad = radius - 1
    offsets = _offsets(radius)
    total = feats.new_zeros(batch, len(offsets), height, width)
    step = max(1, min(depth, chunk_bytes // max(1, 4 * batch * height * width)))
    buffer = feats.new_empty(batch, step, height, width)
    partial = feats.new_empty(batch, height, width)
    for start in range(0, depth, step):
        part = feats[:, start : start + step]
        padded = F.pad(part, (pad, pad, pad, pad))
        work = buffer[:, : part.shape[1]]
        for p, (dy, dx) in enumerate(offsets):
            torch.sub(part, shifted(padded, pad, dy, dx), out=work)
            work.abs_()
            torch.sum(work, dim=1, out=partial)
            total[:, p] += partial
    return total.div_(-depth).exp_()


def affinity_loss(features: Tensor, label: Tensor, radius: int = 5) -> Tensor:
    """AffinityNet loss ``L = L_bg+/4 + L_fg+/4 + L_neg/2`` (PSA ``train_aff.py``, docs/methods.md, "PSA / AffinityNet").

    ``L_bg+ = -Σ_{bg+} log(a + 1e-5) / (|bg+| + 1e-5)``, ``L_fg+`` likewise, and
    ``L_neg = -Σ_{neg} log(1 + 1e-5 - a) / (|neg| + 1e-5)``. Sums and counts are pooled over the
    whole batch, as PSA does.

    Args:
        features: AffinityNet feature maps (stride 8 in PSA).
        label: Affinity label map at the feature resolution (see :func:`psa_affinity_label`).
        radius: Neighbourhood radius. Default 5 (PSA).

    Returns:
        Scalar float32 loss.

    Shape:
        - features: ``(B, D, h, w)``
        - label: ``(B, h, w)`` int, 255 = ignore
        - output: ``()``
    """
    aff = pairwise_affinity(features, radius)
    bg_pos, fg_pos, neg = affinity_labels(label.to(aff.device), radius)
    zero = torch.zeros((), device=aff.device)
    pos_term = -torch.log(aff + 1e-5)
    neg_term = -torch.log(1.0 + 1e-5 - aff)
    bg = torch.where(bg_pos, pos_term, zero).sum() / (bg_pos.sum() + 1e-5)
    fg = torch.where(fg_pos, pos_term, zero).sum() / (fg_pos.sum() + 1e-5)
    ng = torch.where(neg, neg_term, zero).sum() / (neg.sum() + 1e-5)
    return bg / 4 + fg / 4 + ng / 2


def psa_affinity_label(la_scores: Tensor, ha_scores: Tensor, eps: float = 1e-5) -> Tensor:
    """PSA affinity label from low-α and high-α CRF scores (``VOC12AffDataset``, docs/methods.md, "PSA / AffinityNet").

    ``label = argmax(la)``; where la's argmax is background → 255; where ha's argmax is background
    → 0; where every score of both maps is < ``eps`` (crop padding) → 255. Confident foreground
    thus comes from low α, confident background from high α, and the band between is ignored.
    The scores must already be pooled to the feature grid (PSA: 8x8 mean pooling).

    Args:
        la_scores: Low-α (4) CRF scores, channel 0 = background.
        ha_scores: High-α (32) CRF scores, same channel order.
        eps: "No score" threshold. Default 1e-5.

    Returns:
        int64 label map of *channel indices* (0 = background; only equality matters for pairs,
        so callers that want class ids map ``c -> keys[c - 1] + 1`` themselves), 255 = ignore.

    Shape:
        - la_scores, ha_scores: ``(C + 1, h, w)``
        - output: ``(h, w)`` int64
    """
    la = la_scores.argmax(dim=0)
    ha = ha_scores.argmax(dim=0)
    ignore = torch.full_like(la, IGNORE)
    label = torch.where(la == BACKGROUND, ignore, la)
    label = torch.where(ha == BACKGROUND, torch.zeros_like(la), label)
    no_score = torch.maximum(la_scores.amax(dim=0), ha_scores.amax(dim=0)) < eps
    return torch.where(no_score, ignore, label)


def irn_label_from_cams(fg_conf_label: Tensor, bg_conf_label: Tensor) -> Tensor:
    """IRN inter-pixel relation label from two CRF'd CAM labels (``cam_to_ir_label``, docs/methods.md, "IRNet").

    ``label = fg``; where fg is background → 255; where fg *and* bg are background → 0. So
    foreground needs the 0.30 test (``fg_conf_label``) and background the 0.05 test
    (``bg_conf_label``).

    Shape:
        - fg_conf_label, bg_conf_label: ``(H, W)`` int (0 = background)
        - output: ``(H, W)`` int64, 255 = ignore
    """
    fg = fg_conf_label.long()
    bg = bg_conf_label.long()
    label = torch.where(fg == BACKGROUND, torch.full_like(fg, IGNORE), fg)
    return torch.where((fg == BACKGROUND) & (bg == BACKGROUND), torch.zeros_like(fg), label)
