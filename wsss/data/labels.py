"""Label semantics shared by every dataset, method and stage.

Masks store 0 for background, ``c + 1`` for foreground class ``c`` and :data:`IGNORE` (255) for
pixels that are void or unsure. Image-level labels are multi-hot vectors over the foreground
classes only (no background entry), so class ``c`` of a label vector is mask value ``c + 1``.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
IGNORE = 255

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8: the bit-interleaving rule of the VOC devkit."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def multi_hot_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) float32 multi-hot of the foreground classes present in a label mask."""
    values = np.unique(mask)
    values = values[(values != BACKGROUND) & (values != IGNORE) & (values <= num_classes)]
    out = np.zeros(num_classes, dtype=np.float32)
    out[values.astype(np.int64) - 1] = 1.0
    return out


def channels_to_label(channel: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Map channel indices (0 = background, k = ``keys[k-1]``) to VOC mask values; keeps 255.

    Shape: channel (H, W) int, keys (K,) foreground class indices 0..19 -> (H, W) uint8.
    """
    lut = np.concatenate([[BACKGROUND], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    values = lut[np.minimum(np.where(channel == IGNORE, 0, channel), len(lut) - 1)]
    return np.where(channel == IGNORE, IGNORE, values).astype(np.uint8)
