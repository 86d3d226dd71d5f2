"""OAA: online attention accumulation, its integral-attention loss and the attention drop layer.

Follows ``OAA:models/vgg.py`` and ``OAA:scripts/train_iam.py`` (docs/methods.md, "OAA"), with two
deliberate differences from the code: maps are kept as float32 in ``[0, 1]`` instead of 8-bit
PNGs scaled by 255, and they are keyed by image id instead of loader position, so shuffling
the data cannot corrupt them. Nothing here touches the disk except
:meth:`AttentionAccumulator.save_npz`, which a writer/callback calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.io import save_npz

__all__ = [
    "AttentionAccumulator",
    "accumulate_attention",
    "attention_drop",
    "normalize_attention",
    "oaa_iam_loss",
    "oaa_proxy_labels",
    "oaa_topk_filter",
]


def normalize_attention(att: Tensor, eps: float = 1e-8) -> Tensor:
    """Max-normalise ReLU'd maps: ``ReLU(a) / (max ReLU(a) + eps)`` over the last two dims.

    Shape:
        - att: ``(..., h, w)``
        - output: same shape, float32 in ``[0, 1)``
    """
    a = F.relu(att.float())
    return a / (a.amax(dim=(-2, -1), keepdim=True) + eps)


def accumulate_attention(previous: Tensor | None, current: Tensor) -> Tensor:
    """Cumulative max fusion: ``max(previous, normalize_attention(current))``.

    Args:
        previous: The accumulated (already normalised) map, or ``None`` for the first visit.
        current: The raw class map of this pass (ReLU + max-norm are applied here).

    Shape:
        - previous, current: ``(..., h, w)``
        - output: same shape, float32
    """
    current = normalize_attention(current)
    return current if previous is None else torch.maximum(previous.float(), current)


def oaa_topk_filter(logits: Tensor, labels: Tensor) -> Tensor:
    """Ground-truth classes that rank among the top-K predictions, K = number of gt labels.

    OAA accumulates a class map only if it passes this filter. Ties are broken by class index
    (stable sort), where OAA's ``argsort`` is unspecified.

    Shape:
        - logits: ``(B, C)`` (sigmoid is monotone, so logits rank like probabilities)
        - labels: ``(B, C)`` multi-hot
        - output: ``(B, C)`` bool
    """
    present = labels.bool()
    order = torch.sort(logits.detach().float(), dim=1, descending=True, stable=True).indices
    rank = order.argsort(dim=1)  # inverse permutation: the rank of every class
    return present & (rank < present.sum(1, keepdim=True))


def oaa_iam_loss(pred: Tensor, target: Tensor, threshold: float = 0.001) -> Tensor:
    """Integral-attention ``ExLoss``: soft positives and hard negatives, each count-normalised.

    Pixels with ``t > threshold`` are positive, the rest negative:
    ``L = -(1/|pos|) sum_pos t log sigmoid(x) - (1/|neg|) sum_neg log(1 - sigmoid(x) + 1e-8)``,
    over all channels; an empty set contributes 0. No ``(1 - t)`` term for positives.

    Args:
        pred: IAM logits (no GAP).
        target: Accumulated attention in ``[0, 1]`` for gt classes, 0 elsewhere.
        threshold: Positive threshold. Default 0.001.

    Shape:
        - pred, target: ``(B, C, h, w)``
        - output: scalar float32
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    x, t = pred.float(), target.float()
    pos = t > threshold
    pos_loss = -(t * F.logsigmoid(x))[pos].sum()  # logsigmoid: the stable log(sigmoid(x))
    neg_loss = -torch.log(1 - torch.sigmoid(x[~pos]) + 1e-8).sum()
    n_pos, n_neg = pos.sum(), (~pos).sum()
    zero = x.new_zeros(())
    return (torch.where(n_pos > 0, pos_loss / n_pos.clamp(min=1), zero)
            + torch.where(n_neg > 0, neg_loss / n_neg.clamp(min=1), zero))


