"""Deterministic tensors from parameter *names*, for checkpoint fixtures without the weights.

The fixture generator (``scripts/make_official_fixtures.py``) fills an official model with
:func:`fill_tensor` and stores only the names, shapes, an input and the official outputs; the
tests rebuild the very same tensors from the names and load them through our loaders. Values are
drawn from NumPy's PCG64 seeded by a SHA-256 of the name, so they do not depend on the order in
which a model registers its parameters, nor on the framework that asks for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["alias_groups", "fill_tensor", "filled_state", "official_state_from_fixture"]


def _uniform(name: str, shape: Sequence[int]) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    # float32 draws: ResNet-38 (~100M values) stays cheap to rebuild in a test.
    return np.random.Generator(np.random.PCG64(seed)).random(
        tuple(shape), dtype=np.float32
    )  # [0, 1)


def fill_tensor(name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of ``shape`` whose values depend only on ``name`` (and the shape).

    * ``num_batches_tracked`` and other integer buffers: zeros;
    * ``running_var``: in [0.5, 1.5); ``running_mean``: in [-0.1, 0.1);
    * 1-d ``weight`` (norm scales): in [0.9, 1.1); other 1-d tensors (biases, means): [-0.1, 0.1);
    * >= 2-d weights: uniform with variance ``1 / fan_in`` (keeps activations O(1) through
      deep stacks with BatchNorm in eval mode).
    """
    shape = tuple(int(s) for s in shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    u = _uniform(name, shape) * np.float32(2.0) - np.float32(1.0)  # [-1, 1), float32
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        values = 1 + np.float32(0.5) * u
    elif leaf == "running_mean" or len(shape) <= 1 and leaf != "weight":
        values = np.float32(0.1) * u
    elif len(shape) <= 1:
        values = 1 + np.float32(0.1) * u
    else:
        fan_in = int(np.prod(shape[1:]))
        u *= np.float32(np.sqrt(3.0 / fan_in))
        values = u
    return torch.from_numpy(values).to(dtype)


def alias_groups(state: Mapping[str, Tensor]) -> dict[str, str]:
    """Map every key of a ``state_dict(keep_vars=True)`` to the first key sharing its storage.

    Official models often register one module under several names (IRN: ``resnet50.conv1`` is
    also ``stage1.0`` and ``backbone.0.0``); their checkpoints hold each alias.
    """
    first: dict[tuple, str] = {}
    out = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        out[key] = first.setdefault(ident, key)
    return out


def filled_state(
    names_shapes: Iterable[tuple[str, Sequence[int], torch.dtype]],
) -> dict[str, Tensor]:
    """``{name: fill_tensor(name, shape, dtype)}`` for canonical (de-aliased) names."""
    return {name: fill_tensor(name, shape, dtype) for name, shape, dtype in names_shapes}


def official_state_from_fixture(fixture: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Rebuild the official checkpoint a fixture describes (aliases included).

    The fixture holds ``keys`` (every state-dict key, in order), ``canonical`` (the key whose
    values each key shares), ``shapes`` (``-1``-padded) and ``dtypes`` (``"float32"``/``"int64"``).
    """
    keys = [str(k) for k in fixture["keys"]]
    canonical = [str(k) for k in fixture["canonical"]]
    state: dict[str, Tensor] = {}
    for key, canon, shape, dtype in zip(keys, canonical, fixture["shapes"], fixture["dtypes"]):
        dims = [int(s) for s in shape if s >= 0]
        if canon not in state:
            state[canon] = fill_tensor(canon, dims, getattr(torch, str(dtype)))
        state[key] = state[canon]
    return state
