"""Side-by-side pictures of CAMs and masks, saved under the stage dir and sent to image loggers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger
from PIL import Image

from wsss.data.labels import IGNORE, voc_palette
from wsss.io import atomic_path


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 labels -> (H, W, 3) uint8 VOC colours (255 = void is drawn light grey)."""
    palette = voc_palette()
    palette[IGNORE] = (224, 224, 192)
    return palette[mask]


def heatmap(cam: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 blue-to-red map (no matplotlib needed)."""
    c = np.clip(cam, 0.0, 1.0)
    return (np.stack([c, 1.0 - np.abs(2 * c - 1.0), 1.0 - c], axis=-1) * 255).astype(np.uint8)


def cam_panel(image: np.ndarray, cams: np.ndarray, *masks: np.ndarray) -> np.ndarray:
    """Image | CAM overlay per class (max over classes if several) | each mask, side by side."""
    strip = [image]
    if len(cams):
        overlay = (0.5 * image + 0.5 * heatmap(cams.max(axis=0))).astype(np.uint8)
        strip.append(overlay)
    strip.extend(colorize_mask(m) for m in masks)
    return np.concatenate(strip, axis=1)


def publish(panels: Sequence[tuple[str, np.ndarray]], out_dir: Path, key: str,
            loggers: Sequence[Logger]) -> None:
    """Save each panel as ``out_dir/<name>.png`` and log them to loggers that take images (W&B)."""
    for name, panel in panels:
        with atomic_path(out_dir / f"{name}.png") as tmp:
            Image.fromarray(panel).save(tmp, format="PNG")
    for logger in loggers:
        if hasattr(logger, "log_image") and panels:
            logger.log_image(key=key, images=[p for _, p in panels], caption=[n for n, _ in panels])
