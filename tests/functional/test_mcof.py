"""MCOF's region operations on hand-made superpixels."""

from __future__ import annotations

import pytest
import torch

from wsss.functional.mcof import (
    bayes_saliency_refine,
    paint_regions,
    region_majority,
    region_pool,
    seed_region_labels,
)

# 2 x 4 image, three regions: left column pair, middle four pixels, right column pair
SEGMENTS = torch.tensor([[0, 1, 1, 2],
                         [0, 1, 1, 2]])


def test_region_pool_means_and_upsampling() -> None:
    values = torch.tensor([[[1.0, 2.0, 4.0, 8.0],
                            [3.0, 2.0, 0.0, 8.0]]])  # (1, 2, 4)
    pooled = region_pool(values, SEGMENTS)
    assert pooled.shape == (3, 1)
    assert pooled[:, 0].tolist() == [2.0, 2.0, 8.0]
    # a (C, 1, 1) map upsamples to a constant: every region gets it; extra empty region -> 0
    const = region_pool(torch.full((2, 1, 1), 5.0), SEGMENTS, num_regions=4)
    assert const.shape == (4, 2) and const[:3].eq(5.0).all() and const[3].eq(0).all()
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        region_pool(torch.zeros(2, 4), SEGMENTS)


def test_region_majority_ignores_255_and_breaks_ties_low() -> None:
    label = torch.tensor([[3, 0, 255, 255],
                          [0, 0, 5, 255]])
    # region 0: {3, 0} tie -> 0; region 1: {0, 255, 0, 5} -> 0; region 2: all ignored -> 255
    assert region_majority(label, SEGMENTS).tolist() == [0, 0, 255]
    label[0, 1] = label[1, 1] = 5
    assert region_majority(label, SEGMENTS).tolist() == [0, 5, 255]


def test_seed_region_labels_with_unsure_band() -> None:
    scores = torch.tensor([[0.9, 0.1],    # class 7 (keys[0]) sure
                           [0.2, 0.5],    # class 2 at 0.5: within 0.4 +- 0.15 -> unsure
                           [0.1, 0.2],    # background
                           [0.3, 0.6]])   # class 2 sure
    keys = torch.tensor([7, 2])
    assert seed_region_labels(scores, keys, 0.4, margin=0.15).tolist() == [8, 255, 0, 3]
    assert seed_region_labels(scores, keys, 0.4).tolist() == [8, 3, 0, 3]
    assert seed_region_labels(torch.zeros(3, 0), torch.zeros(0), 0.4).tolist() == [0, 0, 0]


def test_bayes_refine_and_paint() -> None:
    prior = torch.tensor([0.5, 0.2, 0.9, 0.3])
    sal = torch.tensor([0.9, 0.5, 0.1, 0.9])
    post = bayes_saliency_refine(prior, sal)
    assert post[0] == pytest.approx(0.9, abs=1e-5)      # flat prior: saliency decides
    assert post[1] == pytest.approx(0.2, abs=1e-5)      # uninformative saliency: prior kept
    assert post[2] == pytest.approx(0.5, abs=1e-5)      # 0.9*0.1 / (0.09 + 0.1*0.9)
    assert post[3] == pytest.approx(0.27 / (0.27 + 0.07), abs=1e-5)  # recovered salient region
    painted = paint_regions(torch.tensor([4, 0, 255]), SEGMENTS)
    assert painted.tolist() == [[4, 0, 0, 255], [4, 0, 0, 255]]
    with pytest.raises(ValueError, match="only 2 labels"):
        paint_regions(torch.tensor([1, 2]), SEGMENTS)
