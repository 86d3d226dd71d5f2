"""Class-agnostic saliency from a classifier's own CAMs, snapped to image structure.

EPS, SEC and OAA read one saliency map per image (a trained saliency model's output in the
papers). Without such a model, the classifier's CAMs already say where the image's classes are;
what they lack is edges (a stride-16 map upsampled). These ops turn the image's present-class CAMs
into a foreground probability whose 0.5 level is the background threshold the pipeline uses
(``eval_cam``'s held-out choice), average it within SLIC superpixels (regions follow colour edges),
optionally weigh each superpixel by a class-agnostic background prior (boundary connectivity, Zhu
et al., "Saliency Optimization from Robust Background Detection", CVPR 2014: regions whose
colour-similar surroundings reach far along the image border are background) and sharpen the
result with a two-label dense CRF (:func:`wsss.functional.crf.dense_crf`).
Output: a (H, W) map in [0, 1]; the stage writes it as 0..255 PNGs (SALImages format).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.color import rgb2lab
from skimage.segmentation import slic

from wsss.functional.crf import dense_crf

__all__ = ["boundary_background", "cam_foreground", "cam_saliency", "combine_evidence",
           "superpixel_mean", "to_uint8"]


def cam_foreground(cams: np.ndarray, threshold: float) -> np.ndarray:
    """Foreground probability from max-normalised CAMs, 0.5 at the background ``threshold``.

    ``f = max_k cams[k]`` (0 where no class is present), then the piecewise-linear map with
    ``0 -> 0``, ``threshold -> 0.5``, ``1 -> 1``: ``f / (2 t)`` below ``t`` and
    ``0.5 + (f - t) / (2 (1 - t))`` above, so "salient" (> 0.5) is exactly the foreground of the
    thresholded CAM labels. Values outside [0, 1] are clipped.

    Shape:
        - cams: ``(K, H, W)`` float, K >= 0 (the image's classes, each max-normalised)
        - output: ``(H, W)`` float32 in [0, 1]
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (K, H, W), got shape {cams.shape}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    f = np.clip(cams.max(axis=0), 0.0, 1.0) if len(cams) else np.zeros(cams.shape[1:], np.float32)
    low = f / (2.0 * threshold)
    high = 0.5 + (f - threshold) / (2.0 * (1.0 - threshold))
    return np.where(f <= threshold, low, high).astype(np.float32)


def superpixel_mean(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Every pixel replaced by the mean of ``values`` over its superpixel.

    Shape:
        - values: ``(H, W)`` float
        - segments: ``(H, W)`` int region ids >= 0 (e.g. SLIC with ``start_label=0``)
        - output: ``(H, W)`` float32
    """
    values, segments = np.asarray(values, dtype=np.float64), np.asarray(segments)
    if values.shape != segments.shape:
        raise ValueError(f"values {values.shape} and segments {segments.shape} must have the same shape")
    if segments.size == 0:
        return values.astype(np.float32)
    if segments.min() < 0:
        raise ValueError("segments must hold region ids >= 0")
    ids = segments.ravel().astype(np.int64)
    sums = np.bincount(ids, weights=values.ravel())
    counts = np.maximum(np.bincount(ids), 1)
    return (sums / counts)[ids].reshape(values.shape).astype(np.float32)


def boundary_background(image: np.ndarray, segments: np.ndarray, sigma: float = 10.0) -> np.ndarray:
    """Background probability of each superpixel by boundary connectivity (Zhu et al. 2014).

    Adjacent superpixels are joined by the distance of their mean CIE-Lab colours; ``d(p, q)`` is
    the shortest-path (geodesic) distance and ``S(p, q) = exp(-d^2 / (2 sigma^2))``. With
    ``Area(p) = sum_q S(p, q)`` and ``Len(p) = sum_{q on the image border} S(p, q)``, the boundary
    connectivity is ``Len / sqrt(Area)`` and the background probability
    ``1 - exp(-BndCon^2 / 2)`` (the paper's sigma_clr = 10, sigma_BndCon = 1).

    Shape:
        - image: ``(H, W, 3)`` uint8
        - segments: ``(H, W)`` int region ids ``0..R-1`` (every id present)
        - output: ``(R,)`` float64 in [0, 1)
    """
    segments = np.asarray(segments).astype(np.int64)
    if segments.shape != np.shape(image)[:2] or segments.min() < 0:
        raise ValueError(f"segments {segments.shape} must be (H, W) region ids >= 0 of image {np.shape(image)}")
    n = int(segments.max()) + 1
    ids = segments.ravel()
    counts = np.maximum(np.bincount(ids, minlength=n), 1)
    lab = rgb2lab(np.asarray(image, dtype=np.uint8)).reshape(-1, 3)
    mean = np.stack([np.bincount(ids, lab[:, c], n) / counts for c in range(3)], axis=1)
    a = np.concatenate([segments[:, :-1].ravel(), segments[:-1].ravel()])
    b = np.concatenate([segments[:, 1:].ravel(), segments[1:].ravel()])
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1)[a != b], axis=0)
    # a tiny floor keeps equal-colour neighbours connected (a zero weight is "no edge" for scipy)
    weights = np.linalg.norm(mean[pairs[:, 0]] - mean[pairs[:, 1]], axis=1) + 1e-9
    graph = coo_matrix((weights, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    similarity = np.exp(-dijkstra(graph, directed=False) ** 2 / (2.0 * float(sigma) ** 2))
    border = np.zeros(n, dtype=bool)
    border[np.unique(np.concatenate([segments[0], segments[-1], segments[:, 0], segments[:, -1]]))] = True
    connectivity = similarity[:, border].sum(1) / np.sqrt(similarity.sum(1))
    return 1.0 - np.exp(-(connectivity**2) / 2.0)


def combine_evidence(prior: np.ndarray, evidence: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Naive-Bayes product of two foreground probabilities: ``p e / (p e + (1 - p)(1 - e))``
    (0.5 is uninformative; inputs clipped to ``[eps, 1 - eps]``). Shape: any, broadcast."""
    p = np.clip(np.asarray(prior, dtype=np.float64), eps, 1 - eps)
    e = np.clip(np.asarray(evidence, dtype=np.float64), eps, 1 - eps)
    return p * e / (p * e + (1 - p) * (1 - e))


def cam_saliency(image: np.ndarray, cams: np.ndarray, threshold: float, n_segments: int | None = 150,
                 compactness: float = 10.0, crf: Mapping[str, Any] | None = None,
                 boundary_sigma: float | None = None) -> np.ndarray:
    """CAM foreground (:func:`cam_foreground`) -> SLIC superpixel mean [-> times the boundary
    background prior] -> two-label dense CRF.

    Args:
        image: RGB image the CAMs belong to.
        cams: The image's present-class CAMs, max-normalised (make_cam's ``cams``).
        threshold: Background threshold the foreground probability is centred on (0.5 there).
        n_segments: Approximate number of SLIC superpixels; ``None`` skips the superpixel step.
        compactness: SLIC colour/space trade-off.
        crf: :func:`wsss.functional.crf.dense_crf` keyword arguments for the two-label CRF on
            ``[1 - p, p]`` (its foreground marginal is returned); ``None`` skips the CRF.
        boundary_sigma: Colour scale (Lab units) of :func:`boundary_background`; the superpixel
            foreground is then :func:`combine_evidence` of the CAM foreground and
            ``1 - background``. ``None`` skips the prior (it needs ``n_segments``).

    Shape:
        - image: ``(H, W, 3)`` uint8
        - cams: ``(K, H, W)`` float
        - output: ``(H, W)`` float32 in [0, 1]
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != np.shape(cams)[1:]:
        raise ValueError(f"image must be (H, W, 3) matching cams {np.shape(cams)}, got {image.shape}")
    if boundary_sigma is not None and not n_segments:
        raise ValueError("the boundary background prior works on superpixels: set n_segments")
    sal = cam_foreground(cams, threshold)
    if n_segments:
        segments = slic(image, n_segments=int(n_segments), compactness=float(compactness),
                        start_label=0, channel_axis=-1)  # fmt: skip
        sal = superpixel_mean(sal, segments)
        if boundary_sigma is not None:
            ids = segments.ravel()
            region_fg = np.bincount(ids, sal.ravel()) / np.maximum(np.bincount(ids), 1)  # (R,)
            object_prior = 1.0 - boundary_background(image, segments, boundary_sigma)
            sal = combine_evidence(region_fg, object_prior)[segments].astype(np.float32)
    if crf is not None:
        sal = dense_crf(image, np.stack([1.0 - sal, sal]).astype(np.float32), **dict(crf))[1]
    return np.clip(sal, 0.0, 1.0).astype(np.float32)


def to_uint8(saliency: np.ndarray) -> np.ndarray:
    """[0, 1] saliency -> 0..255 uint8 (round half to even), the SALImages PNG format.

    Shape:
        - saliency: ``(H, W)`` float -> ``(H, W)`` uint8
    """
    return np.round(np.clip(np.asarray(saliency, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
