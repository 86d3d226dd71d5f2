"""MXNet .params reader/converter: hand-built bytes, writer round trip, names, CLI."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.models.convert_mxnet import (
    convert,
    main,
    mxnet_to_torch_name,
    read_mxnet_params,
    write_mxnet_params,
)
from wsss.models.resnet38 import ResNet38


def _names(*names: str) -> bytes:
    out = struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n)) + n.encode()
    return out


def test_reads_hand_built_v2_and_legacy_bytes(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float32)
    blob = struct.pack("<QQQ", 0x112, 0, 2)
    # V2: magic, stype 0 (dense), ndim 2 + int64 dims, ctx cpu(0), dtype 0 (float32), data
    blob += struct.pack("<Iii2qiii", 0xF993FAC9, 0, 2, 2, 3, 1, 0, 0) + data.tobytes()
    # legacy: ndim 1 + uint32 dim, ctx, dtype 6 (int64), data
    blob += struct.pack("<IIiii", 1, 3, 1, 0, 6) + np.array([7, 8, 9], "<i8").tobytes()
    blob += _names("arg:a", "aux:b")
    path = tmp_path / "hand.params"
    path.write_bytes(blob)
    arrays = read_mxnet_params(path)
    assert list(arrays) == ["arg:a", "aux:b"]
    np.testing.assert_array_equal(arrays["arg:a"], data.reshape(2, 3))
    assert arrays["aux:b"].dtype == np.int64 and arrays["aux:b"].tolist() == [7, 8, 9]


@pytest.mark.parametrize("version", ["v2", "v1", "legacy"])
def test_writer_round_trip(tmp_path: Path, version: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "arg:w": rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
        "arg:h": rng.standard_normal(4).astype(np.float16),
        "aux:i": np.array([[1, 2]], dtype=np.int32),
    }
    path = tmp_path / "x.params"
    write_mxnet_params(path, arrays, version=version)
    raw = path.read_bytes()
    assert struct.unpack("<QQQ", raw[:24]) == (0x112, 0, 3)
    if version == "v2":
        assert struct.unpack("<I", raw[24:28])[0] == 0xF993FAC9
    back = read_mxnet_params(path)
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)


def test_bad_magic_and_unknown_names(tmp_path: Path) -> None:
    path = tmp_path / "bad.params"
    path.write_bytes(struct.pack("<QQQ", 0x113, 0, 0))
    with pytest.raises(ValueError, match="0x112"):
        read_mxnet_params(path)
    with pytest.raises(ValueError, match="unexpected"):
        mxnet_to_torch_name("arg:fc8_weight")


@pytest.mark.parametrize(
    ("mx", "pt"),
    [
        ("arg:conv1a_weight", "conv1a.weight"),
        ("arg:res2a_branch1_weight", "b2.conv_branch1.weight"),
        ("arg:res4b3_branch2b1_weight", "b4_3.conv_branch2b1.weight"),
        ("arg:bn5a_branch2a_gamma", "b5.bn_branch2a.weight"),
        ("aux:bn5b2_branch2b1_moving_mean", "b5_2.bn_branch2b1.running_mean"),
        ("aux:bn6a_branch2b2_moving_var", "b6.bn_branch2b2.running_var"),
        ("arg:res7a_branch2b2_weight", "b7.conv_branch2b2.weight"),
        ("arg:bn7_beta", "bn7.bias"),
        ("arg:linear1000_weight", None),
    ],
)
def test_name_mapping(mx: str, pt: str | None) -> None:
    assert mxnet_to_torch_name(mx) == pt


def _torch_to_mxnet(key: str) -> str:
    """Inverse of the PSA naming rule, written independently for the coverage test."""
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    module, param = key.rsplit(".", 1)
    bn = {"weight": "arg:{}_gamma", "bias": "arg:{}_beta",
          "running_mean": "aux:{}_moving_mean", "running_var": "aux:{}_moving_var"}
    if module == "bn7":
        return bn[param].format("bn7")
    block, layer = module.split(".")
    stage, index = re.fullmatch(r"b(\d)(?:_(\d))?", block).groups()
    tag = f"{stage}a" if index is None else f"{stage}b{index}"
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        return f"arg:res{tag}_{branch}_weight"
    return bn[param].format(f"bn{tag}_{branch}")


def test_every_resnet38_key_is_reachable() -> None:
    keys = [k for k in ResNet38().state_dict() if not k.endswith("num_batches_tracked")]
    # BN params, conv1a, two convs per basic block + 4 shortcuts, four convs per bottleneck
    assert len(keys) == 37 * 4 + 1 + 15 * 2 + 4 + 2 * 4
    for key in keys:
        assert mxnet_to_torch_name(_torch_to_mxnet(key)) == key


def test_convert_cli_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    conv1a = rng.standard_normal((64, 3, 3, 3)).astype(np.float32)
    gamma = rng.standard_normal(4096).astype(np.float64)  # cast to float32 on conversion
    src = tmp_path / "ilsvrc.params"
    write_mxnet_params(src, {"arg:conv1a_weight": conv1a, "arg:bn7_gamma": gamma,
                             "arg:linear1000_bias": np.zeros(1000, np.float32)})
    state = convert(src)
    assert sorted(state) == ["bn7.weight", "conv1a.weight"]
    assert all(t.dtype == torch.float32 for t in state.values())

    out = tmp_path / "r38.pth"
    main([str(src), str(out)])
    loaded = torch.load(out, weights_only=True)
    torch.testing.assert_close(loaded["conv1a.weight"], torch.from_numpy(conv1a))
    model = ResNet38()
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    assert not unexpected and "b2.conv_branch1.weight" in missing
    torch.testing.assert_close(model.bn7.weight.detach(), torch.from_numpy(gamma).float())