def attention_drop(
    image: Tensor,
    attention: Tensor,
    threshold: float = 0.6,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """OAA's attention drop layer: zero input pixels where the attention exceeds ``threshold``.

    Each attention map is bilinearly resized to the image size; a pixel is dropped (all
    channels) if any map of its sample exceeds ``threshold``. The drop happens per sample with
    probability ``p`` (OAA draws once per forward pass with batch size 1).

    Args:
        image: Input batch (not modified).
        attention: Latest per-class attention maps of each sample in ``[0, 1]``; pad absent
            classes with zeros.
        threshold: Default 0.6 (``--drop_threshold``).
        p: Drop probability. Default 0.5 (``--drop_rate``).
        generator: Optional RNG for reproducible draws.

    Shape:
        - image: ``(B, 3, H, W)``
        - attention: ``(B, A, h, w)``
        - output: ``(B, 3, H, W)``
    """
    att = F.interpolate(attention.float(), size=image.shape[-2:], mode="bilinear",
                        align_corners=False)
    mask = (att > threshold).any(dim=1, keepdim=True)
    device = generator.device if generator is not None else image.device
    draw = torch.rand(image.shape[0], generator=generator, device=device).to(image.device) < p
    mask = mask & draw[:, None, None, None]
    return image.masked_fill(mask, 0.0)


class AttentionAccumulator:
    """Accumulated attention maps keyed by ``(image id, class)``, float32 on the CPU.

    Implements OAA's rule for each gt class ``c`` of each image in a training pass:

    * epoch 0 (0-indexed) is skipped;
    * on the last epoch, an image/class with no map yet gets the current map, unfiltered;
    * otherwise the map is fused only if ``c`` passes :func:`oaa_topk_filter`:
      ``acc = max(acc, normalize_attention(map))`` (first visit: the normalised map).

    Because updates are keyed by id and the fusion is a max, the result does not depend on the
    data order. ``latest`` keeps the most recent *filtered* current map per key (the input of
    :func:`attention_drop`) when ``keep_latest`` is True.
    """

    def __init__(self, keep_latest: bool = False) -> None:
        self.maps: dict[tuple[str, int], Tensor] = {}
        self.latest: dict[tuple[str, int], Tensor] = {}
        self.keep_latest = keep_latest

    def __len__(self) -> int:
        return len(self.maps)

    def update(
        self,
        ids: Sequence[str],
        classes_mask: Tensor,
        maps: Tensor,
        epoch: int,
        last_epoch: int,
        topk_mask: Tensor,
    ) -> None:
        """Fuse one batch of class maps.

        Args:
            ids: Image ids of the batch.
            classes_mask: Ground-truth multi-hot labels.
            maps: Raw class maps of this forward pass (ReLU + max-norm applied here).
            epoch: Current epoch, 0-indexed.
            last_epoch: Index of the final epoch (OAA: 14 of 15).
            topk_mask: Output of :func:`oaa_topk_filter` for this batch.

        Shape:
            - classes_mask, topk_mask: ``(B, C)``
            - maps: ``(B, C, h, w)``
        """
        if epoch == 0:
            return
        normed = normalize_attention(maps.detach()).cpu()
        present, passed = classes_mask.bool().cpu(), topk_mask.bool().cpu()
        for b, c in present.nonzero().tolist():
            key = (str(ids[b]), int(c))
            if epoch == last_epoch and key not in self.maps:
                self.maps[key] = normed[b, c].clone()
                continue
            if not passed[b, c]:
                continue
            prev = self.maps.get(key)
            current = normed[b, c]
            self.maps[key] = current.clone() if prev is None else torch.maximum(prev, current)
            if self.keep_latest:
                self.latest[key] = current.clone()

    def get(self, image_id: str) -> dict[int, Tensor]:
        """All accumulated maps of one image, class -> ``(h, w)``."""
        return {c: m for (i, c), m in sorted(self.maps.items()) if i == image_id}

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """Plain ``{"maps": {"<id>:<cls>": tensor}, "latest": {...}}`` (``weights_only``-safe)."""
        return {
            "maps": {f"{i}:{c}": m for (i, c), m in sorted(self.maps.items())},
            "latest": {f"{i}:{c}": m for (i, c), m in sorted(self.latest.items())},
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        def parse(d: Mapping[str, Tensor]) -> dict[tuple[str, int], Tensor]:
            out = {}
            for key, value in d.items():
                image_id, cls = key.rsplit(":", 1)
                out[(image_id, int(cls))] = torch.as_tensor(value, dtype=torch.float32).cpu()
            return out

        self.maps = parse(state["maps"])
        self.latest = parse(state.get("latest", {}))

    def save_npz(self, directory: str | os.PathLike) -> list[Path]:
        """Write one ``<id>.npz`` per image: ``keys`` (K,) int64 and ``maps`` (K, h, w) float32.

        Classes are sorted; files are written atomically. Returns the written paths.
        """
        by_image: dict[str, list[tuple[int, Tensor]]] = {}
        for (image_id, c), m in sorted(self.maps.items()):
            by_image.setdefault(image_id, []).append((c, m))
        paths = []
        for image_id, entries in by_image.items():
            path = Path(directory) / f"{image_id}.npz"
            keys = np.array([c for c, _ in entries], dtype=np.int64)
            maps = np.stack([m.numpy() for _, m in entries]).astype(np.float32)
            save_npz(path, keys=keys, maps=maps)
            paths.append(path)
        return paths


def oaa_proxy_labels(saliency: Tensor, attention: Tensor, keys: Tensor, *, fg_threshold: float = 0.3,
                     conflict: float = 0.9, attention_threshold: float = 0.8,
                     salient_background: float = 32 / 255, min_foreground: float = 0.01,
                     ignore_index: int = 255) -> Tensor:  # fmt: skip
    """OAA's ``gen_gt``: fuse class attention with saliency into a proxy label map.

    Scores: background = ``1 - saliency``, class ``keys[k]`` = its attention min-max normalised
    to [0, 1]. Then, as ``OAA:gen_gt.py`` (docs/methods.md, OAA):

    1. every score below ``fg_threshold`` becomes 0 (the background channel too);
    2. pixels where more than one score exceeds ``conflict`` are ignored;
    3. label = argmax (ties: background, then the smaller class index);
    4. background pixels that are salient, ``max(saliency, [any attention > attention_threshold])
       >= salient_background``, are ignored;
    5. if the labelled foreground covers less than ``min_foreground`` of the image, the whole
       image is ignored.

    Args:
        saliency: Saliency in [0, 1] (OAA's 8-bit map / 255).
        attention: The attention (accumulated / IAM maps) of the image's classes, any range.
        keys: 0-based class index of each attention map.

    Shape:
        - saliency: ``(H, W)``
        - attention: ``(K, H, W)``; ``K = 0`` gives background / ignored only
        - keys: ``(K,)`` int
        - output: ``(H, W)`` uint8: 0 background, ``c + 1`` class ``c``, ``ignore_index``
    """
    if attention.ndim != 3 or attention.shape[-2:] != saliency.shape or len(keys) != len(attention):
        raise ValueError(f"expected saliency (H, W), attention (K, H, W), keys (K,); got "
                         f"{tuple(saliency.shape)}, {tuple(attention.shape)}, {tuple(keys.shape)}")
    order = torch.argsort(keys.long())  # argmax ties go to the smaller class index, as OAA's 21 channels
    keys, att = keys.long()[order], attention.float()[order]
    lo, hi = att.amin(dim=(-2, -1), keepdim=True), att.amax(dim=(-2, -1), keepdim=True)
    att = (att - lo) / (hi - lo + 1e-8)
    sal = saliency.float()
    scores = torch.cat([(1 - sal)[None], att])
    scores = torch.where(scores < fg_threshold, torch.zeros_like(scores), scores)
    conflicted = (scores > conflict).sum(0) > 1
    compact = scores.argmax(0)  # first maximum: background wins an all-zero pixel
    lut = torch.cat([torch.zeros(1, dtype=torch.long), keys + 1])
    label = lut[compact]
    label[conflicted] = ignore_index
    salient = sal
    if len(att):
        salient = torch.maximum(sal, (att > attention_threshold).any(0).float())
    label[(label == 0) & (salient >= salient_background)] = ignore_index
    foreground = ((label > 0) & (label != ignore_index)).sum()
    if float(foreground) < min_foreground * label.numel():
        label[:] = ignore_index
    return label.to(torch.uint8)
