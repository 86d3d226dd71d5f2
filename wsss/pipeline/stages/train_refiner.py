"""Stage `train_affinity` / `train_irn`: fit a refinement network on label-PNG crops.

The network is the stage's ``module`` node (AffinityNet or IRNet); it trains on random crops of
image + the label PNGs of role ``labels`` (affinity / relation labels, 255 = ignore) and derives its
pair labels inside ``training_step``. Role ``init`` optionally copies the *backbone* weights of a
trained classifier stage (synthetic data only: PSA/IRN start from ImageNet, which the randomly
initialised synthetic backbone lacks).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import OmegaConf

from wsss.pipeline.artifacts import label_dir
from wsss.pipeline.context import MODEL_FILE, StageContext, save_model
from wsss.pipeline.manifest import MODEL_KEYS
from wsss.pipeline.models import init_from, torch_threads
from wsss.pipeline.official import load_release

# What outside stages.train_refiner shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS

def run(ctx: StageContext) -> dict:
    with torch_threads(ctx.params.get("num_threads")):
        return _run(ctx)


def _run(ctx: StageContext) -> dict:
    p = ctx.params
    released = load_release(ctx, instantiate(p.module))  # from_checkpoint: no training
    if released is not None:
        return released
    labels = label_dir(ctx.read("labels"))
    jitter = OmegaConf.to_container(p.color_jitter, resolve=True) if p.color_jitter else None
    datamodule = ctx.datamodule(
        mode="segmentation", train_split=p.split, label_dir=str(labels), batch_size=p.batch_size,
        crop_size=p.crop_size, scale_range=list(p.scale_range), color_jitter=jitter,
    )
    model = instantiate(p.module)
    init = init_from(ctx, model)
    trainer = ctx.fit(model, trainer_kwargs={"max_epochs": p.max_epochs, "limit_val_batches": 0},
                      datamodule=datamodule)
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    return {"labels": str(labels), "split": p.split, "epochs": p.max_epochs,
            "init_from": init, **metrics}
