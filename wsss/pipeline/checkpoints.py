"""Fit stages that survive a kill: atomic ``last.ckpt`` (every epoch, every N steps), resume.

A killed fit (SIGKILL, SLURM time limit, preemption) leaves ``<stage>/checkpoints/last.ckpt``;
running the same run directory again (``hydra.run.dir=<dir>``) resumes from it: the global step
continues, and because the checkpoint also holds the torch / numpy / python RNG states, a run
resumed from an epoch-end checkpoint draws the same batches as an uninterrupted one.

Checkpoints are loaded with ``weights_only=True``: the module's hyper-parameters (which may hold
config objects) are left out of the file; every other entry Lightning writes (weights, optimiser
and scheduler states, loop counters, callback states) is tensors and plain containers.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class AtomicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``last.ckpt`` through a temp file + rename, so a kill during
    the write never leaves a truncated checkpoint to resume from."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(str(tmp), self.save_weights_only)  # rank 0 writes; ranks sync
        if trainer.is_global_zero and tmp.is_file():
            os.replace(tmp, path)
        trainer.strategy.barrier("AtomicCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if not self.save_last:
            return
        self.last_model_path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        self._save_checkpoint(trainer, self.last_model_path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint writes last.ckpt at an epoch end only after a top-k save; here there
        # are no top-k files, only last.ckpt.
        if self._every_n_epochs >= 1 and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RNGState(Callback):
    """Puts the torch / numpy / python RNG states into the checkpoint and restores them on resume
    (as plain tensors and lists, so the checkpoint stays loadable with ``weights_only=True``)."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {"torch": torch.get_rng_state(),
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "gauss": float(gauss)},
                 "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}  # fmt: skip
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # fmt: skip
        # Config objects in the hyper-parameters would need pickle to load; the module is rebuilt
        # from the stage config anyway.
        for key in ("hyper_parameters", "hparams_name", "datamodule_hyper_parameters", "hparams_type"):
            checkpoint.pop(key, None)


def resume_callbacks(ckpt_dir: Path, every_n_steps: int) -> list[Callback]:
    """``last.ckpt`` at every epoch end and (``every_n_steps`` > 0) every N optimiser steps."""
    common = {"dirpath": str(ckpt_dir), "save_top_k": 0, "save_last": True, "enable_version_counter": False,
              "save_on_train_epoch_end": True}
    callbacks: list[Callback] = [AtomicCheckpoint(every_n_epochs=1, **common)]
    if every_n_steps > 0:
        callbacks.append(AtomicCheckpoint(every_n_train_steps=every_n_steps, **common))
    return [*callbacks, RNGState()]


def under_submitit() -> bool:
    return any(key.startswith("SUBMITIT_") for key in os.environ)


def slurm_plugins() -> list[Any]:
    """Inside a SLURM job: Lightning's SLURM environment. It requeues the job itself on SIGUSR1
    (``#SBATCH --signal=SIGUSR1@90``) unless submitit launched it (submitit requeues on
    timeout/preemption, ``hydra.launcher.max_num_timeout``)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=not under_submitit())]


def fit_resuming(trainer: L.Trainer, model: L.LightningModule, last: Path, **fit_kwargs: Any) -> int | None:
    """``trainer.fit`` from ``last`` when it exists; returns the global step resumed from."""
    step = None
    if last.is_file():
        try:
            step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        except Exception as err:
            raise RuntimeError(f"cannot resume from {last}: {err}. Delete it to train from scratch.") from err
        log.info("resuming %s from %s (global step %d)", type(model).__name__, last, step)
    trainer.fit(model, ckpt_path=str(last) if step is not None else None,
                weights_only=True if step is not None else None, **fit_kwargs)  # fmt: skip
    return step
