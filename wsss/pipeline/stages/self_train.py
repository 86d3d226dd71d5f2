"""Stage `self_train`: iterative self-training of the segmentation network (MCOF-style rounds).

Round 0 trains ``module`` on the labels of role ``labels`` (any CAM method's pseudo-labels).
After each round the network predicts the training split; predictions are restricted to the
image's classes, optionally refined (dense CRF, confidence threshold, SLIC superpixel majority
vote) and become the labels of the next round. Everything of round k lives in ``round_<k>/``
(``labels/``, ``model.pt``, ``metrics.json``); the last round's weights are also ``model.pt`` of
the stage so ``eval_seg`` (``reads.model: self_train``) can evaluate them.

Per round the metrics show whether rounds help: ``pseudo_miou`` (labels trained on, eval split),
``pred_miou`` / ``refined_miou`` (this round's raw / refined predictions on the eval split,
i.e. the next round's labels), ``val_miou`` (single-scale, val minus the held-out subset) and
``holdout_miou`` (single-scale, the protocol's held-out images).

Rounds can make things worse (each round's errors become the next round's labels), so the stage's
``model.pt`` is the round chosen by ``select_round``: ``holdout`` (default) keeps the round with the
best mIoU on the held-out images, which are never reported, as eval_cam picks its threshold there;
``last`` keeps the last round (MCOF's loop as published).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from wsss.data.datasets import collate_single
from wsss.data.labels import IGNORE
from wsss.functional.crf import dense_crf
from wsss.functional.refine import (
    background_scale_for_fraction,
    confident_label,
    foreground_log_ratio,
    superpixel_refine,
)
from wsss.functional.segmentation import multiscale_probs
from wsss.io import load_label_png, read_json, save_label_png, write_json
from wsss.metrics.segmentation import SegmentationMetric
from wsss.pipeline.artifacts import label_dir
from wsss.pipeline.collapse import collapse_guard, label_foreground_fraction
from wsss.pipeline.context import MODEL_FILE, StageContext, load_model, save_model
from wsss.pipeline.image_sets import (
    eval_ids,
    images_of,
    no_gt_note,
    required_threshold_ids,
    source,
    stage_images,
    with_gt,
)
from wsss.pipeline.models import fit_on_labels, init_from
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

log = logging.getLogger(__name__)

# Changing these keeps the finished rounds of an earlier attempt in the same run dir (more rounds
# reuse rounds 0..k-1; see `resume`); any other change starts the stage afresh.
RESUME_IGNORES = ("rounds", "select_round")
SELECT_MODES = ("holdout", "last")


def refine_prediction(image: np.ndarray, probs: np.ndarray, values: np.ndarray, confidence: float,
                      crf: dict | None, superpixel: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image, (K, H, W) probs of the mask values ``values`` -> (raw, refined) labels.

    Order: dense CRF on the probabilities, confidence threshold (255 below), superpixel vote.
    """
    raw = values[probs.argmax(0)].astype(np.uint8)
    if crf is not None:
        probs = dense_crf(image, probs, **crf)
    compact = confident_label(torch.from_numpy(probs), confidence).numpy()
    refined = np.where(compact == IGNORE, IGNORE, values[np.minimum(compact, len(values) - 1)]).astype(np.uint8)
    if superpixel is not None:
        refined = superpixel_refine(image, refined, **superpixel)
    return raw, refined


class _Refiner:
    """Runs :func:`refine_prediction` serially or in a bounded-window process pool (CPU work)."""

    def __init__(self, workers: int, window: int = 16) -> None:
        self.pool: Executor | None = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.window = max(window, 2 * workers)
        self.pending: deque[tuple[str, Future | tuple]] = deque()

    def submit(self, name: str, *args) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
        self.pending.append((name, self.pool.submit(refine_prediction, *args) if self.pool else
                             refine_prediction(*args)))  # fmt: skip
        while len(self.pending) > (self.window if self.pool else 0):
            yield self._pop()

    def drain(self) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
        while self.pending:
            yield self._pop()

    def _pop(self) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
        name, result = self.pending.popleft()
        return name, result.result() if isinstance(result, Future) else result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _loader(ctx: StageContext, split: str) -> DataLoader:
    dataset = stage_images(ctx, [split], include_holdout=False)
    return DataLoader(dataset, batch_size=1, num_workers=int(ctx.cfg.data.module.num_workers),
                      collate_fn=collate_single)  # fmt: skip


