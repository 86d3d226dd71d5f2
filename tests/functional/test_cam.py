"""Hand-computed checks of wsss.functional.cam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.functional.cam import (
    background_power,
    cam,
    cams_to_label,
    multiscale_cam,
    normalize_cam,
    restrict_to_keys,
)


def test_cam_matches_hand_computation_for_linear_and_conv_weights() -> None:
    # features (1, D=2, 2, 2): channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [-1, 2]]
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]])
    weight = torch.tensor([[1.0, 0.0], [2.0, -1.0], [0.5, 0.5]])  # (C=3, D=2)
    expected = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0]],  # 1*f0
            [[2.0, 3.0], [7.0, 6.0]],  # 2*f0 - f1
            [[0.5, 1.5], [1.0, 3.0]],  # (f0 + f1) / 2
        ]
    ).unsqueeze(0)
    out = cam(features, weight)
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(cam(features, weight[:, :, None, None]), expected)
    # The GAP of the CAM equals the logits of a GAP + linear head.
    torch.testing.assert_close(out.mean((2, 3)), features.mean((2, 3)) @ weight.T)


def test_cam_no_relu_and_shape_errors() -> None:
    features = torch.ones(1, 2, 1, 1)
    assert cam(features, torch.tensor([[-1.0, -2.0]])).item() == -3.0
    with pytest.raises(ValueError):
        cam(features, torch.ones(3, 4))
    with pytest.raises(ValueError):
        cam(features[0], torch.ones(3, 2))


def test_normalize_cam_max_and_negative_maps() -> None:
    eps = 1e-5
    cams = torch.tensor(
        [
            [[1.0, 4.0], [2.0, -3.0]],  # peak 4
            [[-1.0, -2.0], [-0.5, -7.0]],  # all negative -> zeros
            [[0.5, 0.25], [0.0, 0.5]],  # peak 0.5
        ]
    )
    out = normalize_cam(cams, eps=eps)
    expected0 = torch.tensor([[1.0, 4.0], [2.0, 0.0]]) / (4.0 + eps)
    torch.testing.assert_close(out[0], expected0)
    assert out[0].max().item() == pytest.approx(1.0 / (1.0 + eps / 4.0), abs=1e-7)
    assert torch.equal(out[1], torch.zeros(2, 2))
    assert out[2, 0, 0].item() == pytest.approx(0.5 / (0.5 + eps))
    assert out.dtype == torch.float32
    unit_peak = normalize_cam(torch.tensor([[[1.0, 0.5]]]), eps=eps)
    assert unit_peak.flatten().tolist() == pytest.approx([1.0 / (1.0 + eps), 0.5 / (1.0 + eps)])
    assert torch.equal(cams[0, 1, 1], torch.tensor(-3.0))  # input untouched
    # Batched input normalises every (image, class) map separately.
    batched = normalize_cam(torch.stack([cams, 2 * cams]))
    torch.testing.assert_close(batched[1], out, rtol=1e-4, atol=1e-5)


def test_restrict_to_keys() -> None:
    cams = torch.arange(4 * 2 * 2, dtype=torch.float32).reshape(4, 2, 2)
    present, keys = restrict_to_keys(cams, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert keys.tolist() == [1, 3] and keys.dtype == torch.int64
    assert torch.equal(present, cams[[1, 3]])
    present, keys = restrict_to_keys(cams, torch.zeros(4))
    assert present.shape == (0, 2, 2) and keys.numel() == 0


def test_cams_to_label_two_classes() -> None:
    cams = torch.tensor(
        [
            [[0.9, 0.1, 0.3], [0.0, 0.5, 0.2]],  # class 4
            [[0.2, 0.8, 0.25], [0.1, 0.5, 0.1]],  # class 11
        ]
    )
    keys = torch.tensor([4, 11])
    label = cams_to_label(cams, keys, bg_threshold=0.3)
    # (0,2): max 0.3 ties the background -> background; (1,1): 0.5 tie between classes -> first.
    assert label.tolist() == [[5, 12, 0], [0, 5, 0]]
    assert label.dtype == torch.int64


def test_cams_to_label_without_classes_is_background() -> None:
    label = cams_to_label(torch.zeros(0, 2, 3), torch.zeros(0, dtype=torch.long), 0.2)
    assert label.shape == (2, 3) and not label.any()


def test_background_power() -> None:
    cams = torch.tensor([[[0.5, 0.0]], [[0.25, 1.0]]])  # (2, 1, 2)
    torch.testing.assert_close(background_power(cams, 2.0), torch.tensor([[0.25, 0.0]]))
    assert torch.equal(background_power(torch.zeros(0, 2, 3), 4.0), torch.ones(2, 3))
    # Peaks above 1 clamp to 0 instead of NaN for fractional alpha.
    assert background_power(torch.full((1, 1, 1), 1.5), 0.5).item() == 0.0


class _Scale(torch.nn.Module):
    """A fixed 1x1 conv: every output class is a multiple of the mean RGB value."""

    def __init__(self, gains: list[float]) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, len(gains), 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor(gains)[:, None, None, None].expand(-1, 3, 1, 1) / 3
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_multiscale_cam_constant_image_sums_passes() -> None:
    model = _Scale([2.0, -1.0])
    image = torch.full((1, 3, 8, 12), 0.5)
    scales = (1.0, 0.5, 1.5, 2.0)
    out = multiscale_cam(model, image, scales=scales)
    assert out.shape == (2, 8, 12) and out.dtype == torch.float32
    # 4 scales x 2 flips x 1.0, and the negative class is ReLU'd to zero.
    torch.testing.assert_close(out[0], torch.full((8, 12), 8.0))
    assert torch.equal(out[1], torch.zeros(8, 12))
    no_flip = multiscale_cam(model, image[0], scales=(1.0, 0.5), flip=False, output_size=(3, 5))
    torch.testing.assert_close(no_flip, torch.tensor([2.0, 0.0])[:, None, None].expand(2, 3, 5))
    assert not out.requires_grad


def test_multiscale_cam_flip_back_alignment() -> None:
    # A per-pixel model on a left/right asymmetric image: each pass must be flipped back, so the
    # flip-augmented result is exactly twice the single pass at scale 1.
    image = torch.linspace(0.0, 1.0, 10).expand(1, 3, 6, 10).contiguous()
    model = _Scale([1.0])
    flipped = multiscale_cam(model, image, scales=(1.0,), flip=True)
    single = multiscale_cam(model, image, scales=(1.0,), flip=False)
    torch.testing.assert_close(flipped, 2 * single)
    torch.testing.assert_close(single[0], image[0, 0])
    # Multi-scale: each pass equals the per-scale resize round trip.
    out = multiscale_cam(model, image, scales=(1.0, 0.5), flip=True)
    half = F.interpolate(image, size=(3, 5), mode="bilinear", align_corners=False)
    back = F.interpolate(half, size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[0], 2 * (image[0, 0] + back[0, 0]))


def test_multiscale_cam_downsampling_model_and_errors() -> None:
    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x[:, :1], 2)

    out = multiscale_cam(Pool(), torch.ones(1, 3, 8, 8), scales=(1.0, 2.0))
    torch.testing.assert_close(out, torch.full((1, 8, 8), 4.0))
    with pytest.raises(ValueError):
        multiscale_cam(Pool(), torch.ones(2, 3, 8, 8))
    with pytest.raises(ValueError):
        multiscale_cam(Pool(), torch.ones(1, 3, 8, 8), scales=())


def _seam_infer_normalisation(sum_cam: np.ndarray) -> np.ndarray:
    """The lines of SEAM's infer_SEAM.py that normalise the summed CAMs (transcribed, numpy)."""
    sum_cam = sum_cam.copy()
    sum_cam[sum_cam < 0] = 0
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    return (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)


