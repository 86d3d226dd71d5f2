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
    from wsss.pipeline.runner import run_pipeline

    # The `lightning` package logger has its own console handler and also propagates to Hydra's
    # root handlers (console + train.log), so every Lightning line was printed twice.
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    preflight(cfg)  # the whole composition, before any stage runs
    results = run_pipeline(cfg, Path(HydraConfig.get().runtime.output_dir))
    # The value a Hydra sweeper optimises: the last stage's mIoU, when it has one.
    last = results[list(results)[-1]] if results else {}
    return last.get("miou")


if __name__ == "__main__":
    main()
