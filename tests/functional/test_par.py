"""PAR: neighbour weights and propagation on hand-made images."""

from __future__ import annotations

import math

import torch

from wsss.functional.par import dilated_neighbours, par_affinity, par_refine


def test_neighbours_are_the_eight_surrounding_pixels() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    n = dilated_neighbours(x, [1])
    assert n.shape == (1, 1, 8, 5, 5)
    assert n[0, 0, :, 2, 2].tolist() == [6, 7, 8, 11, 13, 16, 17, 18]
    assert n[0, 0, :, 2, 2].tolist() != dilated_neighbours(x, [2])[0, 0, :, 2, 2].tolist()
    assert dilated_neighbours(x, [2])[0, 0, :, 2, 2].tolist() == [0, 2, 4, 10, 14, 20, 22, 24]


def test_constant_image_gives_uniform_weights_and_scales_a_constant_mask() -> None:
    image = torch.full((1, 3, 12, 12), 0.5)
    aff = par_affinity(image, dilations=[1, 2])
    # no colour contrast: softmax of zeros = 1/16 per neighbour; plus w2 x the position softmax
    ring = torch.tensor([math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)])
    pos = torch.cat([ring, 2 * ring])
    pos_aff = -(pos / pos.std() / 0.3) ** 2
    expected = 1 / 16 + 0.01 * pos_aff.softmax(0)
    assert torch.allclose(aff[0, 0, :, 5, 5], expected, atol=1e-6)
    assert torch.allclose(aff.sum(dim=2), torch.full((1, 1, 12, 12), 1.01))
    mask = torch.full((1, 2, 6, 6), 0.25)
    refined = par_refine(image, mask, dilations=[1, 2], num_iter=3)
    assert refined.shape == (1, 2, 12, 12)
    assert torch.allclose(refined, torch.full_like(refined, 0.25 * 1.01 ** 3), atol=1e-6)


def test_scores_do_not_leak_across_a_colour_edge() -> None:
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0  # left black, right white
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0
    refined = par_refine(image, mask, dilations=[1, 2], num_iter=5)
    assert refined[..., :6].min() > 0.9
    assert refined[..., 10:].max() < 0.05
