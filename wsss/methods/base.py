"""Shared optimisation for every method: new-layer LR multiplier and a per-step poly schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import nn


def poly_lambda(total_steps: int, power: float) -> Callable[[int], float]:
    """lr_t = lr_0 * (1 - t/T)^power, updated every optimiser step (the WSSS convention)."""
    total = max(int(total_steps), 1)
    return lambda step: max(1.0 - min(step, total) / total, 0.0) ** power


class SegmentationValidation:
    """Mixin: full-image validation mIoU for modules whose ``forward`` returns (B, C+1, H, W)
    logits and which own ``self.val_metric`` (a SegmentationMetric).

    Batches without a GT ``mask`` are skipped; an epoch that scored nothing logs no ``val/miou``
    (the stages turn validation off when the val split has no GT masks)."""

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if "mask" not in batch:
            return
        logits = self(batch["image"])
        for pred, gt in zip(logits.argmax(1), batch["mask"]):
            self.val_metric.update(pred.cpu(), gt.cpu())
        self._val_scored = True

    def on_validation_epoch_end(self) -> None:
        if getattr(self, "_val_scored", False):
            result = self.val_metric.compute()
            self.log("val/miou", float(result["miou"]))
        self.val_metric.reset()
        self._val_scored = False


class WSSSModule(L.LightningModule):
    """Base LightningModule: subclasses say which parameters are pretrained and which are new.

    ``optimizer`` is a partial (Hydra ``_partial_: true``) taking ``params``; new layers get
    ``new_lr_mult`` times its learning rate (10x in PSA/IRN/SEAM/EPS/OAA).
    """

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer], new_lr_mult: float,
                 poly_power: float) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.new_lr_mult = new_lr_mult
        self.poly_power = poly_power

    def pretrained_parameters(self) -> Iterable[nn.Parameter]:
        raise NotImplementedError

    def new_parameters(self) -> Iterable[nn.Parameter]:
        raise NotImplementedError

    def param_groups(self) -> list[tuple[Iterable[nn.Parameter], float]]:
        """(parameters, LR multiplier) pairs; override for other splits (IRNet: two branches)."""
        return [(self.pretrained_parameters(), 1.0), (self.new_parameters(), self.new_lr_mult)]

    def configure_optimizers(self):
        groups = []
        for params, mult in self.param_groups():
            params = [p for p in params if p.requires_grad]
            if params:
                groups.append({"params": params, "lr_mult": mult})
        optimizer = self.optimizer_factory(params=groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group["lr_mult"]
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, self.lr_lambda(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_lambda(self, total_steps: int):
        """Step -> LR factor of the per-step schedule (poly); override for another (ToCo: warmup)."""
        return poly_lambda(total_steps, self.poly_power)
