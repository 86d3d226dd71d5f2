"""SECModule wiring: losses, gradient paths, the CRF target and its process pool; CueDataset."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.data.cues import CueDataset, downscale_rgb
from wsss.data.voc import VOCSource
from wsss.io import save_label_png
from wsss.methods.sec import SECModule

GRID = 6  # 48 input / stride 8


def make_module(**kw) -> SECModule:
    torch.manual_seed(0)
    return SECModule({"name": "resnet18", "output_stride": 16}, num_classes=20,
                     optimizer=partial(torch.optim.SGD, lr=1e-3), new_lr_mult=10, poly_power=0.9,
                     head_channels=16, fc6_dilation=2, **kw)  # fmt: skip


def make_batch(b: int = 2) -> dict:
    gen = torch.Generator().manual_seed(0)
    cues = torch.full((b, GRID, GRID), 255, dtype=torch.long)
    cues[:, :2] = 0  # background cues
    cues[:, 3:, 2:4] = 3  # class 2
    labels = torch.zeros(b, 20)
    labels[:, 2] = 1
    return {"image": torch.randn(b, 3, 48, 48, generator=gen), "cues": cues, "labels": labels,
            "raw": torch.randint(0, 256, (b, GRID, GRID, 3), dtype=torch.uint8, generator=gen)}


def test_training_step_with_fake_crf_gives_finite_loss_and_head_gradients() -> None:
    module = make_module()
    calls = []

    def fake_crf(raw: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        calls.append((raw.shape, probs.shape, probs.requires_grad))
        return torch.roll(probs, 1, dims=1)  # a target different from f

    module.crf_fn = fake_crf
    loss = module.training_step(make_batch(), 0)
    assert torch.isfinite(loss) and loss.item() > 0
    assert calls == [((2, GRID, GRID, 3), (2, 21, GRID, GRID), False)]  # detached: no grad into the CRF
    loss.backward()
    for name in ("fc6", "fc7", "fc8"):
        grad = getattr(module.head, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.backbone.parameters())


def test_constrain_term_is_zero_when_crf_returns_its_input() -> None:
    module = make_module(loss_weights={"seed": 0.0, "expand": 0.0})
    module.eval()  # no dropout: a deterministic f
    module.crf_fn = lambda raw, probs: probs
    with torch.no_grad():  # small logits keep f above the 1e-4 clip, so Q == f exactly
        module.head.fc8.weight.mul_(0.01)
    losses = module.sec_losses(make_batch())
    assert abs(losses["constrain"].item()) < 1e-6
    assert losses["loss"].item() == pytest.approx(losses["constrain"].item())


def test_real_crf_target_is_a_distribution_and_loss_weights_are_checked() -> None:
    module = make_module(crf_params={"scale_factor": 12.0, "n_iter": 2})
    losses = module.sec_losses(make_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["constrain"].item() >= 0
    with pytest.raises(KeyError, match="unknown keys"):
        make_module(loss_weights={"seeds": 1.0})


def test_crf_pool_is_lazy_reused_and_shut_down_in_teardown() -> None:
    module = make_module(crf_workers=1, crf_params={"n_iter": 1})
    assert module._pool is None  # nothing started at construction (eval_seg builds modules too)
    loss = module.sec_losses(make_batch())["loss"]
    pool = module._pool
    assert pool is not None and torch.isfinite(loss)
    assert module.crf_pool() is pool
    module.teardown("fit")
    assert module._pool is None


def test_forward_returns_input_resolution_logits_through_infer_size() -> None:
    module = make_module(infer_size=48).eval()
    with torch.no_grad():
        out = module(torch.randn(1, 3, 37, 53))
    assert out.shape == (1, 21, 37, 53)


@pytest.fixture
def cue_dir(synthetic_root: Path, tmp_path: Path) -> tuple[VOCSource, Path]:
    src = VOCSource(synthetic_root, "train")
    for i, name in enumerate(src.ids):
        label = np.full((GRID, GRID), 255, dtype=np.uint8)
        label[0] = 0
        label[-1, i % GRID] = 1
        save_label_png(tmp_path / "cues" / f"{name}.png", label)
    return src, tmp_path / "cues"


@pytest.mark.parametrize("resize", ["warp", "crop"])
def test_cue_dataset_shapes(cue_dir, resize: str) -> None:
    src, cues = cue_dir
    ds = CueDataset(src, cues, 48, [0.5] * 3, [0.25] * 3, resize=resize, scale_range=(0.8, 1.2),
                    hflip_prob=0.5)  # fmt: skip
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["cues"].shape == (GRID, GRID) and item["cues"].dtype == torch.int64
    assert item["raw"].shape == (GRID, GRID, 3) and item["raw"].dtype == torch.uint8
    assert item["labels"].shape == (20,)
    assert set(item["cues"].unique().tolist()) <= {0, 1, 255}
    if resize == "warp":  # no flip by default in SEC: the cue map is passed unchanged
        plain = CueDataset(src, cues, 48, [0.5] * 3, [0.25] * 3)[0]
        assert plain["cues"][0].eq(0).all() and plain["cues"][-1, 0] == 1


def test_cue_dataset_names_missing_files(cue_dir, tmp_path: Path) -> None:
    src, cues = cue_dir
    next(cues.glob("*.png")).unlink()
    ds = CueDataset(src, cues, 48, [0.5] * 3, [0.25] * 3)
    with pytest.raises(FileNotFoundError, match="cue map not found"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(FileNotFoundError, match="make_cues"):
        CueDataset(src, tmp_path / "missing", 48, [0.5] * 3, [0.25] * 3)


def test_downscale_rgb_matches_sec_zoom() -> None:
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    small = downscale_rgb(image, (4, 4))
    assert small.shape == (4, 4, 3) and small.dtype == np.uint8
    assert (small[0, 0] == image[0, 0]).all() and (small[-1, -1] == image[-1, -1]).all()  # corners kept
    assert (downscale_rgb(image, (8, 8)) == image).all()
