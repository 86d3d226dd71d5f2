"""Stage `make_cam`: multi-scale + flip CAMs of the trained classifier, one .npz per image.

The network is the fit stage read as ``model`` (``train_cls``: ``cfg.method``; any other fit
stage: its ``module`` node, e.g. OAA+'s ``train_iam``). Covers the pseudo-label split, the evaluated split and the held-out threshold subset, each
image once (files an interrupted attempt completed are kept). CAMs are ReLU'd, restricted to the image's classes and max-normalised per class.
``resize``/``upsample`` (conf/stage/make_cam.yaml; :class:`~wsss.pipeline.cam_inference.CAMInference`)
reproduce PSA's and IRN's per-scale image preparation and CAM sizes exactly.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Subset

from wsss.data.datasets import collate_single
from wsss.pipeline.cam_inference import CAMInference, CAMWriter
from wsss.pipeline.context import StageContext, barrier
from wsss.pipeline.image_sets import stage_images
from wsss.pipeline.manifest import HOLDOUT_KEYS, MODEL_KEYS
from wsss.pipeline.models import load_stage_model
from wsss.pipeline.per_image import pending, valid_npz

# What outside stages.make_cam shapes its output (its manifest): the network, the data and which
# images the held-out subset holds; not how thresholds are chosen.
GLOBAL_KEYS = (*MODEL_KEYS, *HOLDOUT_KEYS)

def run(ctx: StageContext) -> dict:
    p = ctx.params
    classifier = load_stage_model(ctx, "model", to_device=False)  # the Trainer places it
    dataset = stage_images(ctx, list(p.splits), include_holdout=True)
    cam_dir = ctx.out_dir / "cams"
    # An interrupted attempt's complete CAM files are kept; only the rest is predicted.
    todo = set(pending(dataset.source.ids, lambda i: cam_dir / f"{i}.npz",
                       lambda path: valid_npz(path, ("keys", "cams"))))
    barrier()  # every rank has listed the work before any rank writes
    subset = Subset(dataset, [k for k, i in enumerate(dataset.source.ids) if i in todo])
    if len(subset):
        loader = DataLoader(subset, batch_size=1, num_workers=ctx.cfg.data.module.num_workers,
                            collate_fn=collate_single)
        trainer = ctx.trainer(callbacks=[CAMWriter(cam_dir)], logger=False)
        data = ctx.cfg.data.module
        inference = CAMInference(classifier, p.scales, p.flip, resize=p.get("resize", "tensor"),
                                 upsample=p.get("upsample", "image"), normalize=p.get("normalize", "max"),
                                 mean=list(data.mean), std=list(data.std))  # fmt: skip
        trainer.predict(inference, loader, return_predictions=False)
    model = ctx.read_stage("model")
    resize, upsample = p.get("resize", "tensor"), p.get("upsample", "image")
    normalize = p.get("normalize", "max")
    includes = (f"CAMs of the {model} model at scales {list(p.scales)}"
                + (" + flip" if p.flip else " (no flip)")
                + (", PIL-bicubic rescaled inputs" if resize == "pil_bicubic" else "")
                + (", IRN's stride-4 and high-res CAM sizes" if upsample == "irn" else "")
                + (", SEAM's min-max normalisation" if normalize == "minmax" else "") + ", no CRF")
    return {"num_images": len(dataset), "num_predicted": len(subset),
            "num_resumed": len(dataset) - len(subset), "scales": list(p.scales), "flip": bool(p.flip),
            "resize": resize, "upsample": upsample, "normalize": normalize,
            "splits": list(p.splits), "cam_dir": "cams", "model": model, "includes": includes}
