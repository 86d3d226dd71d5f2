"""Hand-computed checks of the EPS saliency loss (docs/methods.md, "EPS", ``EPS:eps.py``)."""

from __future__ import annotations

import pytest
import torch

from wsss.functional.eps import eps_overlap_ratio, eps_saliency_estimate, eps_saliency_loss


def _logits(*pixels: list[float]) -> torch.Tensor:
    """(1, C + 1, 1, W) raw maps whose softmax over channels is the given per-pixel probs."""
    return torch.tensor(pixels).log().T[None, :, None, :].contiguous()


def _row(*values: float) -> torch.Tensor:
    return torch.tensor(values)[None, None, None, :]


# two classes + background LAST; softmax at pixel 0 = [.7, .2, .1], pixel 1 = [.1, .6, .3]
CAM = _logits([0.7, 0.2, 0.1], [0.1, 0.6, 0.3])


def test_overlap_ratio_uses_per_pixel_epsilon() -> None:
    probs = _row(0.9, 0.8)  # round -> [1, 1]
    sal = _row(1.0, 0.0)
    # r = 1 / (1 + 1 + 2 * 1e-4): the 1e-4 is added per pixel before the sum
    torch.testing.assert_close(eps_overlap_ratio(probs, sal), torch.tensor([[1 / 2.0002]]))
    # round half to even: 0.5 counts as background
    assert eps_overlap_ratio(_row(0.5), _row(1.0)).item() == 0.0


def test_both_classes_present() -> None:
    # round(P_0) = [1, 0], round(P_1) = [0, 1], round(S) = [1, 0]
    # r_0 = 1 / 1.0002 > 0.5 -> foreground; r_1 = 0 -> background set with the bg channel
    # fg = [.7, .1]; bg = P_1 + P_bg = [.3, .9]; S_hat = .5 fg + .5 (1 - bg) = [.7, .1]
    sal = _row(0.9, 0.2)
    loss, est = eps_saliency_loss(CAM, sal, torch.tensor([[1.0, 1.0]]), return_map=True)
    torch.testing.assert_close(est, _row(0.7, 0.1))
    # MSE = (.2^2 + .1^2) / 2
    torch.testing.assert_close(loss, torch.tensor(0.025))


@pytest.mark.parametrize(("lam", "expected"), [(0.5, (0.8, 0.4)), (0.9, (0.72, 0.16))])
def test_absent_class_in_neither_set(lam: float, expected: tuple[float, float]) -> None:
    # class 1 absent: fg = P_0 = [.7, .1], bg = P_bg = [.1, .3] -> 1 - bg = [.9, .7]
    est = eps_saliency_estimate(CAM, _row(0.9, 0.2), torch.tensor([[1.0, 0.0]]), lam=lam)
    torch.testing.assert_close(est, _row(*expected))


@pytest.mark.parametrize(("tau", "expected"), [(0.5, 0.4765625), (0.4, 0.3640625)])
def test_tau_moves_class_between_sets(tau: float, expected: float) -> None:
    cam = _logits([0.9, 0.05, 0.05], [0.8, 0.1, 0.1])
    sal = _row(1.0, 0.0)
    # r_0 = 1 / 2.0002 = 0.49995
    # tau .5: class 0 joins bg -> bg = [.95, .9], S_hat = .5 (1 - bg) = [.025, .05]
    #         MSE = (.975^2 + .05^2) / 2 = .4765625
    # tau .4: fg = [.9, .8], 1 - bg = [.95, .9] -> S_hat = [.925, .85]
    #         MSE = (.075^2 + .85^2) / 2 = .3640625
    loss = eps_saliency_loss(cam, sal, torch.tensor([[1.0, 0.0]]), tau=tau)
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_saliency_nearest_resize_and_gradient() -> None:
    # (2, 4) -> (1, 2) nearest picks [0, 0] and [0, 2]: [.9, .2] as in test_both_classes_present
    sal = torch.tensor([[[[0.9, 0.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
    cam = CAM.clone().requires_grad_()
    loss = eps_saliency_loss(cam, sal, torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(loss, torch.tensor(0.025))
    loss.backward()
    assert cam.grad is not None and torch.isfinite(cam.grad).all()


def test_float32_and_shape_checks() -> None:
    loss = eps_saliency_loss(CAM.half(), _row(0.9, 0.2).half(), torch.tensor([[1, 1]]))
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match="labels"):
        eps_saliency_loss(CAM, _row(0.9, 0.2), torch.tensor([[1.0, 1.0, 1.0]]))
