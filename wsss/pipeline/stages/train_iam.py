"""Stage `train_iam` (OAA+): fit the integral attention model on OAA's accumulated maps.

Inputs follow ``OAA:scripts/train_iam.py``: un-augmented images (here: long side ``size``,
zero-padded to ``size`` x ``size`` so they batch), targets = the accumulated map of each gt
class (resized to the image, padded with 0), 0 for the other classes. Its CAMs come from the
``make_cam`` stage reading this stage as ``model`` (conf/stage/make_iam_cam.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from wsss.data.sources import Source
from wsss.data.transforms import build_eval_transform, finalize, to_tv_tensors
from wsss.io import load_npz
from wsss.methods.oaa import ACCUMULATED_DIR
from wsss.pipeline.context import MODEL_FILE, StageContext, load_model, save_model
from wsss.pipeline.image_sets import source
from wsss.pipeline.manifest import MODEL_KEYS

# What outside stages.train_iam shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS

class IAMDataset(Dataset):
    """dict(image (3, S, S), target (C, S, S) in [0, 1], labels (C,), name) for ids with maps."""

    def __init__(self, source: Source, acc_dir: str | os.PathLike, size: int,
                 mean: list[float], std: list[float], num_classes: int) -> None:  # fmt: skip
        self.source, self.acc_dir, self.size, self.num_classes = source, Path(acc_dir), size, num_classes
        self.ids = [i for i in source.ids if (self.acc_dir / f"{i}.npz").is_file()]
        if not self.ids:
            raise FileNotFoundError(f"no accumulated maps for split {source.split!r} in {self.acc_dir}")
        self.transform = build_eval_transform(mean=mean, std=std, resize_long_side=size)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        name = self.ids[index]
        image = finalize(self.transform(to_tv_tensors(self.source.load_image(name))))["image"]
        h, w = image.shape[-2:]
        arrays = load_npz(self.acc_dir / f"{name}.npz")
        target = torch.zeros(self.num_classes, h, w)
        if len(arrays["keys"]):
            maps = torch.from_numpy(arrays["maps"]).float()[None]
            maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[0]
            target[torch.from_numpy(arrays["keys"])] = maps.clamp(0, 1)
        pad = (0, self.size - w, 0, self.size - h)  # bottom/right, like the val transform
        return {"image": F.pad(image, pad), "target": F.pad(target, pad),
                "labels": torch.from_numpy(self.source.labels(name)), "name": name}


def run(ctx: StageContext) -> dict:
    p, data = ctx.params, ctx.cfg.data.module
    train_dir = ctx.read("accumulated")
    src = source(ctx, p.split)
    dataset = IAMDataset(src, train_dir / ACCUMULATED_DIR, int(p.size), list(data.mean),
                         list(data.std), ctx.cfg.data.num_classes)  # fmt: skip
    loader = DataLoader(dataset, batch_size=p.batch_size, shuffle=True, num_workers=data.num_workers,
                        drop_last=len(dataset) > p.batch_size, persistent_workers=data.num_workers > 0)
    model = instantiate(p.module)
    init = ctx.read_optional("init")  # start from a trained classifier of the same architecture
    if init is not None:
        load_model(model, init / MODEL_FILE).train()
        # Every layer now holds trained weights: none is new, so none gets the new-layer lr
        # multiplier (meant for randomly initialised convs; 10x would hit the trained extra convs).
        model.new_lr_mult = 1.0
    trainer = ctx.fit(model, trainer_kwargs={"max_epochs": p.max_epochs, "limit_val_batches": 0},
                      train_dataloaders=loader)
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    loss = trainer.callback_metrics.get("train/loss")
    return {"epochs": p.max_epochs, "split": p.split, "num_images": len(dataset),
            "init_from": ctx.reads.get("init"), "new_lr_mult": float(model.new_lr_mult), "train_loss": float(loss) if loss is not None else float("nan")}

