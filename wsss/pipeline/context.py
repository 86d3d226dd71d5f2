"""What a stage gets from the runner: its config, its output dir, its inputs' dirs (by role),
its device, and Trainers that checkpoint and resume."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from wsss import perf, progress
from wsss.io import load_weights, read_json, write_json

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # the stage's scores; the runner writes it just before the manifest
MANIFEST_FILE = "manifest.json"  # written last by the runner: its presence marks a finished stage
MODEL_FILE = "model.pt"
CKPT_DIR = "checkpoints"  # Lightning last.ckpt of a fit stage in progress (resume after a kill)
LAST_CKPT = "last.ckpt"
# Per run: {stage: absolute dir} of the stages it reused from pipeline.from_run, so that a later
# run pointing its from_run here finds them too (from_run chains are transitive).
REUSED_FILE = "reused.json"


@dataclass
class StageContext:
    """Everything a stage may use. Stages never build paths to other stages by hand."""

    cfg: DictConfig
    name: str
    run_dir: Path
    loggers: list[Logger] = field(default_factory=list)
    # Opened dataset readers, shared by the runner across the stages of one run: parsing a large
    # annotation file (COCO train2014: ~0.5 GB of JSON) once per run, not once per call.
    sources: dict[tuple, Any] = field(default_factory=dict)
    # {role: (stage, dir)} of every input read so far (ctx.read); the manifest records them.
    used_inputs: dict[str, tuple[str, Path]] = field(default_factory=dict)
    # Fit checkpoints this stage resumed from ({checkpoint, global_step}); the manifest records them.
    resumed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def params(self) -> DictConfig:
        return self.cfg.stages[self.name]

    @property
    def out_dir(self) -> Path:
        path = self.run_dir / "stages" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def input(self, stage: str) -> Path:
        """Directory of a finished earlier stage (runner use; stages call :meth:`read`).

        Resolution order: ``pipeline.inputs.<stage>`` (any directory the user names), then
        this run, then ``pipeline.from_run``/stages/<stage> (an earlier run), so a stage rerun
        here always shadows the earlier run's copy.
        """
        found = locate_stage(self.cfg, self.run_dir, stage)
        if found is not None:
            return found
        candidates = input_candidates(self.cfg, self.run_dir, stage)
        raise FileNotFoundError(
            f"stage {self.name!r} needs the output of stage {stage!r}, but none of "
            f"{[str(p) for p in candidates]} holds a finished stage (no {MANIFEST_FILE}). Run "
            f"{stage!r} first, or point +pipeline.inputs.{stage}=DIR / pipeline.from_run=RUN_DIR at one."
        )

    @property
    def reads(self) -> dict[str, str | None]:
        """``{role: stage name}`` as declared under ``stages.<name>.reads`` (null = not read)."""
        return {str(k): (None if v is None else str(v)) for k, v in (self.params.get("reads") or {}).items()}

    def read_stage(self, role: str) -> str:
        """The name of the stage declared under ``reads.<role>``."""
        reads = self.reads
        if role not in reads:
            raise KeyError(f"stage {self.name!r} reads role {role!r}, but stages.{self.name}.reads "
                           f"declares only {sorted(reads)}; add stages.{self.name}.reads.{role}=STAGE")
        if reads[role] is None:
            raise KeyError(f"stages.{self.name}.reads.{role} is null; name the stage to read from")
        return reads[role]

    def read(self, role: str) -> Path:
        """Directory of the finished stage this stage declares under ``reads.<role>``.

        Stage configs name their inputs by role (``reads: {cams: make_cam, threshold: eval_cam}``);
        the runner, not the stage, decides where that stage's output lives (see :meth:`input`).
        Every role read is recorded (its manifest goes into this stage's manifest).
        """
        stage = self.read_stage(role)
        path = self.input(stage)
        self.used_inputs[role] = (stage, path)
        return path

    def read_config(self, role: str) -> DictConfig:
        """The config node of the stage read under ``role`` (e.g. its ``module`` to rebuild a model)."""
        stage = self.read_stage(role)
        if stage not in self.cfg.stages:
            raise KeyError(f"stages.{self.name}.reads.{role}={stage!r}, but cfg.stages has no such stage")
        return self.cfg.stages[stage]

    def device(self) -> torch.device:
        """The one place a stage's device is chosen (see :func:`inference_device`)."""
        return inference_device(self.cfg)

    def read_optional(self, role: str) -> Path | None:
        """Like :meth:`read`, but ``None`` when the role is absent or null (an optional input)."""
        reads = self.params.get("reads") or {}
        return None if reads.get(role) is None else self.read(role)

    def data_root(self) -> Path:
        return resolve_data_root(self.cfg)

    def datamodule(self, **overrides: Any) -> L.LightningDataModule:
        """Instantiate ``cfg.data`` with the resolved root and stage-specific overrides."""
        return instantiate(self.cfg.data.module, root=str(self.data_root()), **overrides)

    def trainer(self, checkpoint_dir: Path | None = None, **overrides: Any) -> L.Trainer:
        """A Trainer from ``cfg.trainer`` that logs to this stage.

        With ``checkpoint_dir`` (fit stages; see :meth:`fit`) it writes ``<dir>/last.ckpt`` at
        every epoch end and every ``checkpoint_every_n_steps`` optimiser steps (stage key, else
        ``pipeline.checkpoint_every_n_steps``; 0 = epoch ends only), atomically, with the RNG
        states so that a resumed run draws the same batches. Without it: no checkpoints."""
        kwargs = OmegaConf.to_container(self.cfg.trainer, resolve=True)
        kwargs.update(overrides)
        kwargs.setdefault("logger", self.loggers or False)
        if checkpoint_dir is None:
            kwargs.setdefault("enable_checkpointing", False)
        else:
            from wsss.pipeline.checkpoints import resume_callbacks, slurm_plugins

            every = self.params.get("checkpoint_every_n_steps",
                                    self.cfg.pipeline.get("checkpoint_every_n_steps", 0))
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []),
                                   *resume_callbacks(Path(checkpoint_dir), int(every or 0))]
            kwargs["enable_checkpointing"] = True
            plugins = slurm_plugins()
            if plugins:
                kwargs["plugins"] = [*(kwargs.get("plugins") or []), *plugins]
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *perf.callbacks()]
        kwargs = progress.trainer_kwargs(kwargs)  # no progress-bar frames when stdout is not a TTY
        return L.Trainer(default_root_dir=str(self.out_dir), **kwargs)

    def fit(self, model: L.LightningModule, checkpoint_dir: Path | None = None,
            trainer_kwargs: Mapping[str, Any] | None = None, **fit_kwargs: Any) -> L.Trainer:
        """Fit ``model`` with a checkpointing Trainer; resume from ``<checkpoint_dir>/last.ckpt``
        (default ``<stage dir>/checkpoints``) when a killed run left one. Returns the Trainer;
        ``self.resumed`` records the step resumed from."""
        from wsss.pipeline.checkpoints import fit_resuming

        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else self.out_dir / CKPT_DIR
        trainer = self.trainer(checkpoint_dir=ckpt_dir, **dict(trainer_kwargs or {}))
        step = fit_resuming(trainer, model, ckpt_dir / LAST_CKPT, **fit_kwargs)
        if step is not None:
            self.resumed.append({"checkpoint": str(ckpt_dir / LAST_CKPT), "global_step": step})
        return trainer

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        prefixed = {f"{self.name}/{k}": float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(prefixed, step=step)


def rank() -> int:
    """Global rank (0 without DDP); Lightning sets it from the launcher's environment."""
    return int(L.fabric.utilities.rank_zero.rank_zero_only.rank)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every DDP rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def inference_device(cfg: DictConfig) -> torch.device:
    """CUDA when there is a GPU and ``trainer.accelerator`` is not ``cpu``, else CPU (under DDP:
    this rank's GPU, which Lightning made the current one)."""
    use_gpu = torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "auto")) != "cpu"
    return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")


