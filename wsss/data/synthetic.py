"""Deterministic synthetic PASCAL VOC 2012 tree, for tests and fast end-to-end experiments.

Scenes are built to be solvable by CAM-based WSSS but not trivially: every class has its own shape
family and a distinctive texture on only one *key part* (the rest of the object looks neutral, so
CAMs fire on parts like real CAMs), and classes strongly co-occur with a background kind (boats on
water, trains on rails, planes in the sky) so a classifier can cheat on context. Objects overlap
(later ones on top) and may be truncated by the border; masks and boxes reflect visibility.

Two knobs vary how strongly the data shows these phenomena: ``key_part_contrast`` (1 = neutral
body + textured key part; lower = the body carries the class texture too, blended with weight
``1 - key_part_contrast``, so the key part is less discriminative) and ``context_strength``
(1 = the per-class background table below; 0 = background kinds drawn uniformly, whatever the
class; in between a blend). At their defaults (1, 1) every file is exactly what earlier versions
wrote; other values go to a different root (:func:`synthetic_root`) and are recorded in the marker.

Beside the VOC layout, ``<root>/SyntheticMeta/`` holds what the phenomenon measures
(:mod:`wsss.metrics.phenomena`) need: ``parts/<id>.png`` (part id of every visible object pixel:
0 none, 1 body, 2 key part, 3 dark detail), ``background/<id>.png`` (background kind index of every
pixel, :data:`BACKGROUNDS` order; the sky band above the horizon is sky) and ``meta.json`` (kind
names, each class's typical background kind, each image's kind). A tree made before the sidecar
existed gets it added by :func:`ensure_synthetic_meta` (replaying the seeded scenes), untouched
otherwise.

CLI: ``wsss-make-synthetic --root DIR --num-train N --num-val M`` (or ``python -m``).
"""

from __future__ import annotations

import argparse
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wsss.data.labels import VOC_CLASSES, multi_hot_from_mask
from wsss.io import atomic_path, load_label_png, read_json, save_label_png, write_json
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

log = logging.getLogger(__name__)

MARKER = "wsss_synthetic.json"
PARTIAL_MARKER = ".wsss_synthetic.partial.json"  # present only while a generation is running
FORMAT_VERSION = 2  # 2: SegmentationObject instance masks
META_DIR = "SyntheticMeta"  # sidecar: part ids, background kinds (not part of the VOC layout)
META_FILE = "meta.json"  # written last: its presence marks a complete sidecar
META_FORMAT = 1
PART_NAMES = {0: "none", 1: "body", 2: "key part", 3: "detail"}
# Phenomenon knobs and their defaults (the tree every earlier version generated).
KNOBS = {"key_part_contrast": 1.0, "context_strength": 1.0}
DEFAULT_CLASSES: tuple[str, ...] = ("aeroplane", "boat", "car", "cat", "person", "train")
BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "water", "rails", "road", "indoor")
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassStyle:
    shape: str  # shape family drawn by _part_map
    aspect: float  # box width / height
    texture: str  # key-part texture: stripes | checker | spots
    angle: float  # stripe orientation (degrees)
    period: float  # texture period (px)
    colors: tuple[RGB, RGB]
    context: tuple[float, ...]  # background probabilities, BACKGROUNDS order


STYLES: dict[str, ClassStyle] = {  # read-only table
    "aeroplane": ClassStyle("plane", 2.0, "stripes", 45, 6, ((235, 235, 240), (200, 30, 40)),
                            (0.85, 0.05, 0, 0, 0.1, 0)),
    "boat": ClassStyle("boat", 1.3, "stripes", 0, 5, ((250, 250, 250), (20, 40, 160)),
                       (0, 0.04, 0.92, 0, 0, 0.04)),
    "car": ClassStyle("car", 2.0, "checker", 0, 8, ((210, 30, 30), (25, 25, 25)),
                      (0, 0.2, 0, 0, 0.75, 0.05)),
    "cat": ClassStyle("cat", 1.5, "spots", 0, 7, ((230, 140, 40), (40, 25, 10)),
                      (0, 0.3, 0, 0, 0, 0.7)),
    "person": ClassStyle("person", 0.45, "stripes", 90, 6, ((40, 170, 60), (240, 200, 160)),
                         (0, 0.35, 0.05, 0, 0.2, 0.4)),
    "train": ClassStyle("train", 3.0, "stripes", -45, 8, ((240, 200, 20), (40, 40, 40)),
                        (0, 0.1, 0, 0.9, 0, 0)),
}  # fmt: skip


