"""CAM seeds of IRN's walks, shared by make_sem_seg_labels and make_ins_seg_labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss.pipeline.context import StageContext, read_metrics

STRIDE = 4  # IRNet's output stride


def stride4_cams(cams: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Full-resolution ``(K, H, W)`` CAMs on the ``grid`` (area resize), max-normalised per class."""
    if cams.shape[0] == 0:
        return cams.new_zeros((0, *grid))
    small = F.interpolate(cams[None].float(), size=grid, mode="area")[0]
    return small / (small.amax(dim=(-2, -1), keepdim=True) + 1e-5)


def walk_seeds(cams: torch.Tensor, strided: torch.Tensor | None, floor: float | None,
               grid: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """The walk's stride-4 seeds: make_cam's own stride-4 CAMs (``upsample=irn``, IRN's ``cam``)
    when stored and on the ``grid``, else the full-resolution ``cams`` area-resized to it."""
    if strided is not None and tuple(strided.shape[-2:]) == tuple(grid) and len(strided) == len(cams):
        return floored(strided.float(), floor)
    return stride4_cams(floored(cams, floor), grid)


def seed_floor(ctx: StageContext, floor: float | str | None) -> float | None:
    """``None``, a number, or ``"eval_cam"``: the background threshold of the stage read as
    ``threshold`` (eval_cam's held-out choice)."""
    if floor == "eval_cam":
        return float(read_metrics(ctx.read("threshold"))["threshold"])
    return None if floor is None else float(floor)


def floored(cams: torch.Tensor, floor: float | None) -> torch.Tensor:
    """``relu(cams - floor) / (1 - floor)``: drops the flat CAM floor below ``floor`` (synthetic)."""
    return cams if floor is None else (cams - floor).clamp_min(0) / max(1.0 - floor, 1e-5)