def save_model(module: torch.nn.Module, path: Path) -> None:
    """State dict only, loadable with ``weights_only=True`` (no pickled objects)."""
    from wsss.io import atomic_path

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)


def load_model(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path} (written by a fit stage)")
    module.load_state_dict(load_weights(path, "model weights"))
    return perf.prepare_for_inference(module.eval())


def init_backbone(module: torch.nn.Module, state_file: Path) -> None:
    """Load the ``backbone.*`` weights of a saved classifier into ``module.backbone``.

    Stands in for ImageNet weights where none can be had (the synthetic default runs offline).
    """
    if not state_file.is_file():
        raise FileNotFoundError(f"cannot initialise the backbone: {state_file} does not exist")
    state = load_weights(state_file, "classifier weights")
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise KeyError(f"{state_file} holds no 'backbone.*' weights to initialise from")
    module.backbone.load_state_dict(backbone)


def resolve_data_root(cfg: DictConfig) -> Path:
    """``data.root`` if set (must exist), else the synthetic VOC tree, generated on first use."""
    if cfg.data.root is not None:
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"data.root={root} does not exist; expected the dataset directory of {cfg.data.source._target_}"
            )
        return root
    from wsss.data.synthetic import KNOBS, ensure_synthetic_voc, synthetic_root

    syn = cfg.data.get("synthetic")
    if syn is None:
        target = cfg.data.get("source", {}).get("_target_", "this dataset")
        raise ValueError(f"data.root is required for {target} (only data=voc has a synthetic "
                         "stand-in); pass data.root=/path/to/the/dataset")
    knobs = {k: float(syn.get(k, v)) for k, v in KNOBS.items()}  # non-default knobs: own root
    return Path(ensure_synthetic_voc(
        synthetic_root(syn.root, **knobs), num_train=syn.num_train, num_val=syn.num_val,
        seed=syn.seed, image_size=tuple(syn.image_size),
        classes=list(syn.classes) if syn.classes else None, **knobs,
    ))