def label_miou(ctx: StageContext, labels: Path, ids: list[str]) -> float | None:
    """mIoU of the label PNGs in ``labels`` over ``ids`` (255 counted as background, as elsewhere);
    ``ids`` must have GT masks; None when ``ids`` is empty (no GT to score against)."""
    if not ids:
        return None
    gt_src = source(ctx, ctx.cfg.protocol.eval_split, for_eval=True)
    metric = SegmentationMetric(ctx.cfg.data.num_classes + 1)
    for name in ids:
        label = torch.from_numpy(load_label_png(labels / f"{name}.png").astype(np.int64))
        metric.update(torch.where(label == IGNORE, 0, label), torch.from_numpy(gt_src.load_mask(name).astype(np.int64)))
    return float(metric.compute()["miou"])


@torch.no_grad()
def miou_on(ctx: StageContext, model: torch.nn.Module, split: str, ids: list[str]) -> float:
    """Single-scale mIoU of ``model`` on the images ``ids`` of ``split`` (all with GT masks)."""
    gt_src, dataset = source(ctx, split, for_eval=True), images_of(ctx, split, ids)
    metric, device = SegmentationMetric(ctx.cfg.data.num_classes + 1), ctx.device()
    for index in tqdm(range(len(dataset)), desc=f"self_train[{split}]", leave=False):
        item = dataset[index]
        pred = multiscale_probs(model, item["image"].unsqueeze(0).to(device)).argmax(0).cpu()
        metric.update(pred, torch.from_numpy(gt_src.load_mask(item["name"]).astype(np.int64)))
    return float(metric.compute()["miou"])


def val_miou(ctx: StageContext, model: torch.nn.Module, split: str) -> float | None:
    """Single-scale mIoU on ``split`` minus the held-out threshold images (eval_seg's ``miou``);
    only images with a GT mask count, None when there is none."""
    reported = with_gt(source(ctx, split, for_eval=True), eval_ids(ctx, split))
    return miou_on(ctx, model, split, reported) if reported else None


def held_out_ids(ctx: StageContext, mode: str) -> list[str]:
    """The held-out images that choose the round (empty for ``last``); fails before any training
    when ``holdout`` has nothing to choose on."""
    if mode not in SELECT_MODES:
        raise ValueError(f"stages.self_train.select_round must be one of {SELECT_MODES}, got {mode!r}")
    if mode == "last":
        return []
    return required_threshold_ids(ctx, "self_train: select_round=holdout",
                                  "stages.self_train.select_round=last to keep the last round")


def preflight(ctx: StageContext) -> None:
    """Before any stage trains: ``select_round`` is known and ``holdout`` has images to choose on."""
    held_out_ids(ctx, str(ctx.params.get("select_round", "last")))


