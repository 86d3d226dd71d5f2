"""Stage `train_affinity` / `train_irn`: fit a refinement network on label-PNG crops.

The network is the stage's ``module`` node (AffinityNet or IRNet); it trains on random crops of
image + ``labels_from``'s label PNGs (affinity / relation labels, 255 = ignore) and derives its
pair labels inside ``training_step``. ``init_from`` optionally copies the *backbone* weights of a
trained classifier stage (synthetic data only: PSA/IRN start from ImageNet, which the randomly
initialised synthetic backbone lacks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from wsss.pipeline.context import MODEL_FILE, StageContext, init_backbone, save_model
from wsss.pipeline.official import load_release
from wsss.pipeline.stages.make_pseudo_labels import label_dir


@contextmanager
def torch_threads(num: int | None) -> Iterator[None]:
    """Run the block with ``num`` intra-op threads (None = leave torch's setting), then restore.

    Many small ops (pair losses, sparse random walks) on a small shared CPU suffer badly from
    thread oversubscription: one IRNet step went from ~50 s to ~1 s with 1 thread under load.
    """
    previous = torch.get_num_threads()
    if num:
        torch.set_num_threads(int(num))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def _run(ctx: StageContext) -> dict:
    p = ctx.params
    released = load_release(ctx, instantiate(p.module))  # from_checkpoint: no training
    if released is not None:
        return released
    labels = label_dir(ctx.input(p.labels_from))
    jitter = OmegaConf.to_container(p.color_jitter, resolve=True) if p.color_jitter else None
    datamodule = ctx.datamodule(
        mode="segmentation", train_split=p.split, label_dir=str(labels), batch_size=p.batch_size,
        crop_size=p.crop_size, scale_range=list(p.scale_range), color_jitter=jitter,
    )
    model = instantiate(p.module)
    if p.init_from:
        init_backbone(model, ctx.input(p.init_from) / MODEL_FILE)
    trainer = ctx.trainer(max_epochs=p.max_epochs, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    return {"labels": str(labels), "split": p.split, "epochs": p.max_epochs,
            "init_from": p.init_from, **metrics}
