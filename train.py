"""Entry point: ``python train.py [overrides]`` runs the configured WSSS pipeline.

With no arguments: CAM baseline -> pseudo-labels -> DeepLab on a generated synthetic VOC tree (CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wsss.conf import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from wsss.pipeline.preflight import preflight
    from wsss.pipeline.validate import before_any_stage

    # The `lightning` package logger has its own console handler and also propagates to Hydra's
    # root handlers (console + train.log), so every Lightning line was printed twice.
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    preflight(cfg)  # the whole composition, before any stage runs
    before_any_stage(cfg, run_dir)  # run-dir lock, config values, data check (wsss.pipeline.validate)
    from wsss.pipeline.runner import run_pipeline

    results = run_pipeline(cfg, run_dir)
    return objective(cfg, results)


def objective(cfg: DictConfig, results: dict[str, dict]) -> float | None:
    """The value a Hydra sweeper (conf/hparams_search/) maximises: ``objective.metric`` of
    ``objective.stage`` when the config names them, else the last stage's ``miou``."""
    from wsss.pipeline.sweep_summary import objective_of

    stage, metric = objective_of(cfg)
    if stage is not None and stage not in results:
        raise KeyError(f"objective.stage={stage!r} is not a stage of this run ({list(results)})")
    chosen = results.get(stage) if stage else (results[list(results)[-1]] if results else {})
    value = chosen.get(metric)
    if value is None and stage is not None:  # an optimising sweeper needs a number
        raise ValueError(f"stage {stage!r} reported no {metric!r} (GT masks missing?): {sorted(chosen)}")
    return value


if __name__ == "__main__":
    main()
