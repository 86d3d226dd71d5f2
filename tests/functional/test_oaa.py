"""Hand-computed checks of OAA accumulation, IAM loss and attention drop (docs/methods.md, "OAA")."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from wsss.functional.oaa import (
    AttentionAccumulator,
    accumulate_attention,
    attention_drop,
    normalize_attention,
    oaa_iam_loss,
    oaa_topk_filter,
)
from wsss.io import load_npz


def test_normalize_and_accumulate() -> None:
    att = torch.tensor([[-1.0, 2.0], [4.0, 1.0]])
    # ReLU -> [0, 2, 4, 1] / (4 + 1e-8)
    expected = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    torch.testing.assert_close(normalize_attention(att), expected)
    torch.testing.assert_close(accumulate_attention(None, att), expected)
    prev = torch.tensor([[0.9, 0.0], [0.0, 0.0]])
    fused = torch.tensor([[0.9, 0.5], [1.0, 0.25]])
    torch.testing.assert_close(accumulate_attention(prev, att), fused)


def test_topk_filter() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 5.0], [9.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    # row 0: K = 2, top-2 = {0, 2} -> only class 0 passes; row 1: K = 1, top = 3; row 2: none
    t, f = True, False
    expected = torch.tensor([[t, f, f, f], [f, f, f, t], [f, f, f, f]])
    assert torch.equal(oaa_topk_filter(logits, labels), expected)


def test_iam_loss_hand_computed() -> None:
    pred = torch.tensor([0.0, math.log(3.0), 0.0, 0.0]).view(1, 1, 1, 4)
    target = torch.tensor([0.5, 1.0, 0.001, 0.0]).view(1, 1, 1, 4)  # 0.001 is not > 0.001
    # pos: -(0.5 log .5 + 1 log .75) / 2; neg: 2 * -log(.5 + 1e-8) / 2
    pos = (0.5 * math.log(2.0) + math.log(4.0 / 3.0)) / 2
    neg = -math.log(0.5 + 1e-8)
    torch.testing.assert_close(oaa_iam_loss(pred, target), torch.tensor(pos + neg))
    # no positives -> only the negative term
    zeros = torch.zeros(1, 1, 1, 2)
    torch.testing.assert_close(oaa_iam_loss(zeros, zeros), torch.tensor(-math.log(0.5 + 1e-8)))
    with pytest.raises(ValueError):
        oaa_iam_loss(zeros, torch.zeros(1, 2, 1, 2))


def test_attention_drop() -> None:
    image = torch.ones(2, 3, 4, 4)
    att = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(2, 1, 2, 2)
    # bilinear 2 -> 4 (align_corners=False): weights of the top-left source pixel per axis are
    # [1, .75, .25, 0], so the 2D values are their outer product; > 0.6 at (0,0), (0,1), (1,0)
    dropped = torch.zeros(4, 4, dtype=torch.bool)
    dropped[0, 0] = dropped[0, 1] = dropped[1, 0] = True
    out = attention_drop(image, att, threshold=0.6, p=1.0)
    assert torch.equal(out == 0, dropped.expand(2, 3, 4, 4))
    assert torch.equal(attention_drop(image, att, p=0.0), image)
    assert torch.equal(image, torch.ones(2, 3, 4, 4))  # input untouched

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = attention_drop(image, att, generator=g1), attention_drop(image, att, generator=g2)
    assert torch.equal(a, b)
    draws = torch.rand(2, generator=torch.Generator().manual_seed(3)) < 0.5
    for i in range(2):
        assert bool((a[i] == 0).any()) == bool(draws[i])


def _maps(values: dict[int, list[float]]) -> torch.Tensor:
    """(1, 2, 1, 2) class maps from {class: [v0, v1]} (missing classes are zero)."""
    out = torch.zeros(1, 2, 1, 2)
    for c, v in values.items():
        out[0, c, 0] = torch.tensor(v)
    return out


# per-epoch, per-image inputs: (labels, raw maps, top-K mask); last epoch index is 3
LABELS = {"a": [1, 1], "b": [0, 1]}
MAPS = {
    1: {"a": {0: [2.0, 4.0], 1: [9.0, 9.0]}, "b": {1: [1.0, 0.0]}},
    2: {"a": {0: [3.0, 1.0], 1: [9.0, 9.0]}, "b": {1: [0.0, 2.0]}},
    3: {"a": {0: [0.0, 1.0], 1: [0.0, 5.0]}, "b": {1: [1.0, 1.0]}},
}
TOPK = {"a": [True, False], "b": [False, True]}  # class 1 of "a" never passes the filter


def _run(order: list[str], batch: int) -> AttentionAccumulator:
    acc = AttentionAccumulator(keep_latest=True)
    for epoch in range(4):
        for start in range(0, len(order), batch):
            ids = order[start:start + batch]
            maps = torch.cat([_maps(MAPS.get(epoch, MAPS[1])[i]) for i in ids])
            labels = torch.tensor([LABELS[i] for i in ids])
            topk = torch.tensor([TOPK[i] for i in ids])
            acc.update(ids, labels, maps, epoch=epoch, last_epoch=3, topk_mask=topk)
    return acc


def test_accumulator_rule() -> None:
    acc = AttentionAccumulator()
    acc.update(["a"], torch.tensor([[1, 1]]), _maps({0: [2.0, 4.0]}), epoch=0, last_epoch=3,
               topk_mask=torch.tensor([[True, True]]))
    assert len(acc) == 0  # epoch 0 is skipped

    acc = _run(["a", "b"], batch=2)
    # a/0: epoch 1 [.5, 1], epoch 2 [1, 1/3], epoch 3 [0, 1] -> max [1, 1]
    torch.testing.assert_close(acc.maps[("a", 0)], torch.tensor([1.0, 1.0])[None])
    # a/1 never passes the filter -> written once, unfiltered, in the last epoch: [0, 1]
    torch.testing.assert_close(acc.maps[("a", 1)], torch.tensor([0.0, 1.0])[None])
    # b/1: [1, 0], [0, 1], [1, 1] -> max [1, 1]; b/0 is not a gt class
    torch.testing.assert_close(acc.maps[("b", 1)], torch.tensor([1.0, 1.0])[None])
    assert ("b", 0) not in acc.maps
    # latest = most recent filtered current map; the last-epoch fallback is not one
    torch.testing.assert_close(acc.latest[("a", 0)], torch.tensor([0.0, 1.0])[None])
    assert ("a", 1) not in acc.latest
    assert sorted(acc.get("a")) == [0, 1]


def test_accumulator_is_data_order_independent() -> None:
    ref = _run(["a", "b"], batch=2).state_dict()
    other = _run(["b", "a"], batch=1).state_dict()
    assert ref["maps"].keys() == other["maps"].keys()
    for key in ref["maps"]:
        assert torch.equal(ref["maps"][key], other["maps"][key])


def test_accumulator_state_dict_and_npz(tmp_path: Path) -> None:
    acc = _run(["a", "b"], batch=2)
    buffer = io.BytesIO()
    torch.save(acc.state_dict(), buffer)
    buffer.seek(0)
    restored = AttentionAccumulator()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.maps.keys() == acc.maps.keys()
    assert all(torch.equal(restored.maps[k], acc.maps[k]) for k in acc.maps)

    paths = acc.save_npz(tmp_path)
    assert sorted(p.name for p in paths) == ["a.npz", "b.npz"]
    a = load_npz(tmp_path / "a.npz")
    assert a["keys"].tolist() == [0, 1] and a["maps"].shape == (2, 1, 2)
    assert a["maps"].dtype.name == "float32"
    assert a["maps"][1].tolist() == [[0.0, 1.0]]
    assert load_npz(tmp_path / "b.npz")["keys"].tolist() == [1]


def test_proxy_labels_hand_made() -> None:
    """OAA gen_gt on a 2x4 image, two classes; each pixel exercises one rule."""
    from wsss.functional.oaa import oaa_proxy_labels

    # saliency in [0, 1]
    sal = torch.tensor([[0.0, 0.0, 1.0, 1.0],
                        [0.2, 0.9, 0.05, 1.0]])
    # class 4 and class 1 (given out of order); attention already in [0, 1] (min 0, max 1)
    att4 = torch.tensor([[0.0, 0.0, 0.95, 0.5],
                         [0.0, 0.2, 0.0, 1.0]])
    att1 = torch.tensor([[0.0, 0.0, 0.2, 0.95],
                         [0.0, 0.0, 0.0, 1.0]])
    label = oaa_proxy_labels(sal, torch.stack([att4, att1]), torch.tensor([4, 1]))
    expected = torch.tensor([
        # bg 1.0 | bg 1.0 | class 4 (0.95 > 0.2, bg 0) | class 1 0.95 > 0.5
        [0, 0, 5, 2],
        # bg 0.8 with sal 0.2 >= 32/255 -> ignored | bg score 0.1 -> 0, att 0.2 -> 0: all zero ->
        # background, but salient (0.9) -> ignored | bg 0.95, sal 0.05 < 0.125 -> background |
        # both classes 1.0 > 0.9: conflict -> ignored
        [255, 255, 0, 255],
    ], dtype=torch.uint8)
    assert torch.equal(label, expected)


def test_proxy_labels_attention_makes_background_unsure_and_small_fg_is_dropped() -> None:
    from wsss.functional.oaa import oaa_proxy_labels

    sal = torch.zeros(10, 10)  # no saliency at all
    att = torch.zeros(1, 10, 10)
    att[0, 0, 0] = 1.0  # one confident pixel: attention > 0.8 makes it salient, bg score 1 wins
    att[0, 0, 1] = 0.5
    label = oaa_proxy_labels(sal, att, torch.tensor([2]))
    # bg score 1.0 beats attention everywhere, but pixel (0, 0) is salient by attention -> ignored;
    # no labelled foreground (< 1 %) -> the whole image is ignored
    assert (label == 255).all()
    label = oaa_proxy_labels(sal, att, torch.tensor([2]), min_foreground=0.0)
    assert label[0, 0] == 255 and label[0, 1] == 0 and (label[1:] == 0).all()
    # min-max normalisation: an attention offset by a constant gives the same labels
    sal2 = torch.ones(4, 4) * 0.9
    att2 = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = oaa_proxy_labels(sal2, att2, torch.tensor([0]))
    b = oaa_proxy_labels(sal2, att2 * 3 + 7, torch.tensor([0]))
    assert torch.equal(a, b) and a.dtype == torch.uint8
    with pytest.raises(ValueError, match="expected saliency"):
        oaa_proxy_labels(sal2, att2, torch.tensor([0, 1]))