def finish_stage(ctx: StageContext, metrics: Mapping[str, Any]) -> None:
    write_json(ctx.out_dir / METRICS_FILE, {"stage": ctx.name, **metrics})


def is_finished(stage_dir: Path) -> bool:
    return (stage_dir / MANIFEST_FILE).is_file()


def finished_stage_dir(run_dir: Path, stage: str) -> Path | None:
    """``run_dir``'s finished copy of ``stage``: its own, or the one it reused (``reused.json``)."""
    own = run_dir / "stages" / stage
    if is_finished(own):
        return own
    record = run_dir / REUSED_FILE
    if record.is_file():
        reused = read_json(record).get(stage)
        if reused and is_finished(Path(reused)):
            return Path(reused)
    return None


def input_candidates(cfg: DictConfig, run_dir: Path, stage: str) -> list[Path]:
    """Where stage ``stage``'s output may be, in order (see :meth:`StageContext.input`)."""
    pipe = cfg.pipeline
    explicit = (pipe.get("inputs") or {}).get(stage)
    if explicit:
        return [Path(explicit)]
    candidates = [run_dir / "stages" / stage]
    if pipe.get("from_run"):
        found = finished_stage_dir(Path(pipe.from_run), stage)
        candidates.append(found or Path(pipe.from_run) / "stages" / stage)
    return candidates


def locate_stage(cfg: DictConfig, run_dir: Path, stage: str) -> Path | None:
    """The finished copy of ``stage`` this run reads, or None. A directory named explicitly by
    ``pipeline.inputs.<stage>`` may lack a manifest (then its metrics.json suffices)."""
    candidates = input_candidates(cfg, run_dir, stage)
    explicit = bool((cfg.pipeline.get("inputs") or {}).get(stage))
    for path in candidates:
        if is_finished(path) or (explicit and (path / METRICS_FILE).is_file()):
            return path
    return None


def read_metrics(stage_dir: Path) -> dict[str, Any]:
    return read_json(stage_dir / METRICS_FILE)
