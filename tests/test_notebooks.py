"""Every notebook under notebooks/ executes headless (nbclient) on the tiny session run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"explore_dataset", "inspect_run", "compare_runs"}
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: one cell must be tagged 'parameters'"
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def _second_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the run's metrics with other numbers: something to compare against."""
    other = tmp_path / "other_run"
    for metrics in tiny_run.glob("stages/*/metrics.json"):
        data = json.loads(metrics.read_text())
        for key in ("miou", "miou_crf", "miou_ms"):
            if isinstance(data.get(key), float):
                data[key] = data[key] / 2
        (other / "stages" / metrics.parent.name).mkdir(parents=True)
        (other / "stages" / metrics.parent.name / "metrics.json").write_text(json.dumps(data))
    shutil.copytree(tiny_run / ".hydra", other / ".hydra")
    return other


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tiny_run: Path, synthetic_root: Path, tmp_path: Path,
                           monkeypatch) -> None:
    from nbclient import NotebookClient

    params = {
        "OVERRIDES": [f"data.synthetic.root={synthetic_root}", "data.synthetic.num_train=16",
                      "data.synthetic.num_val=8", "data.synthetic.image_size=[64,48]"],
        "RUN_DIR": str(tiny_run),
        "RUN_DIRS": [str(tiny_run), str(_second_run(tiny_run, tmp_path))],
        "NUM_EXAMPLES": 2,
        "NUM_WORST": 2,
    }
    book = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    names = {line.split("=")[0].strip() for line in book.cells[index].source.splitlines()
             if "=" in line and not line.startswith("#")}
    injected = "\n".join(f"{k} = {v!r}" for k, v in params.items() if k in names)
    book.cells.insert(index + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures as PNG outputs
    client = NotebookClient(book, kernel_name="python3", timeout=200,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)
    figures = sum("image/png" in o.get("data", {}) for c in book.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert not any(o.output_type == "error" for c in book.cells if c.cell_type == "code" for o in c.outputs)
    if path.stem == "explore_dataset":
        assert "most frequent pairs" in text and figures >= 2 + 2  # counts, co-occurrence, 2 masks
    elif path.stem == "inspect_run":
        assert "eval_seg" in text and figures >= 4  # CAMs, sweep, per-class, worst images
    else:
        html = "".join(o.get("data", {}).get("text/markdown", "") for c in book.cells
                       if c.cell_type == "code" for o in c.outputs)
        assert "other_run" in html and tiny_run.name in html and figures >= 2