@torch.no_grad()
def predict_labels(ctx: StageContext, model: torch.nn.Module, out_dir: Path, evaluated: set[str],
                   target_fg: float | None = None) -> dict:
    """Predict the training split, refine, write ``out_dir/<id>.png``; mIoU of raw and refined.

    With ``target_fg`` (``match_foreground``), the background probability is scaled so that the
    predictions label that foreground fraction of the split (the fraction of the labels this
    round trained on), before refinement, so the labels cannot shrink round after round.
    """
    p, device = ctx.params, ctx.device()
    crf = OmegaConf.to_container(p.crf_params, resolve=True) if p.crf else None
    sp = OmegaConf.to_container(p.superpixel_params, resolve=True) if p.superpixel else None
    gt_src = source(ctx, ctx.cfg.protocol.eval_split, for_eval=True)
    n = ctx.cfg.data.num_classes + 1
    metrics = {"pred": SegmentationMetric(n), "refined": SegmentationMetric(n)}
    ignored = [0, 0]
    refiner = _Refiner(int(p.num_workers))

    def consume(results: Iterator) -> None:
        for name, (raw, refined) in results:
            save_label_png(out_dir / f"{name}.png", refined)
            ignored[0] += int((refined == IGNORE).sum())
            ignored[1] += refined.size
            if name in evaluated:
                gt = torch.from_numpy(gt_src.load_mask(name).astype(np.int64))
                metrics["pred"].update(torch.from_numpy(raw.astype(np.int64)), gt)
                refined_t = torch.from_numpy(refined.astype(np.int64))
                metrics["refined"].update(torch.where(refined_t == IGNORE, 0, refined_t), gt)

    predicted = []
    for batch in tqdm(_loader(ctx, p.split), desc="self_train[predict]", leave=False):
        probs = multiscale_probs(model, batch["image"].to(device), p.scales, p.flip).cpu()
        values = np.arange(n)
        if p.restrict_to_labels:  # image labels are known on the training split
            values = np.concatenate([[0], np.flatnonzero(batch["labels"][0].numpy() > 0.5) + 1])
        sub = probs[torch.from_numpy(values)]
        predicted.append((batch["name"][0], batch["raw"][0].numpy(), sub / sub.sum(0, keepdim=True).clamp(min=1e-8), values))
    ratios = [foreground_log_ratio(sub) for _, _, sub, _ in predicted]
    raw_fg = float(sum(int((r > 0).sum()) for r in ratios) / max(sum(r.numel() for r in ratios), 1))
    scale = 1.0 if target_fg is None else background_scale_for_fraction(ratios, target_fg)
    try:
        for name, raw, sub, values in predicted:
            if scale != 1.0:
                sub = sub.clone()
                sub[0] *= scale
                sub = sub / sub.sum(0, keepdim=True).clamp(min=1e-8)
            consume(refiner.submit(name, raw, sub.numpy(), values, float(p.confidence), crf, sp))
        consume(refiner.drain())
    finally:
        refiner.close()
    scored = bool(evaluated)  # ids with GT masks (None scores without)
    return {"pred_miou": float(metrics["pred"].compute()["miou"]) if scored else None,
            "refined_miou": float(metrics["refined"].compute()["miou"]) if scored else None,
            "ignored_fraction": ignored[0] / max(ignored[1], 1),
            "pred_fg_fraction_train": raw_fg, "target_fg_fraction": target_fg, "background_scale": scale}


