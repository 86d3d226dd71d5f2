from __future__ import annotations

import numpy as np

from wsss.data.labels import channels_to_label, multi_hot_from_mask, voc_palette


def test_channels_map_through_keys_and_keep_ignore() -> None:
    channel = np.array([[0, 1, 2], [255, 2, 0]])
    label = channels_to_label(channel, np.array([4, 14]))  # channel 1 = bottle, 2 = person
    assert label.dtype == np.uint8
    assert label.tolist() == [[0, 5, 15], [255, 15, 0]]


def test_palette_and_multi_hot() -> None:
    palette = voc_palette()
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person
    hot = multi_hot_from_mask(np.array([[0, 5, 255], [15, 15, 0]]), 20)
    assert np.flatnonzero(hot).tolist() == [4, 14]
