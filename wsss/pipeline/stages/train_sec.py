"""Stage `train_sec`: fit the SEC segmenter (seed + expand + constrain) on the cues of `make_cues`.

The SEC network is also the final segmenter (SEC has no pseudo-label stage): evaluate it with
``eval_seg`` and ``reads.model: train_sec``.
"""

from __future__ import annotations

from hydra.utils import instantiate
from torch.utils.data import DataLoader

from wsss.data.cues import CueDataset
from wsss.pipeline.artifacts import cue_dir_of
from wsss.pipeline.collapse import collapse_guard
from wsss.pipeline.context import MODEL_FILE, StageContext, read_metrics, save_model
from wsss.pipeline.image_sets import source
from wsss.pipeline.manifest import MODEL_KEYS
from wsss.pipeline.models import init_from
from wsss.pipeline.official import load_release

# What outside stages.train_sec shapes its output (its manifest; not the evaluation protocol).
GLOBAL_KEYS = MODEL_KEYS

def run(ctx: StageContext) -> dict:
    p = ctx.params
    released = load_release(ctx, instantiate(p.module))  # from_checkpoint: no training
    if released is not None:
        return released
    cues_stage = ctx.read("cues")
    data = ctx.cfg.data.module
    dataset = CueDataset(source(ctx, p.split), cue_dir_of(cues_stage), int(p.input_size), data.mean,
                         data.std, resize=p.resize, scale_range=list(p.scale_range),
                         hflip_prob=float(p.hflip_prob))  # fmt: skip
    grid = read_metrics(cues_stage).get("grid_size")
    workers = int(p.num_workers)
    loader = DataLoader(dataset, batch_size=int(p.batch_size), shuffle=True, drop_last=len(dataset) > p.batch_size,
                        num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
    model = instantiate(p.module)
    init = init_from(ctx, model)  # optional role `init`: a classifier's backbone (no ImageNet offline)
    val = None
    if p.val_every_n_epochs:
        val_data = ctx.datamodule(mode="segmentation")
        if val_data.has_val_masks():  # the val mIoU monitor needs GT masks
            val = val_data.val_dataloader()
    trainer_kwargs = {"max_epochs": int(p.max_epochs), "check_val_every_n_epoch": int(p.val_every_n_epochs or 1),
                      "limit_val_batches": 1.0 if val is not None else 0}  # fmt: skip
    try:
        trainer = ctx.fit(model, trainer_kwargs=trainer_kwargs, train_dataloaders=loader, val_dataloaders=val)
    finally:
        model.close_pool()  # also done in teardown; here for an interrupted fit
    if trainer.is_global_zero:
        save_model(model, ctx.out_dir / MODEL_FILE)
    metrics = {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:  # labels = the cue maps: sparse, foreground fraction of all pixels
        metrics.update(collapse_guard(ctx, model, cue_dir_of(cues_stage), source(ctx, p.split).ids,
                                      sparse_labels=True))
    note = "train_* are last-step SEC losses; see eval_seg for reported numbers"
    if p.val_every_n_epochs and val is None:
        note += "; no GT masks on val: trained without the val_miou monitor"
    return {"split": p.split, "cues": str(cue_dir_of(cues_stage)), "epochs": int(p.max_epochs),
            "steps": int(trainer.global_step), "input_size": int(p.input_size), "grid_size": grid,
            "init_from": init,
            **metrics, "note": note}
