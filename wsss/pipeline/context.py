"""What a stage gets from the runner: its config, its output dir, and its inputs' dirs."""

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

from wsss.io import read_json, write_json
from wsss.progress import trainer_kwargs

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # written last by the runner: its presence marks a finished stage
MODEL_FILE = "model.pt"
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

    @property
    def params(self) -> DictConfig:
        return self.cfg.stages[self.name]

    @property
    def out_dir(self) -> Path:
        path = self.run_dir / "stages" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def input(self, stage: str) -> Path:
        """Directory of a finished earlier stage.

        Resolution order: ``pipeline.inputs.<stage>`` (any directory the user names), then
        this run, then ``pipeline.from_run``/stages/<stage> (an earlier run), so a stage rerun
        here always shadows the earlier run's copy.
        """
        pipe = self.cfg.pipeline
        explicit = (pipe.get("inputs") or {}).get(stage)
        if explicit:
            candidates = [Path(explicit)]
        else:
            candidates = [self.run_dir / "stages" / stage]
            if pipe.get("from_run"):
                found = finished_stage_dir(Path(pipe.from_run), stage)
                candidates.append(found or Path(pipe.from_run) / "stages" / stage)
        for path in candidates:
            if (path / METRICS_FILE).is_file():
                return path
        raise FileNotFoundError(
            f"stage {self.name!r} needs the output of stage {stage!r}, but none of "
            f"{[str(p) for p in candidates]} holds a finished stage (no {METRICS_FILE}). Run "
            f"{stage!r} first, or point +pipeline.inputs.{stage}=DIR / pipeline.from_run=RUN_DIR at one."
        )

    def read(self, role: str) -> Path:
        """Directory of the finished stage this stage declares under ``reads.<role>``.

        Stage configs name their inputs by role (``reads: {cams: make_cam, threshold: eval_cam}``);
        the runner, not the stage, decides where that stage's output lives (see :meth:`input`).
        """
        reads = self.params.get("reads") or {}
        if role not in reads:
            raise KeyError(f"stage {self.name!r} reads role {role!r}, but stages.{self.name}.reads "
                           f"declares only {sorted(reads)}; add stages.{self.name}.reads.{role}=STAGE")
        if reads[role] is None:
            raise KeyError(f"stages.{self.name}.reads.{role} is null; name the stage to read from")
        return self.input(str(reads[role]))

    def read_optional(self, role: str) -> Path | None:
        """Like :meth:`read`, but ``None`` when the role is absent or null (an optional input)."""
        reads = self.params.get("reads") or {}
        return None if reads.get(role) is None else self.read(role)

    def data_root(self) -> Path:
        return resolve_data_root(self.cfg)

    def datamodule(self, **overrides: Any) -> L.LightningDataModule:
        """Instantiate ``cfg.data`` with the resolved root and stage-specific overrides."""
        return instantiate(self.cfg.data.module, root=str(self.data_root()), **overrides)

    def trainer(self, **overrides: Any) -> L.Trainer:
        """A Trainer from ``cfg.trainer`` that logs to this stage and saves no pickled checkpoints."""
        kwargs = OmegaConf.to_container(self.cfg.trainer, resolve=True)
        kwargs.update(overrides)
        kwargs.setdefault("enable_checkpointing", False)
        kwargs.setdefault("logger", self.loggers or False)
        kwargs = trainer_kwargs(kwargs)  # no progress-bar frames when stdout is not a TTY
        return L.Trainer(default_root_dir=str(self.out_dir), **kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        prefixed = {f"{self.name}/{k}": float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(prefixed, step=step)


def save_model(module: torch.nn.Module, path: Path) -> None:
    """State dict only, loadable with ``weights_only=True`` (no pickled objects)."""
    from wsss.io import atomic_path

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)


def load_model(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path} (written by a fit stage)")
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module.eval()


def init_backbone(module: torch.nn.Module, state_file: Path) -> None:
    """Load the ``backbone.*`` weights of a saved classifier into ``module.backbone``.

    Stands in for ImageNet weights where none can be had (the synthetic default runs offline).
    """
    if not state_file.is_file():
        raise FileNotFoundError(f"cannot initialise the backbone: {state_file} does not exist")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
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
                f"data.root={root} does not exist; expected a PASCAL VOC 2012 tree "
                "(<root>/JPEGImages, <root>/SegmentationClass, <root>/ImageSets/Segmentation/*.txt)"
            )
        return root
    from wsss.data.synthetic import ensure_synthetic_voc

    syn = cfg.data.get("synthetic")
    if syn is None:
        target = cfg.data.get("source", {}).get("_target_", "this dataset")
        raise ValueError(f"data.root is required for {target} (only data=voc has a synthetic "
                         "stand-in); pass data.root=/path/to/the/dataset")
    return Path(ensure_synthetic_voc(
        Path(syn.root), num_train=syn.num_train, num_val=syn.num_val, seed=syn.seed,
        image_size=tuple(syn.image_size), classes=list(syn.classes) if syn.classes else None,
    ))


def finish_stage(ctx: StageContext, metrics: Mapping[str, Any]) -> None:
    write_json(ctx.out_dir / METRICS_FILE, {"stage": ctx.name, **metrics})


def finished_stage_dir(run_dir: Path, stage: str) -> Path | None:
    """``run_dir``'s finished copy of ``stage``: its own, or the one it reused (``reused.json``)."""
    own = run_dir / "stages" / stage
    if (own / METRICS_FILE).is_file():
        return own
    record = run_dir / REUSED_FILE
    if record.is_file():
        reused = read_json(record).get(stage)
        if reused and (Path(reused) / METRICS_FILE).is_file():
            return Path(reused)
    return None


def read_metrics(stage_dir: Path) -> dict[str, Any]:
    return read_json(stage_dir / METRICS_FILE)
