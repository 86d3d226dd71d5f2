"""Fully connected CRF post-processing (pydensecrf) with the PSA/SEAM and IRN parameterisations.

``DenseCRF2D`` takes ``(width, height, n_labels)`` — width first — and its C++ side reads raw
buffers, so every array handed over is made a writable, C-contiguous copy of the right dtype.
See docs/methods.md, "PSA / AffinityNet" (soft CRF), "IRNet" (label CRF) and "Conventions".
"""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

__all__ = ["dense_crf", "dense_crf_labels", "softmax_unary"]

_PROB_FLOOR = 1e-8
SOFTMAX_CLIP = 1e-5  # pydensecrf unary_from_softmax's default, used by PSA/SEAM/EPS/deeplab-pytorch


def softmax_unary(probs: np.ndarray, clip: float | None = SOFTMAX_CLIP) -> np.ndarray:
    """Unary energy ``-log p`` of per-class scores, as handed to pydensecrf.

    ``clip`` (default 1e-5, the official behaviour): exactly pydensecrf's
    ``unary_from_softmax(probs, clip=clip)`` on the scores as given, i.e.
    ``-log(clip(p, clip, 1))``: a zero score costs ``-log 1e-5 = 11.5``. ``clip=None`` (the
    earlier wsss behaviour): each pixel is renormalised to sum 1 and floored at 1e-8, so a zero
    costs ``-log 1e-8 = 18.4`` and near-zero CAM values weigh ~1.6x more against the pairwise
    terms than in PSA/IRN.

    Shape:
        - probs: ``(C, H, W)`` non-negative float
        - output: ``(C, H * W)`` float32
    """
    probs = np.asarray(probs, dtype=np.float32)
    if clip is None:
        # Floor before and after normalising: all-zero pixels become uniform instead of 0/0.
        probs = np.maximum(probs, _PROB_FLOOR)
        probs = np.maximum(probs / probs.sum(axis=0, keepdims=True), _PROB_FLOOR)
        return np.ascontiguousarray(unary_from_softmax(probs, clip=None), dtype=np.float32)
    if not 0.0 < clip < 1.0:
        raise ValueError(f"clip must be in (0, 1) or None, got {clip}")
    return np.ascontiguousarray(unary_from_softmax(probs, clip=clip), dtype=np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    # Fresh copy: pydensecrf needs a writable C-contiguous buffer and must not alias the input.
    return np.array(image, dtype=np.uint8, order="C", copy=True)


def _run(
    image: np.ndarray,
    unary: np.ndarray,
    n_labels: int,
    n_iter: int,
    sxy_gaussian: float,
    compat_gaussian: float,
    sxy_bilateral: float,
    srgb_bilateral: float,
    compat_bilateral: float,
) -> np.ndarray:
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    crf.addPairwiseBilateral(
        sxy=sxy_bilateral, srgb=srgb_bilateral, rgbim=image, compat=compat_bilateral
    )
    marginals = np.array(crf.inference(n_iter), dtype=np.float32).reshape(n_labels, height, width)
    return np.ascontiguousarray(marginals)  # the Eigen-backed result is not C-ordered


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    n_iter: int = 10,
    sxy_gaussian: float = 3,
    compat_gaussian: float = 3,
    sxy_bilateral: float = 80,
    srgb_bilateral: float = 13,
    compat_bilateral: float = 10,
    clip: float | None = SOFTMAX_CLIP,
) -> np.ndarray:
    """Dense CRF on soft scores (PSA/SEAM/EPS ``crf_inference``; defaults are theirs).

    The unary is :func:`softmax_unary`: by default (``clip=1e-5``) exactly PSA's
    ``unary_from_softmax(probs)`` on the raw scores (scores are clipped to ``[1e-5, 1]``, so pass
    scores in ``[0, 1]``, e.g. ``[bg_power; normalised CAMs]`` or softmax outputs). ``clip=None``
    renormalises each pixel and floors at 1e-8 instead (wsss before issue 13; a different
    result wherever a score is below 1e-5, e.g. exact zeros of restricted CAMs). Channel order
    is preserved (channel 0 = background when the caller put it first).

    Args:
        image: Original-resolution RGB image.
        probs: Non-negative per-class scores at the image resolution.
        n_iter: Mean-field iterations.
        sxy_gaussian: Spatial std of the smoothness (Gaussian) kernel.
        compat_gaussian: Weight of the Gaussian kernel.
        sxy_bilateral: Spatial std of the appearance (bilateral) kernel.
        srgb_bilateral: Colour std of the bilateral kernel.
        compat_bilateral: Weight of the bilateral kernel.
        clip: Lower clip of the scores (official 1e-5), or None (renormalise, floor 1e-8).

    Returns:
        float32 marginals; each pixel sums to 1.

    Shape:
        - image: ``(H, W, 3)`` uint8
        - probs: ``(C, H, W)`` float
        - output: ``(C, H, W)`` float32
    """
    image = _check_image(image)
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probs must be (C, H, W) matching image {image.shape}, got {probs.shape}"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    if probs.shape[0] < 1:
        raise ValueError("probs must have at least one channel")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs must be finite and non-negative")
    unary = softmax_unary(probs, clip)  # never modifies the argument
    return _run(
        image,
        unary,
        probs.shape[0],
        n_iter,
        sxy_gaussian,
        compat_gaussian,
        sxy_bilateral,
        srgb_bilateral,
        compat_bilateral,
    )


