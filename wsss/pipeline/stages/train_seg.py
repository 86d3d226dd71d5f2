"""Stage `train_seg`: fit the segmentation network (DeepLab) on the pseudo-labels."""

from __future__ import annotations

from hydra.utils import instantiate

from wsss.pipeline.artifacts import label_dir
from wsss.pipeline.collapse import collapse_guard
from wsss.pipeline.context import MODEL_FILE, StageContext, save_model
from wsss.pipeline.image_sets import source
from wsss.pipeline.manifest import MODEL_KEYS
from wsss.pipeline.models import init_from

# What outside stages.train_seg shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS

def run(ctx: StageContext) -> dict:
    p = ctx.params
    labels = label_dir(ctx.read("labels"))
    datamodule = ctx.datamodule(
        mode="segmentation", train_split=p.split, label_dir=str(labels), batch_size=p.batch_size,
        crop_size=p.crop_size, scale_range=list(p.scale_range),
    )
    model = instantiate(p.module)
    init = init_from(ctx, model)  # optional role `init`: a classifier's backbone
    # The val mIoU monitor needs GT masks; without any on val, train without validation.
    no_val = {} if datamodule.has_val_masks() else {"limit_val_batches": 0}
    trainer = ctx.fit(model, trainer_kwargs={"max_epochs": p.max_epochs,
                                             "check_val_every_n_epoch": p.val_every_n_epochs, **no_val},
                      datamodule=datamodule)
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:  # predicted vs label foreground fraction (wsss.pipeline.collapse)
        metrics.update(collapse_guard(ctx, model, labels, source(ctx, p.split).ids))
    note = "val_miou here is a training-time monitor on full val; see eval_seg for reported numbers"
    if no_val:
        note = "no GT masks on val: trained without the val_miou monitor"
    return {"labels": str(labels), "epochs": p.max_epochs, "init_from": init, **metrics,
            "note": note}
