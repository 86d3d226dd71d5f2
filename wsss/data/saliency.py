"""Unsupervised saliency maps for EPS when no saliency network's maps are at hand.

EPS was trained with PFAN maps (a supervised saliency model). Without them, OpenCV's static
saliency (``opencv-contrib-python-headless``, ``cv2.saliency``) gives a training-free stand-in:
``spectral_residual`` (Hou & Zhang 2007) or ``fine_grained`` (Montabone & Soto 2010). These are
much weaker than PFAN, so expect EPS to gain less. Maps are written once, as grayscale PNGs
``<out>/<id>.png`` (0..255, same size as the image), which is what ``data.module.saliency_dir``
(the one key for saliency maps; EPS and SEC read it) reads::

    python -m wsss.data.saliency --root VOCdevkit/VOC2012 --out VOCdevkit/VOC2012/SALSpectral
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.sources import Source, open_source
from wsss.io import save_label_png
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

METHODS = ("spectral_residual", "fine_grained")
# Where EPS looks when data.module.saliency_dir is null: its release's <VOC2012>/SALImages/<id>.png
# (PFAN maps), which the synthetic tree ships too.
DEFAULT_SALIENCY_DIR = "SALImages"


def _algorithm(method: str):
    try:
        import cv2
    except ImportError as err:
        raise ImportError("unsupervised saliency needs OpenCV's contrib modules: "
                          "pip install opencv-contrib-python-headless") from err
    if not hasattr(cv2, "saliency"):
        raise ImportError("cv2 has no `saliency` module: install opencv-contrib-python-headless "
                          "(the plain opencv-python wheel lacks the contrib modules)")
    if method == "spectral_residual":
        return cv2.saliency.StaticSaliencySpectralResidual_create()
    if method == "fine_grained":
        return cv2.saliency.StaticSaliencyFineGrained_create()
    raise ValueError(f"saliency method must be one of {METHODS}, got {method!r}")


def compute_saliency(image: np.ndarray, method: str = "spectral_residual") -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 saliency, min-max stretched to 0..255."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    ok, sal = _algorithm(method).computeSaliency(np.ascontiguousarray(image[..., ::-1]))  # BGR
    if not ok:
        raise RuntimeError(f"OpenCV {method} saliency failed on an image of shape {image.shape}")
    sal = np.asarray(sal, dtype=np.float32)
    lo, hi = float(sal.min()), float(sal.max())
    sal = (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)
    return np.round(sal * 255).astype(np.uint8)


# --dataset -> reader class (wsss.data.sources); each has the VOCSource interface.
DATASETS = {"voc": "wsss.data.voc.VOCSource", "coco": "wsss.data.coco.COCOSource",
            "context": "wsss.data.context.ContextSource", "folder": "wsss.data.folder.FolderSource"}
DEFAULT_SPLITS = {"coco": ["train2014", "val2014"], "context": ["train", "val"], "folder": ["all"]}


def image_ids(root: str | os.PathLike, splits: Sequence[str] | None = None,
              dataset: str = "voc") -> tuple[list[str], Source | None]:  # fmt: skip
    """Ids of ``splits`` (union, in order) and a reader that loads any of them; VOC without
    splits: every ``JPEGImages/*.jpg`` (reader None)."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    splits = list(splits or DEFAULT_SPLITS.get(dataset, []))
    if splits:
        ids: dict[str, None] = {}
        reader = None
        for split in splits:
            reader = open_source({"_target_": DATASETS[dataset]}, root, split, check_images=False)
            ids.update(dict.fromkeys(reader.ids))
        return list(ids), reader
    folder = Path(root) / "JPEGImages"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: --root must be the VOC2012 directory")
    return sorted(p.stem for p in folder.glob("*.jpg")), None


def generate_saliency(root: str | os.PathLike, out: str | os.PathLike,
                      splits: Sequence[str] | None = None, method: str = "spectral_residual",
                      overwrite: bool = False, dataset: str = "voc") -> dict[str, int]:  # fmt: skip
    """Write ``<out>/<id>.png`` for every image; existing files are kept (a cache) unless
    ``overwrite``. Returns ``{"written": n, "skipped": m}``."""
    _algorithm(method)  # fail before the loop on a missing OpenCV
    root, out = Path(root), Path(out)
    written = skipped = 0
    ids, reader = image_ids(root, splits, dataset)
    for image_id in tqdm(ids, desc=f"saliency ({method})"):
        path = out / f"{image_id}.png"
        if path.is_file() and not overwrite:
            skipped += 1
            continue
        if reader is not None:
            rgb = reader.load_image(image_id)
        else:
            src = root / "JPEGImages" / f"{image_id}.jpg"
            if not src.is_file():
                raise FileNotFoundError(f"image not found: {src}")
            with Image.open(src) as image:
                rgb = np.asarray(image.convert("RGB"))
        save_label_png(path, compute_saliency(rgb, method), palette=False)
        written += 1
    return {"written": written, "skipped": skipped}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset root (VOC: the VOC2012 directory)")
    parser.add_argument("--dataset", default="voc", choices=sorted(DATASETS),
                        help="on-disk format of --root (as data=...)")
    parser.add_argument("--out", required=True, help="output folder for <id>.png")
    parser.add_argument("--method", default="spectral_residual", choices=METHODS)
    parser.add_argument("--splits", nargs="*", default=None,
                        help="only these splits (default: VOC every JPEGImages/*.jpg, COCO "
                             "train2014 val2014, Context train val, folder all)")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing maps")
    args = parser.parse_args(argv)
    result = generate_saliency(args.root, args.out, args.splits, args.method, args.overwrite,
                               args.dataset)
    print(f"saliency maps in {args.out}: {result['written']} written, {result['skipped']} kept")


if __name__ == "__main__":
    main()