def dense_crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    gt_prob: float = 0.7,
    n_iter: int = 10,
    sxy_gaussian: float = 3,
    compat_gaussian: float = 3,
    sxy_bilateral: float = 50,
    srgb_bilateral: float = 5,
    compat_bilateral: float = 10,
) -> np.ndarray:
    """Dense CRF on a hard label map (IRN ``crf_inference_label``; defaults are IRN's).

    The unary is ``unary_from_labels(labels, n_labels, gt_prob, zero_unsure=False)``: every
    label, including 0, is a real class with probability ``gt_prob`` and the rest spread
    uniformly. Labels are compact indices (IRN uses 0 = background, ``k`` = k-th present class),
    so the caller maps them back to mask values.

    Args:
        image: Original-resolution RGB image.
        labels: Integer label map with values in ``[0, n_labels)``.
        n_labels: Number of labels (IRN: present classes + 1).
        gt_prob: Confidence of the given label, in (0, 1).
        n_iter: Mean-field iterations.
        sxy_gaussian: Spatial std of the Gaussian kernel.
        compat_gaussian: Weight of the Gaussian kernel.
        sxy_bilateral: Spatial std of the bilateral kernel.
        srgb_bilateral: Colour std of the bilateral kernel.
        compat_bilateral: Weight of the bilateral kernel.

    Returns:
        int64 argmax of the CRF marginals, values in ``[0, n_labels)``.

    Shape:
        - image: ``(H, W, 3)`` uint8
        - labels: ``(H, W)`` integer
        - output: ``(H, W)`` int64
    """
    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels must be (H, W) matching image {image.shape}, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer, got {labels.dtype}")
    if n_labels < 2:
        # unary_from_labels divides by n_labels - 1; a single label is trivially the answer.
        if n_labels == 1 and (labels.size == 0 or (labels.min() == 0 and labels.max() == 0)):
            return np.zeros(labels.shape, dtype=np.int64)
        raise ValueError(f"n_labels must be >= 1 and cover the labels, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(
            f"labels must lie in [0, {n_labels}), got [{labels.min()}, {labels.max()}]"
        )
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob, zero_unsure=False)
    marginals = _run(
        image,
        unary,
        n_labels,
        n_iter,
        sxy_gaussian,
        compat_gaussian,
        sxy_bilateral,
        srgb_bilateral,
        compat_bilateral,
    )
    return marginals.argmax(axis=0).astype(np.int64)
