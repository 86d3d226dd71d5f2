"""Stage `make_cues`: SEC localisation cues (CAM foreground + low-saliency background) per image.

For every image of ``split`` the max-normalised CAMs of ``make_cam`` are brought to the cue grid
(SEC: 41 x 41, the output of its stride-8 network on a 321 x 321 warp) by area averaging, and
:func:`wsss.functional.sec.localization_cues` applies SEC's rules: a class claims pixels above
``fg_fraction`` x its max (null: the threshold ``eval_cam`` chose), the ``bg_fraction`` least salient pixels are background, and a pixel
claimed by background and foreground gets no cue. Saliency is either the gradient saliency of
the ``train_cls`` classifier on the warped image (SEC's background network) or a saliency PNG
per image (``<root>/<saliency_dir>/<id>.png``; the synthetic generator writes ``SALImages``), or
the maps of a saliency stage read as ``saliency`` (``make_cam_saliency``: no saliency model).

Writes ``cues/<id>.png`` (grid-sized label map, 0 background, c + 1 class c, 255 no cue) and
reports cue coverage and precision against GT (on the grid, nearest-resized) for the images of
``protocol.eval_split`` that have GT (``null`` when none has; ``coverage_split`` and
``fg_coverage_split``, the cue / foreground-cue share of all pixels of ``split``, need no GT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wsss.data.sources import Source
from wsss.functional.sec import (
    cue_statistics,
    cues_to_label_map,
    gradient_saliency,
    localization_cues,
)
from wsss.io import load_grey, load_npz, save_label_png
from wsss.pipeline.artifacts import cam_dir_of
from wsss.pipeline.context import StageContext, read_metrics
from wsss.pipeline.image_sets import cam_file, eval_ids, no_gt_note, source
from wsss.pipeline.models import load_stage_model
from wsss.pipeline.per_image import reduce_sum, shard
from wsss.pipeline.saliency_maps import read_saliency
from wsss.progress import tqdm  # plain lines instead of bar frames when not a TTY

SALIENCY_MODES = ("gradient", "png")
CUE_DIR = "cues"


def _area(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> (C, h, w) by area averaging (the grid cell's mean)."""
    return F.interpolate(x[None].float(), size=size, mode="area")[0] if x.shape[0] else x.new_zeros(0, *size)


class _CueInputs(Dataset):
    """Per image: CAMs on the grid, keys, and the saliency on the grid or the warped image."""

    def __init__(self, ids: list[str], src: Source, cam_dir: Path, grid: int, mode: str,
                 saliency_dir: Path | None, input_size: int, mean, std) -> None:  # fmt: skip
        self.ids, self.src, self.cam_dir, self.grid, self.mode = ids, src, cam_dir, (grid, grid), mode
        self.saliency_dir, self.input_size = saliency_dir, input_size
        self.mean = torch.tensor(list(mean)).view(3, 1, 1)
        self.std = torch.tensor(list(std)).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        name = self.ids[index]
        arrays = load_npz(cam_file(self.cam_dir, name))
        for key in ("cams", "keys"):
            if key not in arrays:
                raise KeyError(f"{cam_file(self.cam_dir, name)} has no array {key!r} (keys: {sorted(arrays)})")
        cams = torch.from_numpy(arrays["cams"])
        out = {"name": name, "keys": torch.from_numpy(arrays["keys"]).long(), "cams": _area(cams, self.grid)}
        if self.mode == "png":
            grey = load_grey(self.saliency_dir / f"{name}.png", "saliency map (make_cues.saliency=png)")
            sal = torch.from_numpy(grey.astype(np.float32) / 255.0)
            out["saliency"] = _area(sal[None], self.grid)[0]
        else:  # the classifier sees the image warped to the SEC input size, as in SEC's notebook
            rgb = torch.from_numpy(self.src.load_image(name)).permute(2, 0, 1).float().div(255.0)
            size = (self.input_size, self.input_size)
            warped = F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False)[0]
            out["image"] = (warped - self.mean) / self.std
        return out


def _kind_stats(cues: torch.Tensor, gt: torch.Tensor, keep_bg: bool) -> dict:
    part = cues.clone()
    if keep_bg:
        part[1:] = 0
    else:
        part[0] = 0
    return cue_statistics(part, gt)