def class_style(name: str) -> ClassStyle:
    """Style of a VOC class; classes without a hand-made style get a generic blob + own texture."""
    if name in STYLES:
        return STYLES[name]
    c = VOC_CLASSES.index(name)
    hue = np.array([(c * 53) % 256, (c * 97 + 80) % 256, (c * 151 + 160) % 256])
    return ClassStyle("blob", (0.8, 1.2, 1.6)[c % 3], ("stripes", "checker", "spots")[c % 3],
                      (c * 37) % 180 - 90, 5 + c % 4, (tuple(hue), tuple(255 - hue)),
                      (1 / 6,) * 6)  # fmt: skip


# --------------------------------------------------------------------------- drawing
def _part_map(shape: str, w: int, h: int) -> np.ndarray:
    """(h, w) uint8 part ids of one object in its box: 0 none, 1 body, 2 key part, 3 dark detail."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)

    def poly(part: int, *pts: tuple[float, float]) -> None:
        draw.polygon([(x * (w - 1), y * (h - 1)) for x, y in pts], fill=part)

    def ell(part: int, x0: float, y0: float, x1: float, y1: float) -> None:
        draw.ellipse([x0 * (w - 1), y0 * (h - 1), x1 * (w - 1), y1 * (h - 1)], fill=part)

    def rect(part: int, x0: float, y0: float, x1: float, y1: float) -> None:
        poly(part, (x0, y0), (x1, y0), (x1, y1), (x0, y1))

    if shape == "plane":
        ell(1, 0.0, 0.38, 1.0, 0.62)
        poly(2, (0.38, 0.45), (0.6, 0.45), (0.44, 0.0), (0.33, 0.0))
        poly(2, (0.38, 0.55), (0.6, 0.55), (0.44, 1.0), (0.33, 1.0))
        poly(2, (0.0, 0.45), (0.13, 0.45), (0.06, 0.12), (0.0, 0.12))
        ell(3, 0.82, 0.42, 0.93, 0.5)
    elif shape == "boat":
        poly(1, (0.5, 0.05), (0.5, 0.62), (0.12, 0.62))
        poly(1, (0.56, 0.15), (0.56, 0.62), (0.86, 0.62))
        rect(3, 0.5, 0.0, 0.55, 0.66)
        poly(2, (0.0, 0.62), (1.0, 0.62), (0.85, 1.0), (0.15, 1.0))
    elif shape == "car":
        poly(1, (0.18, 0.42), (0.3, 0.05), (0.7, 0.05), (0.84, 0.42))
        poly(3, (0.33, 0.38), (0.38, 0.14), (0.5, 0.14), (0.5, 0.38))
        poly(3, (0.54, 0.38), (0.54, 0.14), (0.66, 0.14), (0.74, 0.38))
        rect(2, 0.0, 0.4, 1.0, 0.82)
        ell(3, 0.12, 0.6, 0.32, 1.0)
        ell(3, 0.68, 0.6, 0.88, 1.0)
    elif shape == "cat":
        poly(1, (0.0, 0.65), (0.08, 0.65), (0.04, 0.05), (0.0, 0.05))
        ell(1, 0.0, 0.35, 0.75, 0.92)
        rect(1, 0.15, 0.8, 0.23, 1.0)
        rect(1, 0.5, 0.8, 0.58, 1.0)
        ell(2, 0.58, 0.12, 1.0, 0.62)
        poly(2, (0.62, 0.3), (0.67, 0.0), (0.77, 0.2))
        poly(2, (0.82, 0.2), (0.92, 0.0), (0.97, 0.3))
    elif shape == "person":
        rect(1, 0.0, 0.2, 0.16, 0.52)
        rect(1, 0.84, 0.2, 1.0, 0.52)
        rect(1, 0.2, 0.55, 0.46, 1.0)
        rect(1, 0.54, 0.55, 0.8, 1.0)
        rect(2, 0.15, 0.18, 0.85, 0.58)
        ell(2, 0.28, 0.0, 0.72, 0.19)
    elif shape == "train":
        rect(1, 0.0, 0.1, 0.84, 0.86)
        for i in range(4):
            rect(3, 0.04 + 0.2 * i, 0.22, 0.14 + 0.2 * i, 0.45)
            ell(3, 0.06 + 0.2 * i, 0.78, 0.13 + 0.2 * i, 1.0)
        poly(2, (0.8, 0.1), (0.93, 0.1), (1.0, 0.5), (1.0, 0.86), (0.8, 0.86))
    else:  # generic blob: neutral body + textured head
        ell(1, 0.0, 0.25, 0.8, 1.0)
        ell(2, 0.5, 0.0, 1.0, 0.55)
    return np.asarray(canvas)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float32 in [0, 1]: bilinearly upsampled coarse noise (blobs of ~cell px)."""
    coarse = (rng.random((h // cell + 2, w // cell + 2)) * 255).astype(np.uint8)
    up = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    return np.asarray(up, dtype=np.float32) / 255.0


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float = 25) -> np.ndarray:
    return np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _texture(style: ClassStyle, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 two-colour class texture with colour, phase and period jitter."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = style.period * rng.uniform(0.85, 1.2)
    if style.texture == "stripes":
        a = math.radians(style.angle + rng.uniform(-8, 8))
        on = np.floor((xx * math.cos(a) + yy * math.sin(a)) / (period / 2) + rng.random()) % 2 > 0
    elif style.texture == "checker":
        on = (np.floor(xx / period + rng.random()) + np.floor(yy / period + rng.random())) % 2 > 0
    else:
        on = _smooth_noise(rng, h, w, max(2, int(period))) > 0.62
    c1, c2 = _jitter(rng, style.colors[0]), _jitter(rng, style.colors[1])
    return np.where(on[..., None], c1, c2)


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(h, w, 3) float32 textured background and the horizon row (0 when there is no sky band)."""
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    fine = rng.normal(0, 1, (h, w, 1)).astype(np.float32)
    sky = _jitter(rng, (70, 130, 220), 20) * (1 - yy) + _jitter(rng, (185, 210, 240), 15) * yy
    clouds = np.clip((_smooth_noise(rng, h, w, 14) - 0.6) * 4, 0, 1)[..., None]
    sky = sky * (1 - clouds) + 245 * clouds
    if kind == "sky":
        return sky, 0
    if kind == "indoor":
        wall = _jitter(rng, (200, 180, 150), 30) * (0.93 + 0.07 * (np.sin(xx * w / 3) > 0))
        floor = _jitter(rng, (140, 90, 50), 20) * (0.85 + 0.15 * (np.sin(yy * h * 1.3) > 0))
        return np.where(yy < rng.uniform(0.6, 0.85), wall, floor) + 4 * fine, 0
    if kind == "grass":
        ground = _jitter(rng, (60, 140, 50), 20) * (
            0.7 + 0.6 * _smooth_noise(rng, h, w, 3)[..., None]
        )
        ground = ground + 12 * fine
    elif kind == "water":
        period = rng.uniform(5, 9) / h
        waves = np.sin(
            2 * np.pi * (yy / period + 0.4 * np.sin(2 * np.pi * xx * rng.uniform(2, 5)))
        )
        ground = _jitter(rng, (30, 90, 150), 20) + 25 * waves + 5 * fine
    elif kind == "rails":
        ground = _jitter(rng, (120, 110, 100), 15) + 18 * fine
        ys = np.arange(h)[:, None, None]
        xs = np.arange(w)[None, :, None]
        for y0 in rng.uniform(0.3, 0.95, size=3) * h:
            gap = rng.uniform(6, 10)
            ties = (ys > y0 - 2) & (ys < y0 + gap + 2) & (xs % 9 < 3)
            ground = np.where(ties, np.array([90, 60, 35], np.float32), ground)
            rails = (np.abs(ys - y0) < 1) | (np.abs(ys - y0 - gap) < 1)
            ground = np.where(rails, np.array([180, 180, 185], np.float32), ground)
    else:  # road
        ground = _jitter(rng, (80, 80, 85), 10) + 10 * fine
        lane = (np.abs(yy - rng.uniform(0.6, 0.85)) < 1.5 / h) & ((xx * w) % 20 < 11)
        ground = np.where(lane, 230.0, ground)
    horizon = int(rng.uniform(0.0, 0.4) * h)
    return np.where(np.arange(h)[:, None, None] < horizon, sky, ground), horizon


# --------------------------------------------------------------------------- scenes
@dataclass
class _Scene:
    image: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (H, W) int32 visible instance ids, 0 = background
    classes: list[int]  # VOC class index of instance k + 1
    truncated: list[bool]
    parts: np.ndarray  # (H, W) uint8 part id of the visible object pixel (0 none, 1 body, 2 key, 3 detail)
    kinds: np.ndarray  # (H, W) uint8 background kind index (BACKGROUNDS) under every pixel
    background: str  # the image's background kind


def context_table(style: ClassStyle, strength: float) -> tuple[float, ...]:
    """Background-kind probabilities of a class: ``strength`` * its table + the rest uniform.

    ``strength`` 1 returns the table itself (unnormalised, as the generator always used it)."""
    if strength == 1.0:
        return style.context
    table = np.asarray(style.context, np.float64) / sum(style.context)
    return tuple(float(v) for v in strength * table + (1 - strength) / len(BACKGROUNDS))


def typical_context(name: str) -> str | None:
    """The background kind a class is drawn on most often (its own table's unique maximum), the
    context a classifier can learn it from (boat: water); None for a flat table."""
    table = np.asarray(class_style(name).context)
    best = np.flatnonzero(table == table.max())
    return BACKGROUNDS[int(best[0])] if len(best) == 1 else None


def _place_object(rng: np.random.Generator, scene_inst: np.ndarray, counts: np.ndarray,
                  style: ClassStyle, kind: str, horizon: int, k: int) -> tuple | None:  # fmt: skip
    """Try to place instance ``k``; return (row slice, col slice, local parts, truncated) or None.

    ``counts[j]`` are current visible pixels of instance j; placements that would hide an earlier
    object almost completely (or leave this one mostly out of frame) are rejected.
    """
    h, w = scene_inst.shape
    frac = math.exp(rng.uniform(math.log(0.07), math.log(0.5)))  # box area / image area
    bw = math.sqrt(frac * h * w * style.aspect)
    bh = bw / style.aspect
    shrink = min(1.0, 1.05 * w / bw, 1.05 * h / bh)
    bw, bh = max(8, int(bw * shrink)), max(8, int(bh * shrink))
    parts = _part_map(style.shape, bw, bh)
    if rng.random() < 0.5:
        parts = parts[:, ::-1]
    x0 = int(rng.uniform(-0.2 * bw, w - 0.8 * bw))
    if kind in ("sky", "indoor"):
        y0 = int(rng.uniform(-0.2 * bh, h - 0.8 * bh))
    else:  # grounded objects stand below the horizon
        hi = h - 0.8 * bh  # bottom edge between 0.3 box heights under the horizon and the border
        y0 = int(rng.uniform(min(horizon - 0.7 * bh, hi), hi))
    ys, xs = slice(max(y0, 0), min(y0 + bh, h)), slice(max(x0, 0), min(x0 + bw, w))
    local = parts[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    min_px = 0.012 * h * w
    if (local > 0).sum() < max(min_px, 0.6 * (parts > 0).sum()):
        return None  # too small or mostly out of frame
    candidate = scene_inst[ys, xs].copy()
    candidate[local > 0] = k
    new = np.bincount(candidate.ravel(), minlength=k + 1)
    old = np.bincount(scene_inst[ys, xs].ravel(), minlength=k + 1)
    left = counts[1:k] - (old[1:k] - new[1:k])  # visible pixels of earlier instances afterwards
    if np.any(left < np.maximum(min_px, 0.4 * counts[1:k])):
        return None  # would hide an earlier object almost completely
    return ys, xs, local, (local > 0).sum() < (parts > 0).sum()


def _render_scene(rng: np.random.Generator, w: int, h: int, class_ids: Sequence[int],
                  key_part_contrast: float = 1.0, context_strength: float = 1.0) -> _Scene:  # fmt: skip
    styles = [class_style(VOC_CLASSES[c]) for c in class_ids]
    contexts = [context_table(s, context_strength) for s in styles]
    first = int(rng.integers(len(class_ids)))
    kind_idx = rng.choice(
        len(BACKGROUNDS), p=np.asarray(contexts[first]) / sum(contexts[first])
    )
    kind = BACKGROUNDS[kind_idx]
    image, horizon = _background(kind, h, w, rng)
    kinds = np.full((h, w), kind_idx, np.uint8)
    kinds[:horizon] = BACKGROUNDS.index("sky")  # the sky band above a ground's horizon
    parts = np.zeros((h, w), np.uint8)
    weights = np.array([c[kind_idx] + 0.03 for c in contexts])
    picks = [first] + list(rng.choice(len(class_ids), size=rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]),
                                      p=weights / weights.sum()))  # fmt: skip
    inst = np.zeros((h, w), np.int32)
    counts = np.zeros(len(picks) + 1, np.int64)
    classes: list[int] = []
    truncated: list[bool] = []
    for pick in picks:
        k = len(classes) + 1
        for _ in range(6):
            placed = _place_object(rng, inst, counts[: k + 1], styles[pick], kind, horizon, k)
            if placed is not None:
                break
        if placed is None:
            continue
        ys, xs, local, trunc = placed
        on = local > 0
        body = _jitter(rng, rng.uniform(70, 190, 3), 0) + rng.normal(0, 6, (*local.shape, 1))
        texture = _texture(styles[pick], *local.shape, rng)
        if key_part_contrast != 1.0:  # the body carries the class texture too
            body = key_part_contrast * body + (1 - key_part_contrast) * texture
        colour = np.where((local == 2)[..., None], texture, body)
        colour = np.where((local == 3)[..., None], _jitter(rng, (35, 35, 40), 10), colour)
        region = image[ys, xs]
        region[on] = colour[on]
        inst[ys, xs][on] = k
        parts[ys, xs][on] = local[on]
        counts[: k + 1] = np.bincount(inst.ravel(), minlength=k + 1)
        classes.append(class_ids[pick])
        truncated.append(bool(trunc))
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 3, image.shape)
    return _Scene(np.clip(image, 0, 255).astype(np.uint8), inst, classes, truncated, parts, kinds, kind)


def void_band(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool ~3 px band centred on every instance contour (VOC's 255 'void' outline)."""
    edge = np.zeros(instances.shape, bool)
    dx = instances[:, 1:] != instances[:, :-1]
    dy = instances[1:] != instances[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    band = edge.copy()  # 2 px (one each side); widen by one pixel down/right -> 3 px
    band[1:] |= edge[:-1]
    band[:, 1:] |= edge[:, :-1]
    return band


def _saliency(rng: np.random.Generator, inst: np.ndarray) -> np.ndarray:
    """(H, W) uint8 noisy saliency: blurred GT foreground, missed parts, false background blobs."""
    h, w = inst.shape
    sal = np.zeros((h, w), np.float32)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for k in range(1, int(inst.max()) + 1):
        ys, xs = np.nonzero(inst == k)
        sal[inst == k] = rng.uniform(0.7, 1.0)
        if ys.size and rng.random() < 0.4:  # detector misses part of this object
            cx, cy = rng.uniform(xs.min(), xs.max()), rng.uniform(ys.min(), ys.max())
            rx, ry = 0.25 * (xs.max() - xs.min() + 1), 0.25 * (ys.max() - ys.min() + 1)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=k)
    missed = (np.asarray(canvas) == inst) & (inst > 0)
    sal[missed] *= rng.uniform(0.0, 0.3)
    for _ in range(int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))):  # false salient blobs
        blob = Image.new("L", (w, h), 0)
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.06, 0.15) * min(w, h)
        ImageDraw.Draw(blob).ellipse([cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r], fill=255)
        sal = np.where((np.asarray(blob) > 0) & (inst == 0), rng.uniform(0.3, 0.8), sal)
    blurred = Image.fromarray((sal * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius=rng.uniform(1.5, 3.0)))  # fmt: skip
    noisy = np.asarray(blurred, np.float32) + rng.normal(0, 5, (h, w))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _annotation_xml(name: str, scene: _Scene) -> bytes:
    """Real VOC XML: one <object> per visible instance, 1-based inclusive pixel boxes."""
    h, w = scene.instances.shape
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "wsss synthetic VOC"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for k, (cls, trunc) in enumerate(zip(scene.classes, scene.truncated), start=1):
        ys, xs = np.nonzero(scene.instances == k)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = VOC_CLASSES[cls]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(trunc))
        ET.SubElement(obj, "difficult").text = str(int(ys.size < 0.02 * h * w))  # tiny = difficult
        box = ET.SubElement(obj, "bndbox")
        for tag, v in (
            ("xmin", xs.min()),
            ("ymin", ys.min()),
            ("xmax", xs.max()),
            ("ymax", ys.max()),
        ):
            ET.SubElement(box, tag).text = str(int(v) + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


# --------------------------------------------------------------------------- tree
def _knobs(key_part_contrast: float, context_strength: float) -> dict[str, float]:
    knobs = {"key_part_contrast": float(key_part_contrast), "context_strength": float(context_strength)}
    bad = {k: v for k, v in knobs.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"data.synthetic knobs must lie in [0, 1], got {bad}")
    return knobs


def synthetic_root(root: str | Path, key_part_contrast: float = 1.0, context_strength: float = 1.0) -> Path:
    """Where a tree with these knobs lives: ``root`` at the defaults, else a sibling of root's
    parent named after the knobs (``.../synthetic_voc_kpc0.3_ctx1/VOC2012``), so trees never mix."""
    root = Path(root)
    knobs = _knobs(key_part_contrast, context_strength)
    if knobs == KNOBS:
        return root
    tag = f"kpc{knobs['key_part_contrast']:g}_ctx{knobs['context_strength']:g}"
    return root.parent.with_name(f"{root.parent.name}_{tag}") / root.name


def _config(num_train: int, num_val: int, image_size: Sequence[int], seed: int,
            classes: Sequence[str] | None, num_extra: int | None,
            key_part_contrast: float = 1.0, context_strength: float = 1.0) -> dict:  # fmt: skip
    classes = tuple(DEFAULT_CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in VOC_CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be non-empty VOC class names, got unknown {unknown}")
    if num_train < 1 or num_val < 0 or (num_extra is not None and num_extra < 0):
        raise ValueError(
            f"need num_train >= 1, num_val/num_extra >= 0, got {num_train}, {num_val}"
        )
    extra = num_train // 3 if num_extra is None else num_extra
    return {"format_version": FORMAT_VERSION, "seed": int(seed), "num_train": int(num_train),
            "num_val": int(num_val), "num_extra": int(extra),
            "image_size": [int(image_size[0]), int(image_size[1])], "classes": list(classes),
            **_knobs(key_part_contrast, context_strength)}  # fmt: skip


def _layout(config: dict) -> tuple[list[str], np.ndarray]:
    """(image names, split of each: train | val | extra) of a tree with this config."""
    n_train, n_val, n_extra = config["num_train"], config["num_val"], config["num_extra"]
    total = n_train + n_val + n_extra
    names = [f"{2007 + (6 * j) // total}_{j:06d}" for j in range(total)]  # sorted like VOC ids
    order = np.random.default_rng([config["seed"], 0]).permutation(total)
    split_of = np.empty(total, dtype=object)
    split_of[order[:n_train]], split_of[order[n_train : n_train + n_val]] = "train", "val"
    split_of[order[n_train + n_val :]] = "extra"
    return names, split_of


def _check_foreign(root: Path) -> None:
    """Refuse to write into a non-empty directory that this generator did not create."""
    ours = (root / MARKER).is_file() or (root / PARTIAL_MARKER).is_file()
    if root.is_dir() and not ours and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is non-empty and has no {MARKER} marker: refusing to write a "
            "synthetic dataset over what may be real data; pass an empty or new directory"
        )


def _valid_scene(rng: np.random.Generator, name: str, w: int, h: int, class_ids: Sequence[int],
                 knobs: dict[str, float]) -> tuple[_Scene, np.ndarray, np.ndarray]:  # fmt: skip
    """(scene, SegmentationClassAug mask, void band): resampled until every object is visible
    and survives the void band."""
    for _ in range(20):
        scene = _render_scene(rng, w, h, class_ids, **knobs)
        mask = np.zeros(len(scene.classes) + 1, np.uint8)
        mask[1:] = np.asarray(scene.classes, np.uint8) + 1
        aug = mask[scene.instances]
        band = void_band(scene.instances)
        interior = np.bincount(scene.instances[~band].ravel(), minlength=len(mask))
        if scene.classes and interior[1:].min() > 0:
            return scene, aug, band
    raise RuntimeError(f"could not render a valid scene for {name} ({w}x{h})")


def _write_meta_maps(root: Path, name: str, scene: _Scene) -> dict:
    """``SyntheticMeta/{parts,background}/<name>.png``; returns the image's meta.json entry."""
    save_label_png(root / META_DIR / "parts" / f"{name}.png", scene.parts, palette=False)
    save_label_png(root / META_DIR / "background" / f"{name}.png", scene.kinds, palette=False)
    return {"background": scene.background}


def _write_image(root: Path, name: str, rng: np.random.Generator, w: int, h: int,
                 class_ids: Sequence[int], official: bool, knobs: dict[str, float],
                 meta_only: bool = False) -> dict:  # fmt: skip
    """Render image ``name`` and write its VOC files and sidecar maps (only the sidecar with
    ``meta_only``: the random stream is consumed identically up to the scene). Returns its
    meta.json entry."""
    scene, aug, band = _valid_scene(rng, name, w, h, class_ids, knobs)
    entry = _write_meta_maps(root, name, scene)
    if meta_only:
        return entry
    voc = np.where(band, np.uint8(255), aug)
    assert (multi_hot_from_mask(voc, 20) == multi_hot_from_mask(aug, 20)).all()
    with atomic_path(root / "JPEGImages" / f"{name}.jpg") as tmp:
        Image.fromarray(scene.image).save(tmp, format="JPEG", quality=90)
    with atomic_path(root / "Annotations" / f"{name}.xml") as tmp:
        tmp.write_bytes(_annotation_xml(name, scene))
    save_label_png(root / "SegmentationClassAug" / f"{name}.png", aug, palette=False)
    if official:  # SBD-only images have no official VOC masks
        save_label_png(root / "SegmentationClass" / f"{name}.png", voc, palette=True)
        # VOC instance masks: object k (the k-th <object> of the XML) = k, same void band.
        objects = np.where(band, 255, scene.instances).astype(np.uint8)
        save_label_png(root / "SegmentationObject" / f"{name}.png", objects, palette=True)
    save_label_png(
        root / "SALImages" / f"{name}.png", _saliency(rng, scene.instances), palette=False
    )
    return entry


def _render_all(root: Path, config: dict, meta_only: bool, progress: bool) -> None:
    """Render every image of the tree (VOC files + sidecar, or the sidecar only), then meta.json."""
    names, split_of = _layout(config)
    class_ids = [VOC_CLASSES.index(c) for c in config["classes"]]
    knobs = {k: config.get(k, v) for k, v in KNOBS.items()}
    w0, h0 = config["image_size"]
    images = {}
    what = "synthetic VOC sidecar" if meta_only else "synthetic VOC"
    for j in tqdm(range(len(names)), desc=f"{what} -> {root}", disable=not progress):
        rng = np.random.default_rng([config["seed"], 1, j])  # per-image stream: independent of counts
        w, h = (max(32, round(s * rng.uniform(0.75, 1.25))) for s in (w0, h0))
        images[names[j]] = _write_image(root, names[j], rng, w, h, class_ids,
                                        official=split_of[j] != "extra", knobs=knobs,
                                        meta_only=meta_only)  # fmt: skip
    typical = {c: typical_context(c) for c in config["classes"]}
    write_json(root / META_DIR / META_FILE, {
        "format": META_FORMAT, "backgrounds": list(BACKGROUNDS),
        "parts": {str(k): v for k, v in PART_NAMES.items()},
        "typical_context": {c: k for c, k in typical.items() if k is not None},
        **knobs, "seed": config["seed"], "images": images,
    })  # fmt: skip


def generate_voc(root: Path, num_train: int, num_val: int,
                 image_size: tuple[int, int] = (160, 120), seed: int = 0,
                 classes: Sequence[str] | None = None, num_extra: int | None = None,
                 progress: bool = True, key_part_contrast: float = 1.0,
                 context_strength: float = 1.0) -> Path:  # fmt: skip
    """Write a synthetic VOC 2012 tree into ``root`` (the ``VOCdevkit/VOC2012`` folder).

    ``image_size`` is (W, H), varied by ±25% per image. ``num_extra`` SBD-only images (default
    ``num_train // 3``) join ``train_aug``. ``key_part_contrast`` / ``context_strength``: the
    phenomenon knobs (module docstring). Deterministic given the arguments. Returns ``root``.
    """
    root = Path(root)
    config = _config(num_train, num_val, image_size, seed, classes, num_extra,
                     key_part_contrast, context_strength)  # fmt: skip
    _check_foreign(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)
    (root / META_DIR / META_FILE).unlink(missing_ok=True)
    write_json(root / PARTIAL_MARKER, config)
    _render_all(root, config, meta_only=False, progress=progress)
    names, split_of = _layout(config)
    splits = {s: [n for n, sp in zip(names, split_of) if sp in members]
              for s, members in (("train", {"train"}), ("val", {"val"}),
                                 ("trainval", {"train", "val"}), ("train_aug", {"train", "extra"}))}  # fmt: skip
    for split, ids in splits.items():
        with atomic_path(root / "ImageSets" / "Segmentation" / f"{split}.txt") as tmp:
            tmp.write_text("".join(f"{i}\n" for i in ids))
    config["counts"] = {split: len(ids) for split, ids in splits.items()}
    write_json(root / MARKER, config)  # last: a tree without it is incomplete
    (root / PARTIAL_MARKER).unlink(missing_ok=True)
    log.info("wrote synthetic VOC (%d images, classes %s) to %s", len(names), config["classes"], root)
    return root


def ensure_synthetic_meta(root: Path, progress: bool = False) -> Path:
    """Add ``SyntheticMeta/`` to a complete synthetic tree that lacks it (made before the sidecar
    existed) by replaying its seeded scenes; no VOC file is touched. Returns the sidecar folder."""
    root = Path(root)
    if not (root / MARKER).is_file():
        raise FileNotFoundError(f"{root} is not a complete synthetic VOC tree (no {MARKER})")
    meta = root / META_DIR / META_FILE
    if not meta.is_file() or read_json(meta).get("format") != META_FORMAT:
        config = read_json(root / MARKER)
        log.info("adding the %s sidecar to %s", META_DIR, root)
        _render_all(root, config, meta_only=True, progress=progress)
    return root / META_DIR


def ensure_synthetic_voc(root: Path, num_train: int, num_val: int,
                         image_size: tuple[int, int] = (160, 120), seed: int = 0,
                         classes: Sequence[str] | None = None, num_extra: int | None = None,
                         progress: bool = True, key_part_contrast: float = 1.0,
                         context_strength: float = 1.0) -> Path:  # fmt: skip
    """Generate the tree unless a complete one with the same settings is already at ``root``
    (then only its ``SyntheticMeta`` sidecar is added if missing).

    Raises FileExistsError for a non-empty directory without our marker (never touches user data)
    and ValueError when the existing synthetic tree was made with different settings.
    """
    root = Path(root)
    args = (num_train, num_val, image_size, seed, classes, num_extra)
    knobs = {"key_part_contrast": key_part_contrast, "context_strength": context_strength}
    wanted = _config(*args, **knobs)
    if (root / MARKER).is_file():
        found = read_json(root / MARKER)
        # Markers written before the knobs existed hold the default tree.
        diff = {k: (found.get(k, KNOBS.get(k)), v) for k, v in wanted.items()
                if found.get(k, KNOBS.get(k)) != v}  # fmt: skip
        if set(diff) == {"format_version"}:  # our own tree from an older generator: same scenes
            log.warning("%s was made by an older generator (format %s); regenerating", root,
                        found.get("format_version"))
            return generate_voc(root, *args, progress, **knobs)
        if diff:
            raise ValueError(f"synthetic VOC at {root} was made with other settings "
                             f"(found, wanted): {diff}; delete it or point root elsewhere")  # fmt: skip
        ensure_synthetic_meta(root, progress)
        return root
    if (root / PARTIAL_MARKER).is_file():
        log.warning("%s holds an interrupted synthetic generation; regenerating", root)
    return generate_voc(root, *args, progress, **knobs)


@dataclass(frozen=True)
class SyntheticMeta:
    """Reader of a tree's ``SyntheticMeta/`` sidecar (see the module docstring)."""

    root: Path
    backgrounds: tuple[str, ...]
    typical: dict[int, int]  # GT mask value (class index + 1) -> its typical background kind index
    knobs: dict[str, float]

    def parts(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 part ids (0 none, 1 body, 2 key part, 3 detail) of visible object pixels."""
        return load_label_png(self.root / META_DIR / "parts" / f"{image_id}.png")

    def kinds(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 background kind index (``backgrounds`` order) under every pixel."""
        return load_label_png(self.root / META_DIR / "background" / f"{image_id}.png")

    def has(self, image_id: str) -> bool:
        return (self.root / META_DIR / "parts" / f"{image_id}.png").is_file()


def load_synthetic_meta(root: str | Path) -> SyntheticMeta | None:
    """The sidecar of a synthetic tree, adding it first to a complete tree made before it
    existed; None for any other dataset root."""
    root = Path(root)
    if not (root / MARKER).is_file():
        return None
    ensure_synthetic_meta(root)
    meta = read_json(root / META_DIR / META_FILE)
    kinds = tuple(meta["backgrounds"])
    typical = {VOC_CLASSES.index(c) + 1: kinds.index(k) for c, k in meta["typical_context"].items()}
    return SyntheticMeta(root, kinds, typical, {k: float(meta.get(k, v)) for k, v in KNOBS.items()})


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point ``wsss-make-synthetic``."""
    parser = argparse.ArgumentParser(description="Generate a synthetic PASCAL VOC 2012 tree.")
    parser.add_argument(
        "--root", type=Path, required=True, help="output (plays VOCdevkit/VOC2012)"
    )
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--num-extra", type=int, default=None, help="SBD-only train_aug images")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", default=None, help=f"default: {DEFAULT_CLASSES}")
    parser.add_argument("--key-part-contrast", type=float, default=1.0,
                        help="1 = neutral body + textured key part; lower = textured body too")
    parser.add_argument("--context-strength", type=float, default=1.0,
                        help="1 = per-class background table; 0 = uniform background kinds")
    parser.add_argument("--ensure", action="store_true", help="skip if already generated")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fn = ensure_synthetic_voc if args.ensure else generate_voc
    fn(args.root, args.num_train, args.num_val, tuple(args.image_size), args.seed, args.classes,
       args.num_extra, not args.no_progress, key_part_contrast=args.key_part_contrast,
       context_strength=args.context_strength)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