def test_minmax_normalisation_matches_seam_infer() -> None:
    from wsss.functional.cam import normalize_cam, normalize_cam_minmax

    gen = torch.Generator().manual_seed(0)
    cams = torch.randn(3, 7, 9, generator=gen, dtype=torch.float64) * 2
    cams[1] = cams[1].abs() + 0.5  # positive everywhere: min-max differs from max-normalisation
    cams[2, :, :4] = 0.0  # exact zeros
    ours = normalize_cam_minmax(cams.float())
    official = _seam_infer_normalisation(cams.float().numpy())
    assert ours.dtype == torch.float32 and ours.shape == cams.shape
    np.testing.assert_allclose(ours.numpy(), official, rtol=1e-6, atol=1e-7)
    assert float(ours[1].min()) < 0 < float(normalize_cam(cams.float())[1].min())  # floor removed
    assert float(ours[0].max()) == pytest.approx(1.0, abs=1e-4)


def test_cam_inference_normalize_option() -> None:
    from wsss.functional.cam import normalize_cam_minmax
    from wsss.pipeline.cam_inference import CAMInference

    class Fixed(torch.nn.Module):
        def cam(self, x: torch.Tensor) -> torch.Tensor:  # 2 classes, positive everywhere for class 1
            b, _, h, w = x.shape
            ramp = torch.linspace(0, 1, w).expand(b, 1, h, w)
            return torch.cat([ramp, ramp + 0.5], 1)

    batch = {"name": ["a"], "image": torch.zeros(1, 3, 8, 8), "labels": torch.tensor([[1.0, 1.0]])}
    out = CAMInference(Fixed(), [1.0], flip=False, normalize="minmax").predict_step(batch, 0)[0]
    expected = normalize_cam_minmax(Fixed().cam(batch["image"])[0])
    torch.testing.assert_close(out["cams"], expected)
    assert float(out["cams"][1].min()) < 0  # the +0.5 floor is removed, unlike max-normalisation
    with pytest.raises(ValueError, match="stages.make_cam.normalize"):
        CAMInference(Fixed(), [1.0], flip=False, normalize="softmax")
