"""Stages only share files: no module of wsss/pipeline/stages/ imports another one."""

from __future__ import annotations

import ast
from pathlib import Path

STAGES = Path(__file__).resolve().parents[2] / "wsss" / "pipeline" / "stages"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                names.add("wsss.pipeline.stages." + (node.module or ""))
                names.update(f"wsss.pipeline.stages.{alias.name}" for alias in node.names if not node.module)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_stage_module_imports_another() -> None:
    modules = sorted(p for p in STAGES.glob("*.py") if p.name != "__init__.py")
    assert len(modules) >= 15
    stage_names = {p.stem for p in modules}
    offenders = {}
    for path in modules:
        hits = {name for name in _imported_modules(path) if name.startswith("wsss.pipeline.stages")
                and (name == "wsss.pipeline.stages." or name.split(".")[3] in stage_names)}
        if hits:
            offenders[path.name] = sorted(hits)
    assert offenders == {}, f"stage modules import other stages: {offenders}"


def test_stages_read_inputs_by_role_only() -> None:
    """Inputs come from ctx.read(role) / ctx.read_optional(role), never ctx.input("stage")."""
    for path in STAGES.glob("*.py"):
        assert "ctx.input(" not in path.read_text(), path.name


def test_the_import_check_catches_an_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from wsss.pipeline.stages.make_cam import run\nfrom . import eval_cam\n")
    found = _imported_modules(bad)
    assert "wsss.pipeline.stages.make_cam" in found and "wsss.pipeline.stages.eval_cam" in found
