"""Evaluation protocol: which images tune the background threshold, and which are reported.

The threshold is chosen on a labelled held-out subset of the validation split and then applied
to the split being evaluated, so no reported number is tuned on the images it is reported on
(SEAM's ``--curve`` tunes on the evaluated split; we allow it only when asked, and say so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# auto: holdout when the held-out images have GT masks, else fixed (the data=folder default).
THRESHOLD_MODES = ("holdout", "fixed", "tune_on_eval", "auto")


def holdout_ids(ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """A deterministic random subset of ``ids`` (at least one image), sorted.

    Independent of list order: ids are sorted before sampling.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"protocol.holdout_fraction must be in (0, 1], got {fraction}")
    if not ids:
        raise ValueError("cannot draw a held-out subset from an empty split")
    ordered = sorted(ids)
    count = max(1, math.ceil(fraction * len(ordered)))
    picks = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return sorted(ordered[i] for i in picks)


class MissingGroundTruthError(ValueError):
    """An evaluation protocol needs GT masks that the data does not have."""


def check_threshold_mode(mode: str) -> str:
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    return mode
