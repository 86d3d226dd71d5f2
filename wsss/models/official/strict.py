"""Strict mapping of an official checkpoint onto one of our modules.

Every loader in :mod:`wsss.models.official` is a *rename* (official key -> our key or ``None``)
plus, where the layouts differ, a tensor transform. :func:`load_mapped` then insists that

* every official tensor is used: it is loaded, or it is an alias of a loaded tensor (official
  models often register a module twice; their checkpoints hold both names) with equal values, or
  it is named in ``derived`` (buffers the official code recomputes, e.g. IRN's path indices);
* every tensor of our module is set (``fill`` names the few our module has and the release has
  not, with the value that reproduces the release, e.g. a zero bias);
* shapes agree;

and otherwise raises :class:`CheckpointMismatchError` naming the file, the format and the
leftovers on each side. Files are read with ``torch.load(weights_only=True)`` (no pickle code).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["CheckpointMismatchError", "load_mapped", "read_checkpoint"]

_SHOW = 12  # leftovers listed per side in an error message


class CheckpointMismatchError(ValueError):
    """An official checkpoint does not fit the module its format names."""


def read_checkpoint(path: str | Path, fmt: str) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and DataParallel's
    ``module.`` prefix. A missing, truncated or non-PyTorch file raises with the path and the
    format in the message.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (checkpoint format {fmt!r})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # RuntimeError / UnpicklingError / EOFError, by where the file breaks
        raise CheckpointMismatchError(
            f"{path}: not a readable PyTorch checkpoint for format {fmt!r} "
            f"(truncated download, or another framework's file?): {type(err).__name__}: {err}"
        ) from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        kind = type(state).__name__
        raise CheckpointMismatchError(
            f"{path}: expected a state dict (name -> tensor) for format {fmt!r}, got {kind}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW]) + (
        f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    )
    return f"\n  {title} ({len(items)}): {shown}"


def load_mapped(
    module: nn.Module,
    official: Mapping[str, Tensor],
    rename: Callable[[str], str | None],
    *,
    source: str,
    fmt: str,
    derived: Iterable[str] = (),
    fill: Mapping[str, Tensor] | None = None,
    transform: Callable[[str, Tensor], Tensor] | None = None,
) -> nn.Module:
    """Load ``official`` into ``module`` through ``rename``; strict both ways (module docstring).

    Args:
        module: The module to fill (its own ``state_dict`` keys are the targets).
        official: The release's state dict.
        rename: Official key -> our key, or ``None`` for keys with no counterpart.
        source: The file (for messages).
        fmt: The format name (for messages).
        derived: Regexes (full match) of official keys that are recomputed, never loaded.
        fill: Our keys the release lacks -> the value that reproduces it.
        transform: ``(our_key, tensor) -> tensor`` for layout changes (default: identity).

    Returns:
        ``module``, with every tensor loaded.
    """
    target = module.state_dict()
    fill = dict(fill or {})
    patterns = [re.compile(p) for p in derived]
    loaded: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unused, bad_shape, disagree = [], [], []
    for key, value in official.items():
        ours = rename(key)
        if ours is None or ours not in target:
            if not any(p.fullmatch(key) for p in patterns):
                unused.append(key if ours is None else f"{key} -> {ours}?")
            continue
        if transform is not None:
            value = transform(ours, value)
        if tuple(value.shape) != tuple(target[ours].shape):
            bad_shape.append(f"{key} {tuple(value.shape)} -> {ours} {tuple(target[ours].shape)}")
            continue
        if ours in loaded:
            if not torch.equal(loaded[ours], value):
                disagree.append(f"{key} != {origin[ours]}")
            continue
        loaded[ours], origin[ours] = value, key
    missing = [k for k in target if k not in loaded and k not in fill]
    if unused or missing or bad_shape or disagree:
        msg = f"{source} does not fit checkpoint format {fmt!r} onto {type(module).__name__}:"
        if unused:
            msg += _listing("official tensors not used", unused)
        if missing:
            msg += _listing("module tensors not set", missing)
        if bad_shape:
            msg += _listing("shape mismatches", bad_shape)
        if disagree:
            msg += _listing("aliases with different values", disagree)
        raise CheckpointMismatchError(msg)
    state = {k: loaded[k] if k in loaded else fill[k] for k in target}
    module.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    return module
