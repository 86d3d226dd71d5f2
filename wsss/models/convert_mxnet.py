"""Convert the MXNet ResNet-38 release (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) to PyTorch.

Usage: ``python -m wsss.models.convert_mxnet in.params out.pth``; load the result with
``torch.load(out, weights_only=True)`` into :class:`wsss.models.resnet38.ResNet38`.

The file is parsed directly (no ``mxnet`` import). Byte layout, little-endian, as written by
``NDArray::Save`` in apache/mxnet ``src/ndarray/ndarray.cc``:

* list header: uint64 ``kMXAPINDArrayListMagic`` (0x112), uint64 reserved (0);
* uint64 count, then ``count`` arrays, each
    - V2/V3 (uint32 magic 0xF993FAC9 / 0xF993FACA): int32 storage type (0 = dense), shape, context,
      int32 dtype flag, raw data;
    - V1 (magic 0xF993FAC8): shape, context, dtype, data (no storage type);
    - legacy (no magic; the first uint32 *is* ndim): uint32 dims, context, dtype, data;
  where shape = uint32 ndim + ndim int64 dims (ndim 0 marks an empty "none" array, skipped),
  context = int32 dev_type + int32 dev_id, and dtype flags 0..6 = f32, f64, f16, u8, i32, i8, i64;
* uint64 count, then ``count`` names, each uint64 length + ASCII bytes (``arg:``/``aux:`` prefix).

Name mapping (the same rule as PSA's ``convert_mxnet_to_torch``):

* ``conv1a_weight`` -> ``conv1a.weight``; ``bn7_{gamma,beta,moving_mean,moving_var}`` -> ``bn7.*``;
* ``res{S}a_{branch}_weight`` -> ``b{S}.conv_{branch}.weight``; ``res{S}b{N}_*`` -> ``b{S}_{N}.*``;
* ``bn{S}a_{branch}_{param}`` -> ``b{S}.bn_{branch}.{param}`` (likewise ``bn{S}b{N}``), with
  gamma -> weight, beta -> bias, moving_mean -> running_mean, moving_var -> running_var;
* ``linear1000_*`` (the ImageNet classifier) is dropped; any other name is an error.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
from collections.abc import Mapping, Sequence
from typing import BinaryIO

import numpy as np
import torch

from wsss.io import atomic_path

__all__ = ["convert", "main", "mxnet_to_torch_name", "read_mxnet_params", "write_mxnet_params"]

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
           6: np.int64}
_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
              "moving_var": "running_var", "mean": "running_mean", "var": "running_var"}
_BLOCK = re.compile(r"^(res|bn)(\d)(a|b(\d+))_(branch\w+?)_(weight|gamma|beta|moving_mean|"
                    r"moving_var|mean|var)$")


def _read(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated MXNet params file")
    return struct.unpack(fmt, data)


def _read_array(f: BinaryIO) -> np.ndarray | None:
    (magic,) = _read(f, "<I")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = _read(f, "<i")
        if stype != 0:
            raise ValueError(f"sparse NDArray (storage type {stype}) is not supported")
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        (ndim,) = _read(f, "<i")
        shape = _read(f, f"<{max(ndim, 0)}q")
        # V3 (numpy semantics) marks unknown shapes with ndim -1; older versions with ndim 0.
        if ndim < 0 or (ndim == 0 and magic != V3_MAGIC):
            return None
    else:  # legacy layout: the word just read is ndim, dims are uint32
        shape = _read(f, f"<{magic}I")
        if magic == 0:
            return None
    _read(f, "<ii")  # context (dev_type, dev_id): the data is always stored as a CPU copy
    (flag,) = _read(f, "<i")
    if flag not in _DTYPES:
        raise ValueError(f"unknown MXNet dtype flag {flag}")
    dtype = np.dtype(_DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise ValueError("truncated MXNet params file")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_mxnet_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray list file (``mx.nd.save`` / ``.params``) into numpy arrays.

    Args:
        path: The ``.params`` file.

    Returns:
        Name (with its ``arg:``/``aux:`` prefix, as stored) -> array. Empty ("none") arrays are
        left out. An unnamed list gets the names ``"0"``, ``"1"``, ...
    """
    with open(path, "rb") as f:
        header, _reserved = _read(f, "<QQ")
        if header != LIST_MAGIC:
            raise ValueError(f"{path}: not an MXNet NDArray list (magic {header:#x} != 0x112)")
        (count,) = _read(f, "<Q")
        arrays = [_read_array(f) for _ in range(count)]
        (n_names,) = _read(f, "<Q")
        names = []
        for _ in range(n_names):
            (length,) = _read(f, "<Q")
            names.append(f.read(length).decode("ascii"))
    if names and len(names) != len(arrays):
        raise ValueError(f"{path}: {len(arrays)} arrays but {len(names)} names")
    names = names or [str(i) for i in range(len(arrays))]
    return {n: a for n, a in zip(names, arrays) if a is not None}


