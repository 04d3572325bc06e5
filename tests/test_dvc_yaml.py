"""dvc.yaml, stages/ and params.yaml stay in line: names, commands, deps, params."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from stages.params import Params
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]


def project_imports(module: Path) -> set[Path]:
    """Every stages/*.py file `module` imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("stages."):
                    target = ROOT / (name.replace(".", "/") + ".py")
                    if target.is_file():
                        todo.append(target)
    return seen


def test_every_stage_module_is_a_stage() -> None:
    stage_modules = {
        p.stem
        for p in (ROOT / "stages").glob("*.py")
        if "def main(" in p.read_text() and p.stem != "predict"
    }
    assert stage_modules == set(STAGES)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_cmd_deps_and_params(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"].startswith(f"python -m stages.{name} "), "one name in four places"
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
    needed = {str(p.relative_to(ROOT)) for p in project_imports(ROOT / f"stages/{name}.py")}
    missing = needed - deps
    assert not missing, f"{name} imports {sorted(missing)} but does not list them under deps"
    stale = {d for d in deps if d.startswith("stages/")} - needed
    assert not stale, f"{name} lists {sorted(stale)} under deps but does not import them"
    sections = {p.split(".")[0] for p in stage.get("params", [])}
    assert name in sections, "a stage reads its own params section"
    assert sections <= set(Params.model_fields)


def test_params_sections_match_stages() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields) == set(STAGES)


def test_outputs_are_not_written_by_two_stages() -> None:
    outs: list[str] = []
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            outs += [o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])]
    assert len(outs) == len(set(outs))
