"""Run a trained segmenter or classifier of a run on a folder of images.

    python -m wsss.predict logs/runs/<time>/stages/train_seg/model.pt photos/ --out predictions/
    wsss-predict logs/runs/<time>/stages/train_cls photos/ --out cams/ --cams

The model is rebuilt from the run's composed config (``<run>/.hydra/config.yaml``, written by
``python train.py``; else the stage's ``manifest.json``; or ``--config``): a stage with a ``module`` node (``train_seg``, ...) builds
that module, a classifier stage (``train_cls``) builds ``method``. Writes, per image ``<id>``:

- ``masks/<id>.png``: label map (0 background, c+1 class c), VOC palette;
- ``overlays/<id>.jpg``: the image blended with the coloured mask;
- with ``--cams``: ``cams/<id>.npz`` with ``keys`` (K,) int64 and ``cams`` (K, H, W) float32 in the
  ``make_cam`` format: for a classifier its normalised CAMs of the predicted classes, for a
  segmenter the softmax probabilities of the classes present in the mask.

A classifier's mask is the CAM argmax over the classes it predicts (sigmoid > ``--cls-threshold``)
with background below ``--threshold`` (default: the run's ``eval_cam`` threshold when there is one).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from wsss.conf import register_resolvers
from wsss.io import atomic_path, read_json, save_label_png, save_npz
from wsss.progress import tqdm

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MODEL_FILE = "model.pt"


@dataclass
class LoadedModel:
    module: torch.nn.Module
    kind: str  # "segmenter" | "classifier"
    cfg: DictConfig
    stage: str
    stage_dir: Path
    mean: tuple[float, ...]
    std: tuple[float, ...]


def stage_config(stage_dir: Path, config: str | Path | None = None) -> DictConfig:
    """The config that built the stage's model: ``config`` if given, else the run's composed
    ``<run>/.hydra/config.yaml``, else the stage's ``manifest.json`` (its resolved stage config
    and the global method / backbone it was made with)."""
    if config is not None:
        return OmegaConf.load(config)
    path = stage_dir.parent.parent / ".hydra" / "config.yaml"
    if path.is_file():
        return OmegaConf.load(path)
    manifest = stage_dir / "manifest.json"
    if manifest.is_file():
        recorded = read_json(manifest).get("config") or {}
        glob = dict(recorded.get("global") or {})
        return OmegaConf.create({**glob, "stages": {stage_dir.name: recorded.get("stage") or {}}})
    raise FileNotFoundError(
        f"neither {path} nor {manifest} found: predict rebuilds the model from the run's composed "
        "config (written by `python train.py`) or the stage's manifest; pass --config CONFIG.yaml")


def load_run_model(model: str | Path, config: str | Path | None = None) -> LoadedModel:
    """Build the module that wrote ``model`` (a ``model.pt`` or its stage dir) and load it."""
    from wsss.pipeline.context import load_model

    path = Path(model)
    weights = path / MODEL_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such model file (a fit stage's model.pt)")
    stage_dir = weights.parent
    stage = stage_dir.name
    register_resolvers()
    cfg = stage_config(stage_dir, config)
    if OmegaConf.select(cfg, "backbone.weights") is not None:
        cfg.backbone.weights = None  # model.pt holds every weight: no ImageNet download
    node = OmegaConf.select(cfg, f"stages.{stage}.module")
    if node is not None:
        kind = "segmenter"
    elif "method" in cfg:  # train_cls / train_iam: the classifier of ``method``
        node, kind = cfg.method, "classifier"
    else:
        raise KeyError(f"{stage_dir}: the config has neither stages.{stage}.module nor method")
    if node.get("backbone") is not None and OmegaConf.select(node, "backbone.weights") is not None:
        node.backbone.weights = None
    module = load_model(instantiate(node), weights)
    if kind == "segmenter" and hasattr(module, "cam"):
        kind = "classifier"
    if kind == "classifier" and not hasattr(module, "cam"):
        raise TypeError(f"{type(module).__name__} ({stage}) is neither a segmenter nor a classifier "
                        "with cam(); predict supports DeepLab-style segmenters and CAM classifiers")
    mean = tuple(OmegaConf.select(cfg, "backbone.mean") or (0.485, 0.456, 0.406))
    std = tuple(OmegaConf.select(cfg, "backbone.std") or (0.229, 0.224, 0.225))
    return LoadedModel(module, kind, cfg, stage, stage_dir, mean, std)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def to_tensor(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) normalised float32."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return ((x - m) / s)[None]


def run_threshold(loaded: LoadedModel) -> float | None:
    """The background threshold the run chose in ``eval_cam``, if it ran there."""
    metrics = loaded.stage_dir.parent / "eval_cam" / "metrics.json"
    return float(read_json(metrics)["threshold"]) if metrics.is_file() else None


@torch.no_grad()
def predict_image(loaded: LoadedModel, rgb: np.ndarray, scales: Sequence[float], flip: bool,
                  threshold: float, cls_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask (H, W) uint8, keys (K,) int64, maps (K, H, W) float32) of one image."""
    from wsss.functional.cam import multiscale_cam, normalize_cam
    from wsss.functional.segmentation import multiscale_probs

    device = next(loaded.module.parameters()).device
    image = to_tensor(rgb, loaded.mean, loaded.std).to(device)
    if loaded.kind == "segmenter":
        probs = multiscale_probs(loaded.module, image, scales, flip).cpu()
        mask = probs.argmax(0).numpy().astype(np.uint8)
        present = [c for c in np.unique(mask).tolist() if c > 0]
        keys = np.asarray([c - 1 for c in present], dtype=np.int64)
        maps = probs[present].numpy().astype(np.float32) if present else np.zeros((0, *mask.shape), np.float32)
        return mask, keys, maps
    scores = loaded.module(image).sigmoid()[0].cpu()
    keys_t = torch.nonzero(scores > cls_threshold).flatten()
    if not len(keys_t):
        keys_t = scores.argmax().view(1)  # every image shows at least its most likely class
    cams = multiscale_cam(loaded.module.cam, image, scales=scales, flip=flip).cpu()
    cams = normalize_cam(cams[keys_t]).numpy().astype(np.float32)  # (K, H, W)
    keys = keys_t.numpy().astype(np.int64)
    from wsss.pipeline.wandb_dashboard import cam_label

    return cam_label(cams, keys, threshold), keys, cams


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the VOC colours of ``mask`` (background left as it is)."""
    from wsss.pipeline.visualize import colorize_mask

    colours = colorize_mask(mask).astype(np.float32)
    out = rgb.astype(np.float32)
    fg = (mask > 0) & (mask != 255)
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    return out.astype(np.uint8)


def predict_folder(model: str | Path, images: str | Path, out: str | Path, *, cams: bool = False,
                   config: str | Path | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False, threshold: float | None = None, cls_threshold: float = 0.5,
                   device: str = "cpu") -> dict:
    """Masks / overlays / (CAMs) of every image in ``images`` under ``out``; returns a summary."""
    loaded = load_run_model(model, config)
    loaded.module.to(device)
    threshold = threshold if threshold is not None else (run_threshold(loaded) or 0.25)
    out = Path(out)
    paths = list_images(Path(images))
    for path in tqdm(paths, desc="predict"):
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
        mask, keys, maps = predict_image(loaded, rgb, scales, flip, threshold, cls_threshold)
        save_label_png(out / "masks" / f"{path.stem}.png", mask)
        with atomic_path(out / "overlays" / f"{path.stem}.jpg") as tmp:
            Image.fromarray(overlay(rgb, mask)).save(tmp, format="JPEG", quality=90)
        if cams:
            save_npz(out / "cams" / f"{path.stem}.npz", keys=keys, cams=maps)
    summary = {"model": str(loaded.stage_dir / MODEL_FILE), "kind": loaded.kind, "stage": loaded.stage,
               "num_images": len(paths), "scales": list(scales), "flip": flip, "out": str(out)}
    if loaded.kind == "classifier":
        summary["threshold"] = threshold
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wsss-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a fit stage's model.pt, or its stage directory")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--out", required=True, help="output folder (masks/, overlays/, cams/)")
    parser.add_argument("--cams", action="store_true", help="also write cams/<id>.npz")
    parser.add_argument("--config", help="composed config (default: <run>/.hydra/config.yaml)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    parser.add_argument("--threshold", type=float, default=None,
                        help="classifier: CAM background threshold (default: the run's eval_cam one)")
    parser.add_argument("--cls-threshold", type=float, default=0.5,
                        help="classifier: sigmoid score above which a class is predicted")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = predict_folder(args.model, args.images, args.out, cams=args.cams, config=args.config,
                             scales=args.scales, flip=args.flip, threshold=args.threshold,
                             cls_threshold=args.cls_threshold, device=args.device)
    log.info("%s", summary)


if __name__ == "__main__":
    main()
