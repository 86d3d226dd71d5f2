"""Stage `train_toco`: fit ToCo (single-stage ViT WSSS) on image-level labels for ``max_steps`` steps.

The module (``module``: :class:`wsss.methods.toco.ToCoModule`) is saved as ``model.pt``; its
segmentation head is scored by ``eval_seg`` with ``reads: {model: train_toco}`` (stage ``eval_toco``),
and its CAMs can feed the usual pseudo-label chain (``pipeline=toco_deeplab``).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import OmegaConf

from wsss.pipeline.context import MODEL_FILE, StageContext, save_model
from wsss.pipeline.manifest import MODEL_KEYS

# What outside stages.train_toco shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS


def run(ctx: StageContext) -> dict:
    p = ctx.params
    model = instantiate(p.module)
    jitter = OmegaConf.to_container(p.color_jitter, resolve=True) if p.get("color_jitter") else None
    datamodule = ctx.datamodule(
        mode="classification", train_split=p.split, batch_size=p.batch_size, crop_size=p.crop_size,
        scale_range=list(p.scale_range), color_jitter=jitter,
    )
    trainer = ctx.fit(model, trainer_kwargs={"max_steps": p.max_steps, "max_epochs": -1,
                                             "check_val_every_n_epoch": p.val_every_n_epochs,
                                             **(p.get("trainer") or {})},
                      datamodule=datamodule)
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    return {"steps": int(trainer.global_step), "split": p.split, **metrics,
            "note": "eval_toco (eval_seg of this model) reports the segmentation head"}
