"""Joint transforms: geometry shared by image / mask / saliency, nearest masks, padding values."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from wsss.data.transforms import (
    build_eval_transform,
    build_train_transform,
    finalize,
    to_tv_tensors,
)

# distinct, saturated colours (none black, the pad colour): colour k encodes mask label k
COLOURS = np.array([[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
                   dtype=np.uint8)  # fmt: skip
MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # identity normalisation: image stays in [0, 1]


def block_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) image and (H, W) mask made of random rectangles; image colour = COLOURS[label]."""
    mask = np.zeros((h, w), np.uint8)
    for label in range(1, len(COLOURS)):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        mask[y : y + rng.integers(8, h // 2), x : x + rng.integers(8, w // 2)] = label
    return COLOURS[mask], mask


def interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood holds a single label (away from resampled edges)."""
    m = mask[None, None].float()
    k = 2 * radius + 1
    hi = nnf.max_pool2d(m, k, 1, radius)
    lo = -nnf.max_pool2d(-m, k, 1, radius)
    return (hi == lo)[0, 0]


def decode(image: torch.Tensor) -> torch.Tensor:
    """Nearest COLOURS index per pixel of a (3, H, W) [0, 1] image."""
    palette = torch.from_numpy(COLOURS).float() / 255
    dist = ((image.permute(1, 2, 0)[..., None, :] - palette) ** 2).sum(-1)
    return dist.argmin(-1)


@pytest.mark.parametrize(
    "scale_mode, scale_range", [("factor", (0.5, 1.5)), ("long_side", (60, 140))]
)
def test_random_transforms_keep_image_mask_and_saliency_aligned(scale_mode, scale_range) -> None:
    random.seed(0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tf = build_train_transform(crop_size=(64, 80), scale_range=scale_range, mean=MEAN, std=STD,
                               color_jitter=None, hflip_prob=0.5, scale_mode=scale_mode)  # fmt: skip
    checked = 0
    for _ in range(15):
        image, mask = block_scene(rng, int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        saliency = np.where(mask > 0, 255, 0).astype(np.uint8)
        out = finalize(tf(to_tv_tensors(image, mask, saliency)))
        img, m, sal = out["image"], out["mask"], out["saliency"]
        assert img.shape == (3, 64, 80) and m.shape == (64, 80) and sal.shape == (1, 64, 80)
        assert img.dtype == torch.float32 and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= set(range(len(COLOURS))) | {255}  # nearest, no blends
        pad = m == 255  # input masks have no 255: these pixels are padding
        assert (img[:, pad] == 0).all() and (sal[0, pad] == 0).all()
        core = interior(m) & ~pad
        assert (decode(img)[core] == m[core]).all()
        np.testing.assert_array_equal(sal[0][~pad].numpy(), (m[~pad] > 0).float().numpy())
        checked += int(core.sum())
    assert checked > 15 * 64 * 80 * 0.3  # the check covered most pixels


def test_colour_jitter_touches_only_the_image() -> None:
    torch.manual_seed(1)
    image, mask = block_scene(np.random.default_rng(1), 70, 90)
    jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    tf = build_train_transform(crop_size=200, scale_range=(1.0, 1.0), mean=MEAN, std=STD,
                               color_jitter=jitter, hflip_prob=0.0)  # fmt: skip
    out = finalize(tf(to_tv_tensors(image, mask)))
    m = out["mask"]
    valid = m != 255
    assert int(valid.sum()) == 70 * 90  # everything kept, padded to 200x200
    kept = m[valid].reshape(70, 90).numpy()
    np.testing.assert_array_equal(kept, mask)  # no flip, no rescale: mask unchanged
    assert not torch.allclose(out["image"][:, valid].reshape(3, 70, 90),
                              torch.from_numpy(image).permute(2, 0, 1).float() / 255)  # fmt: skip


def test_normalisation_uses_mean_and_std() -> None:
    image = np.full((10, 12, 3), 255, np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = finalize(build_eval_transform(mean=mean, std=std)(to_tv_tensors(image)))
    expected = (1 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(out["image"][:, 3, 4], expected)


def test_eval_transform_is_deterministic_and_resizes_masks_nearest() -> None:
    image, mask = block_scene(np.random.default_rng(2), 50, 100)
    mask[mask == 4] = 200  # odd values: any interpolation would create new ones
    tf = build_eval_transform(mean=MEAN, std=STD)
    a, b = (finalize(tf(to_tv_tensors(image, mask))) for _ in range(2))
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 50, 100)
    assert torch.equal(a["mask"], torch.from_numpy(mask).long())
    resized = finalize(build_eval_transform(mean=MEAN, std=STD, resize_long_side=160,
                                            pad_to=(96, 176))(to_tv_tensors(image, mask)))  # fmt: skip
    m = resized["mask"]
    assert m.shape == (96, 176) and resized["image"].shape == (3, 96, 176)
    assert set(m.unique().tolist()) <= set(np.unique(mask).tolist()) | {255}
    assert (m[80:] == 255).all() and (m[:, 160:] == 255).all() and (m[:80, :160] != 255).all()
    assert (resized["image"][:, 80:] == 0).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="scale_range"):
        build_train_transform(crop_size=8, scale_range=(2.0, 1.0), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="mode"):
        build_train_transform(crop_size=8, scale_range=(1, 2), mean=MEAN, std=STD, scale_mode="x")
