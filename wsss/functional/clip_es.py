"""CLIP-ES (Lin et al., CVPR 2023) as pure functions: Grad-CAM from token activations, class-aware
attention affinity (CAA) refinement, and confidence-guided labels (CGL).

Constants from the official code (linyq2117/CLIP-ES, docs/methods.md): box threshold 0.4 of the
CAM maximum, attention of the last 8 blocks, Sinkhorn-style normalisation (1 + 2 rounds), one
squaring of the affinity; CGL: background = (1 - max CAM)^1, CRF, pixels with confidence < 0.95 ignored.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def grad_cam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM over patch tokens: channel weights = spatial mean of the gradients, ReLU of the
    weighted sum, then min-max scaled to [0, 1] (pytorch-grad-cam ``scale_cam_image``).

    Shape:
        activations, gradients: (D, h, w) -> (h, w).
    """
    weights = gradients.mean(dim=(1, 2))
    cam = F.relu((weights[:, None, None] * activations).sum(dim=0))
    return minmax(cam)


def minmax(cam: Tensor) -> Tensor:
    """x - min, divided by (1e-7 + max): a map in [0, 1] (all-zero stays zero)."""
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def box_mask(cam: np.ndarray | Tensor, threshold: float = 0.4) -> Tensor:
    """1 inside the bounding box of every connected region where the CAM exceeds ``threshold`` x
    its maximum (8-bit quantised, as CLIP-ES's ``scoremap2bbox`` with OpenCV contours; boxes end
    one pixel short of the far border, as there). No region: an empty box (all zero).

    Shape: (h, w) in [0, 1] -> (h, w) float.
    """
    score = np.asarray(cam.detach().cpu() if isinstance(cam, Tensor) else cam, dtype=np.float32)
    height, width = score.shape
    gray = (score * 255).astype(np.uint8)
    _, binary = cv2.threshold(gray, int(threshold * gray.max()), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = torch.zeros(height, width)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        mask[y:min(y + h, height - 1), x:min(x + w, width - 1)] = 1
    return mask


def attention_affinity(attn: Tensor, iterations: int = 2) -> Tensor:
    """Symmetric, doubly-normalised affinity from patch-to-patch attention, squared once.

    Columns then rows are normalised to sum 1 (once, then ``iterations`` more times), the result is
    symmetrised ((A + Aᵀ) / 2) and multiplied by itself.

    Shape: (n, n) (class token removed) -> (n, n).
    """
    trans = attn / attn.sum(dim=0, keepdim=True)
    trans = trans / trans.sum(dim=1, keepdim=True)
    for _ in range(iterations):
        trans = trans / trans.sum(dim=0, keepdim=True)
        trans = trans / trans.sum(dim=1, keepdim=True)
    trans = (trans + trans.T) / 2
    return trans @ trans


def caa_refine(cam: Tensor, affinity: Tensor, threshold: float = 0.4) -> Tensor:
    """Class-aware attention affinity: propagate a class's CAM with the affinity restricted
    (column-wise) to the boxes of that class's CAM.

    Shape: cam (h, w) in [0, 1], affinity (hw, hw) -> refined (h, w) (not rescaled).
    """
    h, w = cam.shape
    mask = box_mask(cam, threshold).reshape(1, h * w).to(affinity)
    return ((affinity * mask) @ cam.reshape(-1, 1).to(affinity)).reshape(h, w)


def background_score(cams: np.ndarray, power: float = 1.0) -> np.ndarray:
    """CLIP-ES background: (1 - max_c CAM_c)^power. Shape: (K, H, W) -> (1, H, W)."""
    if len(cams) == 0:
        return np.ones((1, *cams.shape[1:]), dtype=np.float32)
    return np.power(1 - cams.max(axis=0, keepdims=True), power).astype(np.float32)


def confidence_guided_label(probs: np.ndarray, keys: np.ndarray, confidence: float = 0.95,
                            ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """CGL: argmax of [background, CAMs] scores (after CRF) mapped to class ids; pixels whose
    winning probability is below ``confidence`` become ``ignore_index``.

    Shape: probs (K + 1, H, W), keys (K,) 0-based classes -> (label, label without ignore), (H, W) uint8.
    """
    if len(probs) != len(keys) + 1:
        raise ValueError(f"probs has {len(probs)} channels; expected background + {len(keys)} keys")
    values = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    plain = values[probs.argmax(axis=0)].astype(np.uint8)
    label = plain.copy()
    label[probs.max(axis=0) < confidence] = ignore_index
    return label, plain
