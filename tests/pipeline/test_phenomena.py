"""Phenomenon measures of finished runs: the stages' own ``phenomena`` in metrics.json, the CLI
that recomputes them from the written label maps (same numbers), and the report table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsss.io import read_json
from wsss.pipeline.phenomena import main, measure_run
from wsss.pipeline.report import phenomena_table

KEYS = ("recall", "precision", "body_recall", "key_recall", "labelled_fraction", "context_fp",
        "context_fp_typical", "context_fp_other", "boundary_f", "num_images")


def metrics(run: Path, stage: str) -> dict:
    return read_json(run / "stages" / stage / "metrics.json")


def test_stages_write_phenomena_with_synthetic_parts(tiny_run: Path) -> None:
    labels = metrics(tiny_run, "make_pseudo_labels")
    for key in ("phenomena", "phenomena_plain"):
        values = labels[key]
        assert values["num_images"] == labels["num_evaluated"] > 0
        for name in ("recall", "precision", "body_recall", "context_fp", "context_fp_typical", "boundary_f"):
            assert 0.0 <= values[name] <= 1.0, (key, name)
    cam = metrics(tiny_run, "eval_cam")["phenomena"]
    assert cam["num_images"] == metrics(tiny_run, "eval_cam")["num_evaluated"]
    assert cam["labelled_fraction"] == 1.0  # a CAM label commits to every pixel
    seg = metrics(tiny_run, "eval_seg")  # tiny_run: ms+flip, no CRF -> single-scale and ms measured
    assert seg["phenomena"]["num_images"] == seg["phenomena_ms"]["num_images"] == seg["num_evaluated"]
    assert "phenomena_crf" not in seg


def test_cli_recomputes_the_stage_numbers_from_the_files(tiny_run: Path, tmp_path: Path, capsys) -> None:
    rows = {(r["stage"], r["output"]): r for r in measure_run(tiny_run)}
    threshold = metrics(tiny_run, "eval_cam")["threshold"]
    expected = {("make_cam", f"CAMs > {threshold:g}"): metrics(tiny_run, "eval_cam")["phenomena"],
                ("make_pseudo_labels", "labels"): metrics(tiny_run, "make_pseudo_labels")["phenomena_plain"],
                ("make_pseudo_labels", "labels_crf"): metrics(tiny_run, "make_pseudo_labels")["phenomena"],
                ("eval_seg", "predictions_single"): metrics(tiny_run, "eval_seg")["phenomena"],
                ("eval_seg", "predictions"): metrics(tiny_run, "eval_seg")["phenomena_ms"]}  # fmt: skip
    assert set(rows) == set(expected)
    for key, stage_values in expected.items():
        for name in KEYS:
            assert rows[key][name] == pytest.approx(stage_values[name]), (key, name)
    out = tmp_path / "table.md"
    assert main([str(tiny_run), "--stages", "make_pseudo_labels", "--names", "cam", "--out", str(out),
                 "--json", str(tmp_path / "rows.json")]) == 0
    printed = capsys.readouterr().out
    assert out.read_text().strip() == printed.strip()
    lines = [line for line in printed.splitlines() if line.startswith("| cam |")]
    assert [line.split(" | ")[2] for line in lines] == ["labels", "labels_crf"]
    assert len(json.loads((tmp_path / "rows.json").read_text())["rows"]) == 2


def test_report_lists_the_stage_phenomena(tiny_run: Path) -> None:
    text = phenomena_table([tiny_run], ["cam"])
    stages = [line.split(" | ")[1] for line in text.splitlines()[2:]]
    assert stages == ["eval_cam", "eval_seg", "eval_seg (ms)", "make_pseudo_labels"]
    assert phenomena_table([tiny_run.parent / "nothing"]) is None


def test_cli_rejects_a_directory_without_stages(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path)])


def test_default_knobs_leave_the_config_hash_of_earlier_runs() -> None:
    from tests.conftest import compose_cfg
    from wsss.pipeline.manifest import digest, global_config
    from wsss.pipeline.preflight import check

    default = global_config(compose_cfg())["data"]["synthetic"]
    assert "key_part_contrast" not in default and "context_strength" not in default
    knob = global_config(compose_cfg(["data.synthetic.context_strength=0"]))["data"]["synthetic"]
    assert knob["context_strength"] == 0.0 and digest(knob) != digest(default)
    problems = check(compose_cfg(["data.synthetic.key_part_contrast=2"]))
    assert any("data.synthetic.key_part_contrast=2" in p for p in problems)
