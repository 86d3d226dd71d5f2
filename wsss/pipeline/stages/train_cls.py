"""Stage `train_cls`: fit the classifier method (``cfg.method``) on image-level labels."""

from __future__ import annotations

from hydra.utils import instantiate

from wsss.pipeline.context import MODEL_FILE, StageContext, save_model
from wsss.pipeline.manifest import MODEL_KEYS
from wsss.pipeline.official import load_release

# What outside stages.train_cls shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS

def run(ctx: StageContext) -> dict[str, float]:
    p = ctx.params
    model = instantiate(ctx.cfg.method)
    released = load_release(ctx, model)  # from_checkpoint: the authors' weights, no training
    if released is not None:
        return released
    # A method may need extra inputs from the data (EPS: saliency maps); it says which.
    extra = getattr(model, "datamodule_overrides", dict)()
    datamodule = ctx.datamodule(**{
        "mode": "classification", "train_split": p.split, "batch_size": p.batch_size,
        "crop_size": p.crop_size, "scale_range": list(p.scale_range),
        "scale_mode": p.get("scale_mode", "factor"), **extra,
    })
    trainer = ctx.fit(model, trainer_kwargs={"max_epochs": p.max_epochs, **(p.get("trainer") or {})},
                      datamodule=datamodule)
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    return {"epochs": p.max_epochs, "steps": int(trainer.global_step), "split": p.split, **metrics}
