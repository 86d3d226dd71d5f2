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
