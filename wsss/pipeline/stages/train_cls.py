"""Stage `train_cls`: fit the classifier method on image-level labels.

The network is the stage's ``module`` node when it has one (a second classifier in a pipeline,
e.g. ``train_eps`` in pipeline=eps_cam_saliency), else ``cfg.method``. A method that trains on
saliency maps (EPS) reads them from the saliency stage declared as ``reads.saliency`` (e.g.
``make_cam_saliency``), else from ``data.module.saliency_dir`` (the method's default).
"""

from __future__ import annotations

from hydra.utils import instantiate

from wsss.pipeline.context import MODEL_FILE, StageContext, save_model
from wsss.pipeline.manifest import MODEL_KEYS
from wsss.pipeline.official import load_release
from wsss.pipeline.saliency_maps import stage_saliency_dir

# What outside stages.train_cls shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS


def saliency_overrides(ctx: StageContext, extra: dict) -> dict:
    """The method's data-module settings with ``saliency_dir`` taken from the ``reads.saliency``
    stage when one is declared (an error when the method reads no saliency)."""
    stage_dir = ctx.read_optional("saliency")
    if stage_dir is None:
        return extra
    if "saliency_dir" not in extra:
        raise ValueError(f"stages.{ctx.name}.reads.saliency={ctx.read_stage('saliency')} but the "
                         f"classifier of stage {ctx.name!r} trains on no saliency maps (only EPS does); "
                         f"remove stages.{ctx.name}.reads.saliency")
    return {**extra, "saliency_dir": str(stage_saliency_dir(stage_dir))}


def run(ctx: StageContext) -> dict[str, float]:
    p = ctx.params
    model = instantiate(p.get("module") or ctx.cfg.method)
    released = load_release(ctx, model)  # from_checkpoint: the authors' weights, no training
    if released is not None:
        return released
    # A method may need extra inputs from the data (EPS: saliency maps); it says which.
    extra = saliency_overrides(ctx, getattr(model, "datamodule_overrides", dict)())
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
    out = {"epochs": p.max_epochs, "steps": int(trainer.global_step), "split": p.split, **metrics}
    if "saliency_dir" in extra:
        out["saliency_maps"] = str(extra["saliency_dir"])  # what the classifier trained on
    return out
