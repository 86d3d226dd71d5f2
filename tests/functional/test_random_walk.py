import pytest
import torch

from wsss.functional.affinity import neighbour_offsets
from wsss.functional.random_walk import (
    boundary_affinity,
    irn_scores_to_label,
    irn_semantic_scores,
    path_indices,
    random_walk_from_boundary,
    random_walk_from_features,
    transition_matrix,
    upsample_scores,
)


def test_path_indices_exact_integer_test() -> None:
    offsets = neighbour_offsets(6)
    path = path_indices(6)[offsets.index((3, 4))]
    # (3x - 4y)^2 < 25 inside the box [0,3]x[0,4]; (1,3) and (2,1) sit at distance exactly 1.
    assert (1, 3) not in path and (2, 1) not in path
    assert path == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4))
    assert path_indices(2)[0] == ((0, 0), (0, 1))
    assert path_indices(2)[1] == ((0, -1), (0, 0), (1, -1), (1, 0))  # offset (1, -1)
    assert path_indices(6) is path_indices(6)  # cached, immutable


def test_boundary_affinity_hand_computed() -> None:
    boundary = torch.tensor([[0.0, 0.5, 0.2]])
    aff = boundary_affinity(boundary, radius=3)
    offsets = neighbour_offsets(3)
    row = aff[offsets.index((0, 1)), 0]
    assert torch.allclose(row, torch.tensor([0.5, 0.5, 0.0]))  # last target is outside
    assert torch.allclose(aff[offsets.index((0, 2)), 0], torch.tensor([0.5, 0.0, 0.0]))


def _dense_walk(seeds: torch.Tensor, aff: dict, n: int, beta: float, logt: int) -> torch.Tensor:
    a = torch.eye(n, dtype=torch.float64)
    for (i, j), value in aff.items():
        a[i, j] = a[j, i] = value
    a = a**beta
    t = a / a.sum(0, keepdim=True)
    for _ in range(logt):
        t = t @ t
    return seeds.double().reshape(seeds.shape[0], -1) @ t


def _pairs(h: int, w: int, radius: int):
    for y in range(h):
        for x in range(w):
            for dy in range(-radius + 1, radius):
                for dx in range(-radius + 1, radius):
                    y2, x2 = y + dy, x + dx
                    if 0 < dy * dy + dx * dx < radius**2 and 0 <= y2 < h and 0 <= x2 < w:
                        yield (y, x), (y2, x2)


def test_feature_walk_matches_dense_reference() -> None:
    torch.manual_seed(0)
    h, w, radius, beta, logt = 5, 6, 3, 8, 4
    feats = torch.rand(3, h, w) * 0.5
    seeds = torch.rand(2, h, w)
    aff = {}
    for (y, x), (y2, x2) in _pairs(h, w, radius):
        dist = (feats[:, y, x] - feats[:, y2, x2]).abs().mean().double()
        aff[(y * w + x, y2 * w + x2)] = torch.exp(-dist)
    dense = _dense_walk(seeds, aff, h * w, beta, logt).float().view(2, h, w)
    sparse = random_walk_from_features(seeds, feats, radius=radius, beta=beta, logt=logt)
    assert torch.allclose(sparse, dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h, w, radius", [(6, 5, 4), (3, 2, 5)])  # (3, 2): map narrower than r
def test_boundary_walk_matches_dense_reference(h: int, w: int, radius: int) -> None:
    torch.manual_seed(1)
    beta, exp_times = 10, 3
    boundary = torch.rand(h, w) * 0.3
    seeds = torch.rand(3, h, w)
    aff = {}
    for (y, x), (y2, x2) in _pairs(h, w, radius):
        dy, dx = y2 - y, x2 - x
        on_path = [
            boundary[yy, xx]
            for yy in range(min(y, y2), max(y, y2) + 1)
            for xx in range(min(x, x2), max(x, x2) + 1)
            if (dy * (xx - x) - dx * (yy - y)) ** 2 < dy * dy + dx * dx
        ]
        aff[(y * w + x, y2 * w + x2)] = 1 - max(on_path).double()
    dense = _dense_walk(seeds, aff, h * w, beta, exp_times).float().view(3, h, w)
    sparse = random_walk_from_boundary(seeds, boundary, radius, beta, exp_times)
    assert torch.allclose(sparse, dense, rtol=1e-4, atol=1e-5)


def test_boundary_line_blocks_mass() -> None:
    boundary = torch.zeros(7, 9)
    boundary[:, 4] = 1.0
    seeds = torch.zeros(1, 7, 9)
    seeds[0, :, :4] = torch.rand(7, 4) + 0.1
    out = random_walk_from_boundary(seeds, boundary)
    assert torch.all(out[0, :, 4:] == 0)
    assert torch.all(out[0, :, :4] > 0)
    # Left region is connected, so after 256 steps it is (nearly) flat.
    assert out[0, :, :4].std() < 1e-3


def test_uniform_field_stays_uniform() -> None:
    torch.manual_seed(2)
    seeds = torch.full((2, 12, 10), 0.7)
    out_b = random_walk_from_boundary(seeds, torch.rand(12, 10))
    out_f = random_walk_from_features(seeds, torch.rand(8, 12, 10), logt=5)
    # float32: T's columns sum to 1 only to a few ulp, and 256 mat-vecs compound that linearly
    # (measured max drift 1.1e-4 with AVX-512 kernels, below 1e-4 with AVX2); an unnormalised T
    # drifts by orders of magnitude more.
    assert torch.allclose(out_b, seeds, atol=3e-4)
    assert torch.allclose(out_f, seeds, atol=3e-4)


def test_irn_semantic_scores_attenuates_seeds() -> None:
    torch.manual_seed(3)
    cams, boundary = torch.rand(2, 6, 6), torch.rand(6, 6) * 0.5
    expected = random_walk_from_boundary(cams * (1 - boundary), boundary, exp_times=2)
    assert torch.allclose(irn_semantic_scores(cams, boundary, exp_times=2), expected)


def test_irn_scores_to_label_global_max() -> None:
    # Global max 2.0 -> class 4: [.05, .4, .15], class 11: [.1, .2, 1.0]; background 0.25.
    scores = torch.tensor([[[0.1, 0.8, 0.3]], [[0.2, 0.4, 2.0]]])
    label = irn_scores_to_label(scores, torch.tensor([4, 11]))
    assert label.tolist() == [[0, 5, 12]]
    assert irn_scores_to_label(torch.zeros(1, 2, 2), torch.tensor([0])).eq(0).all()


def test_upsample_scores_crops() -> None:
    up = upsample_scores(torch.rand(3, 4, 5), (13, 18))
    assert up.shape == (3, 13, 18)


def test_transition_matrix_int32_indices_and_stochastic_rows() -> None:
    # int32 CSR indices (faster mat-vecs); each row of T^T (a column of T) sums to 1.
    aff = boundary_affinity(torch.rand(9, 11) * 0.5, 5)
    t_t = transition_matrix(aff, 5, 10)
    assert t_t.col_indices().dtype == torch.int32 and t_t.crow_indices().dtype == torch.int32
    row_sums = torch.sparse.sum(t_t.to_sparse_coo(), dim=1).to_dense()
    assert torch.allclose(row_sums, torch.ones(99), atol=1e-6)