def mxnet_to_torch_name(name: str) -> str | None:
    """Map an MXNet ResNet-38 parameter name onto :class:`ResNet38`'s ``state_dict`` key.

    Returns ``None`` for the dropped ImageNet classifier (``linear1000_*``); raises
    ``ValueError`` for a name that fits no rule, so no weight is lost silently.
    """
    base = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if base.startswith("linear1000"):
        return None
    if base == "conv1a_weight":
        return "conv1a.weight"
    if base.startswith("bn7_") and base[4:] in _BN_PARAMS:
        return f"bn7.{_BN_PARAMS[base[4:]]}"
    match = _BLOCK.match(base)
    if match is None:
        raise ValueError(f"unexpected MXNet parameter name {name!r}")
    kind, stage, _, index, branch, param = match.groups()
    block = f"b{stage}" if index is None else f"b{stage}_{index}"
    if kind == "res":
        if param != "weight":
            raise ValueError(f"unexpected conv parameter {name!r}")
        return f"{block}.conv_{branch}.weight"
    if param not in _BN_PARAMS:
        raise ValueError(f"unexpected BatchNorm parameter {name!r}")
    return f"{block}.bn_{branch}.{_BN_PARAMS[param]}"


def convert(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an MXNet ResNet-38 ``.params`` file and return a PyTorch state dict (float32)."""
    state: dict[str, torch.Tensor] = {}
    for name, array in read_mxnet_params(path).items():
        key = mxnet_to_torch_name(name)
        if key is None:
            continue
        if key in state:
            raise ValueError(f"two MXNet arrays map onto {key!r}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        state[key] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def write_mxnet_params(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    version: str = "v2",
) -> None:
    """Write arrays in the MXNet NDArray list format (test helper; the inverse of the reader).

    Args:
        path: Output file.
        arrays: Name -> dense array (float32/64/16, uint8, int8/32/64).
        version: Per-array layout: ``"v2"`` (default, current MXNet), ``"v1"`` or ``"legacy"``.
    """
    flags = {np.dtype(v): k for k, v in _DTYPES.items()}
    with atomic_path(path, suffix=".params") as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays)))
        for array in arrays.values():
            array = np.ascontiguousarray(array)
            if version == "legacy":
                f.write(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
            else:
                if version == "v2":
                    f.write(struct.pack("<Ii", V2_MAGIC, 0))
                elif version == "v1":
                    f.write(struct.pack("<I", V1_MAGIC))
                else:
                    raise ValueError(f"unknown version {version!r}")
                f.write(struct.pack(f"<i{array.ndim}q", array.ndim, *array.shape))
            f.write(struct.pack("<iii", 1, 0, flags[array.dtype]))  # cpu(0), dtype flag
            f.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
        f.write(struct.pack("<Q", len(arrays)))
        for name in arrays:
            encoded = name.encode("ascii")
            f.write(struct.pack("<Q", len(encoded)) + encoded)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", help="MXNet .params file (ResNet-38 A1 release)")
    parser.add_argument("output", help="output .pth (a plain state dict)")
    args = parser.parse_args(argv)
    state = convert(args.params)
    with atomic_path(args.output, suffix=".pth") as tmp:
        torch.save(state, tmp)
    n = sum(t.numel() for t in state.values())
    print(f"wrote {len(state)} tensors ({n:,} values) to {args.output}")


if __name__ == "__main__":
    main()
