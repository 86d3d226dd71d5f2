"""Iterative self-training after the CAM chain, on a tiny generated tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsss.io import load_label_png, read_json
from wsss.pipeline.runner import run_pipeline

STAGES = ["train_cls", "make_cam", "eval_cam", "make_pseudo_labels", "self_train", "eval_seg"]
TINY_ITER = [
    "pipeline=iterative",
    "stages.self_train.rounds=2",
    "stages.self_train.max_epochs=1",
    "stages.self_train.crop_size=48",
    "stages.self_train.num_workers=0",
    "stages.self_train.crf=true",
    "stages.self_train.crf_params.n_iter=2",
    "stages.self_train.confidence=0.3",
    "stages.self_train.superpixel_params.n_segments=30",
    "stages.eval_seg.num_examples=0",
    "stages.eval_seg.crf=false",
]


def _in_unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


@pytest.mark.slow
def test_iterative_rounds_write_labels_models_and_per_round_metrics(tiny_cfg, tmp_path) -> None:
    run_dir = tmp_path / "run"
    results = run_pipeline(tiny_cfg(*TINY_ITER), run_dir)
    assert list(results) == STAGES
    st = results["self_train"]
    stage_dir = run_dir / "stages/self_train"
    assert json.loads((stage_dir / "metrics.json").read_text())["stage"] == "self_train"
    assert st["rounds"] == 2 and len(st["round_metrics"]) == 2
    for k in range(2):
        round_dir = stage_dir / f"round_{k}"
        assert (round_dir / "model.pt").is_file()
        assert read_json(round_dir / "metrics.json")["round"] == k
        for key in ("pseudo_miou", "pred_miou", "refined_miou", "val_miou"):
            assert _in_unit(st[f"{key}_round_{k}"]), (key, k)
        labels = sorted((round_dir / "labels").glob("*.png"))
        assert len(labels) == results["make_pseudo_labels"]["num_images"]
        assert set(np.unique(load_label_png(labels[0])).tolist()) <= set(range(21)) | {255}
        assert 0.0 <= st["round_metrics"][k]["ignored_fraction"] <= 1.0
        # match_foreground: predictions rescaled to the foreground fraction of this round's labels
        rm = st["round_metrics"][k]
        assert rm["target_fg_fraction"] == pytest.approx(rm["collapse_label_fg_fraction"])
        assert rm["background_scale"] > 0 and rm["collapse_collapsed"] in (True, False)
    # Round 0 trains on make_pseudo_labels' output, round 1 on round 0's refined predictions.
    assert st["pseudo_miou_round_0"] == pytest.approx(results["make_pseudo_labels"]["miou_crf"], abs=1e-6)
    assert st["pseudo_miou_round_1"] == pytest.approx(st["refined_miou_round_0"], abs=1e-6)
    assert st["round_metrics"][1]["train_labels"].endswith("round_0/labels")
    assert (stage_dir / "model.pt").is_file() and 0 <= st["best_round"] < 2
    # select_round=holdout: the stage's model is the round with the best held-out mIoU (first on ties)
    held = [st[f"holdout_miou_round_{k}"] for k in range(2)]
    assert all(_in_unit(v) for v in held) and st["select_round"] == "holdout"
    assert st["selected_round"] == int(np.argmax(held))
    assert st["val_miou"] == st[f"val_miou_round_{st['selected_round']}"]
    kept = torch.load(stage_dir / "model.pt", weights_only=True)
    chosen = torch.load(stage_dir / f"round_{st['selected_round']}/model.pt", weights_only=True)
    other = torch.load(stage_dir / f"round_{1 - st['selected_round']}/model.pt", weights_only=True)
    assert kept.keys() == chosen.keys() and all(torch.equal(kept[k], chosen[k]) for k in kept)
    assert not all(torch.equal(kept[k], other[k]) for k in kept)
    assert _in_unit(results["eval_seg"]["miou"])

    # Rerun in the same run dir with one more round: rounds 0-1 are reused, only round 2 trains.
    model_time = (stage_dir / "round_0/model.pt").stat().st_mtime_ns
    more = tiny_cfg(*TINY_ITER, "stages.self_train.rounds=3", "pipeline.only=[self_train]",
                    "pipeline.skip_done=false")
    again = run_pipeline(more, run_dir)["self_train"]
    assert again["rounds"] == 3 and "val_miou_round_2" in again
    assert again["val_miou_round_0"] == st["val_miou_round_0"]
    assert (stage_dir / "round_0/model.pt").stat().st_mtime_ns == model_time
    assert (stage_dir / "round_2/model.pt").is_file()

    # select_round=last: same rounds (reused, not retrained), the last one is kept.
    last = run_pipeline(tiny_cfg(*TINY_ITER, "stages.self_train.rounds=3", "stages.self_train.select_round=last",
                                 "pipeline.only=[self_train]", "pipeline.skip_done=false"), run_dir)["self_train"]
    assert last["selected_round"] == 2 and last["val_miou"] == again["val_miou_round_2"]
    assert (stage_dir / "round_0/model.pt").stat().st_mtime_ns == model_time
    kept = torch.load(stage_dir / "model.pt", weights_only=True)
    final = torch.load(stage_dir / "round_2/model.pt", weights_only=True)
    assert all(torch.equal(kept[k], final[k]) for k in kept)


def test_unknown_round_selection_is_rejected_before_training(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(*TINY_ITER, "stages.self_train.select_round=best_val")
    with pytest.raises(ValueError, match="select_round"):
        run_pipeline(cfg, tmp_path / "x")
    assert not (tmp_path / "x" / "stages").exists()


def test_zero_rounds_is_rejected(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg(*TINY_ITER, "stages.self_train.rounds=0", "pipeline.only=[self_train]")
    with pytest.raises(ValueError, match="rounds"):
        run_pipeline(cfg, tmp_path / "x")