def run(ctx: StageContext) -> dict:
    p, proto = ctx.params, ctx.cfg.protocol
    if p.saliency not in SALIENCY_MODES:
        raise ValueError(f"make_cues.saliency must be one of {SALIENCY_MODES}, got {p.saliency!r}")
    make_cam = ctx.read("cams")
    cam_dir = cam_dir_of(make_cam)
    # null = the CAM threshold eval_cam chose on the held-out subset (weak CAMs are diffuse)
    fg_fraction = (float(p.fg_fraction) if p.fg_fraction is not None
                   else read_metrics(ctx.read("threshold"))["threshold"])
    src = source(ctx, p.split)
    # reads.saliency (a saliency stage), else data.module.saliency_dir, else the stage's own default
    sal_dir = (read_saliency(ctx, src.root, p.saliency_dir,
                             key="data.module.saliency_dir, else stages.make_cues.saliency_dir, or "
                                 "stages.make_cues.reads.saliency=make_cam_saliency; use "
                                 "make_cues.saliency=gradient when the dataset has no saliency maps")
               if p.saliency == "png" else None)
    data = ctx.cfg.data.module
    # Under DDP (all_ranks) every rank makes its share of the cue maps; the counts are summed.
    job = _CueInputs(shard(src.ids), src, cam_dir, int(p.grid_size), p.saliency, sal_dir, int(p.input_size),
                     data.mean, data.std)  # fmt: skip
    classifier, device = None, ctx.device()
    if p.saliency == "gradient":
        classifier = load_stage_model(ctx, "model")

    evaluated = set(eval_ids(ctx, proto.eval_split))
    gt_src = source(ctx, proto.eval_split, for_eval=True)
    n_fg = int(ctx.cfg.data.num_classes)
    totals = {kind: np.zeros(4, dtype=np.int64) for kind in ("all", "bg", "fg")}
    count_keys = ("pixels", "cue_pixels", "valid_cue_pixels", "correct_cue_pixels")
    covered = np.zeros(3, dtype=np.int64)  # cue pixels, foreground cue pixels, pixels over the split
    n_evaluated = 0
    loader = DataLoader(job, batch_size=None, num_workers=int(p.num_workers))
    for item in tqdm(loader, total=len(job), desc="make_cues"):
        name = item["name"]
        if classifier is not None:
            sal = gradient_saliency(classifier, item["image"][None].to(device)).cpu()
            saliency = _area(sal[None], job.grid)[0]
        else:
            saliency = item["saliency"]
        cues = localization_cues(item["cams"], item["keys"], saliency, fg_fraction,
                                 float(p.bg_fraction), n_fg)  # fmt: skip
        save_label_png(ctx.out_dir / CUE_DIR / f"{name}.png", cues_to_label_map(cues).numpy())
        covered += (int(cues.amax(0).sum()), int(cues[1:].amax(0).sum()), cues[0].numel())
        if name in evaluated and gt_src.has_mask(name):
            gt = torch.from_numpy(gt_src.load_mask(name).astype(np.int64))[None, None].float()
            gt = F.interpolate(gt, size=job.grid, mode="nearest")[0, 0].long()
            n_evaluated += 1
            for kind, stats in (("all", cue_statistics(cues, gt)), ("bg", _kind_stats(cues, gt, True)),
                                ("fg", _kind_stats(cues, gt, False))):  # fmt: skip
                totals[kind] += [stats[k] for k in count_keys]

    summed = [int(v) for v in reduce_sum([*totals["all"], *totals["bg"], *totals["fg"], *covered, n_evaluated])]
    totals = {kind: np.asarray(summed[4 * k : 4 * k + 4], np.int64) for k, kind in enumerate(("all", "bg", "fg"))}
    covered, n_evaluated = np.asarray(summed[12:15], np.int64), summed[15]

    def ratio(a: int, b: int) -> float:
        return float(a) / b if b else float("nan")

    out: dict = {"split": p.split, "num_images": len(src.ids), "grid_size": int(p.grid_size),
                 "saliency": p.saliency, "fg_fraction": fg_fraction,
                 "bg_fraction": float(p.bg_fraction), "cue_dir": CUE_DIR,
                 "eval_split": proto.eval_split, "num_evaluated": n_evaluated,
                 "coverage_split": ratio(covered[0], covered[2]),
                 "fg_coverage_split": ratio(covered[1], covered[2])}  # fmt: skip
    for kind, prefix in (("all", "cue"), ("bg", "cue_bg"), ("fg", "cue_fg")):
        pixels, cue_pixels, valid, correct = (int(v) for v in totals[kind])
        # Without a GT mask on any evaluated image nothing is scored: null, not NaN.
        out[f"{prefix}_coverage"] = ratio(cue_pixels, pixels) if n_evaluated else None
        out[f"{prefix}_precision"] = ratio(correct, valid) if n_evaluated else None
    out["includes"] = (f"{read_metrics(make_cam).get('includes', 'CAMs')}; SEC cues ({p.saliency} saliency), "
                       f"coverage/precision on the {int(p.grid_size)}x{int(p.grid_size)} grid")
    if not n_evaluated:
        out["note"] = no_gt_note(proto.eval_split, len(evaluated & set(src.ids)))
    ctx.log_metrics({k: v for k, v in out.items() if k.startswith("cue_") and isinstance(v, float)})
    return out
