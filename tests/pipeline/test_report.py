from __future__ import annotations

import pytest

from wsss.io import write_json
from wsss.pipeline.report import main, table


def test_table_reads_metrics_and_leaves_missing_stages_blank(tmp_path) -> None:
    run = tmp_path / "run"
    write_json(run / "stages/eval_cam/metrics.json", {"miou": 0.5, "threshold": 0.15})
    write_json(run / "stages/random_walk/metrics.json", {"miou": 0.61})
    write_json(run / "stages/eval_seg/metrics.json", {"miou": 0.25, "miou_crf": 0.3})
    row = table([run], ["psa"]).splitlines()[2]
    assert row == "| psa | 0.500 | 0.150 |  |  | 0.610 |  |  | 0.250 |  | 0.300 |"


def test_cli_rejects_a_directory_without_stages(tmp_path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path)])


def test_cam_columns_take_the_cams_the_labels_come_from(tmp_path) -> None:
    """pipeline=eps_cam_saliency: eval_eps_cam (EPS's CAMs) wins over the baseline's eval_cam."""
    run = tmp_path / "run"
    write_json(run / "stages/eval_cam/metrics.json", {"miou": 0.3, "threshold": 0.6})
    write_json(run / "stages/eval_eps_cam/metrics.json", {"miou": 0.4, "threshold": 0.5})
    assert table([run], ["eps"]).splitlines()[2].startswith("| eps | 0.400 | 0.500 |")
