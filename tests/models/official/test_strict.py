"""The strict official-checkpoint mapping: wrappers, aliases, derived buffers, fills, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.models.official.strict import CheckpointMismatchError, load_mapped, read_checkpoint


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))


def rename(key: str) -> str | None:
    for src, dst in (("conv.", "0."), ("alias.", "0."), ("bn.", "1.")):
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def official() -> dict[str, torch.Tensor]:
    ref = small()
    nn.init.normal_(ref[0].weight)
    state = {
        ("conv." + k[2:] if k.startswith("0.") else "bn." + k[2:]): v.clone()
        for k, v in ref.state_dict().items()
    }
    state["alias.weight"] = state["conv.weight"].clone()
    state["path_indices0"] = torch.zeros(3, dtype=torch.long)
    return state


def test_wrapped_checkpoint_with_module_prefix_loads(tmp_path) -> None:
    state = official()
    path = tmp_path / "release.pth.tar"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "epoch": 3,
            "optimizer": {"param_groups": [{"lr": 0.1}]},
        },
        path,
    )
    read = read_checkpoint(path, "x")
    assert set(read) == set(state)
    model = load_mapped(
        small(), read, rename, source=str(path), fmt="x", derived=[r"path_indices\d+"]
    )
    torch.testing.assert_close(model[0].weight, state["conv.weight"])


def test_every_kind_of_leftover_is_named() -> None:
    state = official()
    state["alias.weight"] = state["alias.weight"] + 1  # aliases must agree
    state["bn.running_mean"] = torch.zeros(5)  # wrong shape
    state["extra.weight"] = torch.zeros(1)  # not mapped
    del state["bn.bias"]  # never set
    with pytest.raises(CheckpointMismatchError) as err:
        load_mapped(small(), state, rename, source="f.pth", fmt="x")
    msg = str(err.value)
    assert msg.startswith("f.pth does not fit checkpoint format 'x' onto Sequential:")
    assert "official tensors not used (2): path_indices0, extra.weight" in msg
    assert "module tensors not set (2): 1.bias, 1.running_mean" in msg
    assert "shape mismatches (1): bn.running_mean (5,) -> 1.running_mean (2,)" in msg
    assert "aliases with different values (1): alias.weight != conv.weight" in msg


def test_fill_sets_what_the_release_lacks() -> None:
    state = official()
    del state["bn.bias"]
    model = load_mapped(
        small(),
        state,
        rename,
        source="f",
        fmt="x",
        derived=["path_indices0"],
        fill={"1.bias": torch.full((2,), 0.5)},
    )
    torch.testing.assert_close(model[1].bias, torch.full((2,), 0.5))


def test_not_a_state_dict(tmp_path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(
        CheckpointMismatchError, match=r"list.pth: expected a state dict .* got list"
    ):
        read_checkpoint(path, "psa")