def train_round(ctx: StageContext, labels: Path, model: torch.nn.Module, round_dir: Path) -> torch.nn.Module:
    return fit_on_labels(ctx, model, labels, round_dir / "checkpoints")  # resumes mid-fit


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    if int(p.rounds) < 1:
        raise ValueError(f"self_train.rounds must be >= 1, got {p.rounds}")
    mode = str(p.get("select_round", "last"))
    held = held_out_ids(ctx, mode)
    labels = label_dir(ctx.read("labels"))
    split_ids = set(source(ctx, p.split).ids)
    reported = set(eval_ids(ctx, proto.eval_split)) & split_ids
    evaluated = set(with_gt(source(ctx, proto.eval_split, for_eval=True), reported))  # scored: with GT
    eval_list = sorted(evaluated)
    model, per_round = None, []
    for k in range(int(p.rounds)):
        round_dir = ctx.out_dir / f"round_{k}"
        done = round_dir / "metrics.json"
        if p.resume and done.is_file() and (round_dir / MODEL_FILE).is_file():
            log.info("self_train: reusing finished round %d", k)
            model = load_model(instantiate(p.module), round_dir / MODEL_FILE)
            metrics = read_json(done)
            if held and metrics.get("holdout_miou") is None:  # a round finished before selection existed
                metrics["holdout_miou"] = miou_on(ctx, model.eval().to(ctx.device()), ctx.cfg.protocol.holdout_split, held)
                write_json(done, metrics)
                model.cpu()
            per_round.append(metrics)
            labels = round_dir / "labels"
            continue
        metrics: dict = {"round": k, "train_labels": str(labels),
                         "pseudo_miou": label_miou(ctx, labels, eval_list)}  # fmt: skip
        if model is None or p.reinit:
            model = instantiate(p.module)
            init_from(ctx, model)  # optional role `init`: a classifier's backbone (no ImageNet offline)
        model = train_round(ctx, labels, model.train(), round_dir)
        save_model(model, round_dir / MODEL_FILE)
        model.eval().to(ctx.device())
        metrics["val_miou"] = val_miou(ctx, model, ctx.cfg.data.module.val_split)
        metrics["holdout_miou"] = miou_on(ctx, model, ctx.cfg.protocol.holdout_split, held) if held else None
        metrics.update(collapse_guard(ctx, model, labels, split_ids, tag=f"round {k}"))
        if k + 1 < int(p.rounds) or p.predict_last:
            target = label_foreground_fraction(labels, split_ids) if p.get("match_foreground", False) else None
            metrics.update(predict_labels(ctx, model, round_dir / "labels", evaluated, target))
            labels = round_dir / "labels"
        write_json(done, metrics)
        per_round.append(metrics)
        ctx.log_metrics({key: v for key, v in metrics.items() if key.endswith("miou") and v is not None}, step=k)
        log.info("self_train round %d: %s", k, {key: v for key, v in metrics.items() if key.endswith("miou")})
        model.cpu()
    if mode == "holdout":  # the earliest round with the best held-out mIoU
        selected = int(np.argmax([m["holdout_miou"] for m in per_round]))
    else:
        selected = len(per_round) - 1
    if selected != len(per_round) - 1:
        model = load_model(instantiate(p.module), ctx.out_dir / f"round_{selected}" / MODEL_FILE)
        log.info("self_train: keeping round %d (held-out mIoU %.4f; last round %.4f)", selected,
                 per_round[selected]["holdout_miou"], per_round[-1]["holdout_miou"])  # fmt: skip
    save_model(model, ctx.out_dir / MODEL_FILE)

    out: dict = {"rounds": int(p.rounds), "labels_from": ctx.read_stage("labels"), "split": p.split,
                 "eval_split": proto.eval_split, "round_metrics": per_round,
                 "refinement": f"crf={bool(p.crf)}, confidence={float(p.confidence)}, "
                               f"superpixel={bool(p.superpixel)}, restrict_to_labels={bool(p.restrict_to_labels)}"}
    for m in per_round:
        for key in ("pseudo_miou", "pred_miou", "refined_miou", "val_miou", "holdout_miou"):
            if key in m:
                out[f"{key}_round_{m['round']}"] = m[key]
    out["select_round"], out["selected_round"] = mode, selected
    out["val_miou"] = per_round[selected]["val_miou"]
    if per_round[-1]["val_miou"] is None:  # no GT masks on val: nothing to compare rounds with
        out["val_miou_gain"], out["best_round"] = None, None
    else:
        out["val_miou_gain"] = per_round[-1]["val_miou"] - per_round[0]["val_miou"]
        # In hindsight on the reported images: a diagnostic, never used to choose.
        out["best_round"] = int(np.argmax([m["val_miou"] for m in per_round]))
    out["note"] = ("val_miou: single-scale monitor of the selected round; eval_seg (reads.model: self_train) "
                   f"reports the selected round's model (select_round={mode})")
    if not evaluated:
        out["note"] += "; " + no_gt_note(proto.eval_split, len(reported))
    return out
