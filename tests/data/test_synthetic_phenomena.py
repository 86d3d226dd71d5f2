"""Synthetic phenomenon knobs and the SyntheticMeta sidecar: defaults leave every VOC file as
before, the sidecar matches the masks and is added to older trees, knobs get their own root."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.synthetic import (
    BACKGROUNDS,
    MARKER,
    META_DIR,
    STYLES,
    context_table,
    ensure_synthetic_voc,
    generate_voc,
    load_synthetic_meta,
    synthetic_root,
    typical_context,
)

FOLDERS = ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "SegmentationObject", "SALImages",
           "Annotations", "ImageSets")
# Digests of generate_voc(root, 6, 3, (64, 48), seed=0) made by the generator before the knobs and
# the sidecar existed (decoded pixels of images and masks, bytes of XML and split files): the
# README numbers were measured on trees made by it, so the default tree must not change.
BEFORE_KNOBS = {"JPEGImages": "1e01cc2e77472318", "SegmentationClass": "3490515569175c2f",
                "SegmentationClassAug": "09e3f81d68de2e4d", "SegmentationObject": "57b92e8429c8345b",
                "SALImages": "ef72bab86b917e2a", "Annotations": "80a4d0bd52d56187", "ImageSets": "70d17558cc5cacdf"}
KW = {"image_size": (64, 48), "seed": 0, "progress": False}


def digests(root: Path) -> dict[str, str]:
    out = {}
    for folder in FOLDERS:
        h = hashlib.sha256()
        for path in sorted((root / folder).rglob("*.*")):
            h.update(path.name.encode())
            if path.suffix in (".jpg", ".png"):
                with Image.open(path) as image:
                    h.update(np.ascontiguousarray(np.array(image)).tobytes())
            else:
                h.update(path.read_bytes())
        out[folder] = h.hexdigest()[:16]
    return out


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_voc(tmp_path_factory.mktemp("syn") / "VOC2012", 6, 3, **KW)


def test_default_knobs_leave_every_voc_file_as_before(tree: Path) -> None:
    assert digests(tree) == BEFORE_KNOBS
    marker = json.loads((tree / MARKER).read_text())
    assert marker["key_part_contrast"] == 1.0 and marker["context_strength"] == 1.0


def test_sidecar_parts_and_kinds_match_the_masks(tree: Path) -> None:
    meta = load_synthetic_meta(tree)
    assert meta.backgrounds == BACKGROUNDS and meta.knobs == {"key_part_contrast": 1.0, "context_strength": 1.0}
    # typical context = the class's most likely background: boat (VOC value 4) -> water
    assert meta.typical[4] == BACKGROUNDS.index("water") and meta.typical[1] == BACKGROUNDS.index("sky")
    info = json.loads((tree / META_DIR / "meta.json").read_text())
    ids = sorted(p.stem for p in (tree / "JPEGImages").glob("*.jpg"))
    assert sorted(info["images"]) == ids
    key_px = 0
    for image_id in ids:
        aug = load(tree / "SegmentationClassAug" / f"{image_id}.png")
        parts, kinds = meta.parts(image_id), meta.kinds(image_id)
        assert parts.shape == kinds.shape == aug.shape
        assert np.array_equal(parts > 0, aug > 0)  # parts cover exactly the visible objects
        assert set(np.unique(parts)) <= {0, 1, 2, 3} and kinds.max() < len(BACKGROUNDS)
        kind = BACKGROUNDS.index(info["images"][image_id]["background"])
        assert kind in np.unique(kinds) and set(np.unique(kinds)) <= {kind, BACKGROUNDS.index("sky")}
        key_px += int((parts == 2).sum())
    assert key_px > 0


def test_sidecar_is_added_to_an_older_tree_without_touching_it(tree: Path, tmp_path: Path) -> None:
    old = tmp_path / "VOC2012"
    shutil.copytree(tree, old)
    shutil.rmtree(old / META_DIR)
    marker = json.loads((old / MARKER).read_text())
    for key in ("key_part_contrast", "context_strength"):  # a marker from before the knobs
        marker.pop(key)
    (old / MARKER).write_text(json.dumps(marker))
    stamps = {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()}
    assert ensure_synthetic_voc(old, 6, 3, **KW) == old  # same settings: reused, sidecar added
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    for path in sorted((tree / META_DIR).rglob("*.*")):
        assert path.read_bytes() == (old / path.relative_to(tree)).read_bytes(), path


def test_knobs_get_their_own_root_and_are_checked(tree: Path) -> None:
    root = Path("/data/synthetic_voc/VOC2012")
    assert synthetic_root(root) == root
    assert synthetic_root(root, key_part_contrast=0.3) == Path("/data/synthetic_voc_kpc0.3_ctx1/VOC2012")
    assert synthetic_root(root, context_strength=0) == Path("/data/synthetic_voc_kpc1_ctx0/VOC2012")
    with pytest.raises(ValueError, match="knobs"):
        synthetic_root(root, context_strength=1.5)
    with pytest.raises(ValueError, match="context_strength"):
        ensure_synthetic_voc(tree, 6, 3, **KW, context_strength=0.0)  # a default tree is not reused


def test_context_table_blends_towards_uniform() -> None:
    boat = STYLES["boat"]
    assert context_table(boat, 1.0) is boat.context
    assert context_table(boat, 0.0) == pytest.approx((1 / 6,) * 6)
    half = context_table(boat, 0.5)
    assert half[BACKGROUNDS.index("water")] == pytest.approx(0.5 * 0.92 + 0.5 / 6)
    assert typical_context("train") == "rails" and typical_context("dog") is None  # flat table


def test_key_part_contrast_changes_only_the_body_colours(tree: Path, tmp_path: Path) -> None:
    low = generate_voc(tmp_path / "kpc" / "VOC2012", 6, 3, **KW, key_part_contrast=0.0)
    meta = load_synthetic_meta(tree)
    changed = 0.0
    for image_id in sorted(p.stem for p in (tree / "JPEGImages").glob("*.jpg")):
        # same random stream: same scenes, masks and parts; the body now carries the texture
        assert np.array_equal(load(low / "SegmentationClassAug" / f"{image_id}.png"),
                              load(tree / "SegmentationClassAug" / f"{image_id}.png"))
        parts = meta.parts(image_id)
        a = load(tree / "JPEGImages" / f"{image_id}.jpg").astype(float)
        b = load(low / "JPEGImages" / f"{image_id}.jpg").astype(float)
        diff = np.abs(a - b).mean(-1)
        assert diff[parts == 1].mean() > 3 * max(diff[parts == 0].mean(), 1.0)
        changed += diff[parts == 1].mean()
    assert changed > 0
