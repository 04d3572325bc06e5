"""dvc.yaml, stages/ and params.yaml stay in line: names, commands, deps, params."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.params.schema import Params
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PROJECT_PACKAGES = ("stages.", "mnist_pipeline.")
STAGES = DVC["stages"]


def project_imports(module: Path) -> set[Path]:
    """Every project module (stages/, mnist_pipeline/) `module` imports, transitively."""
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
                if name.startswith(PROJECT_PACKAGES):
                    target = ROOT / (name.replace(".", "/") + ".py")
                    if target.is_file():
                        todo.append(target)
    return seen


def builtin_plugins() -> set[Path]:
    """The modules of the project's own plugins (its entry points in pyproject.toml): loaded by
    name from params, so no import statement leads to them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project.get("entry-points", {})
    return {
        ROOT / (target.split(":")[0].replace(".", "/") + ".py")
        for group, points in groups.items()
        if group.startswith("mnist_pipeline.")
        for target in points.values()
    }


def stage_code(name: str) -> set[Path]:
    """What a stage runs: the modules it imports and, where it fits a model, the built-in
    plugins the fit loads by name, with what they import."""
    code = project_imports(ROOT / f"stages/{name}.py")
    if ROOT / "mnist_pipeline/training/fit.py" in code:
        for plugin in builtin_plugins():
            code |= project_imports(plugin)
    return code


def test_package_inits_hold_no_code() -> None:
    """`project_imports` follows modules, not the `__init__.py` files Python runs on the way:
    they can stay out of every stage's deps because they hold a docstring and nothing else."""
    for init in (ROOT / "mnist_pipeline").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), (
            f"{init.relative_to(ROOT)} holds code: list it under the deps of the stages using it"
        )


def test_stages_holds_the_stages_and_nothing_else() -> None:
    modules = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(STAGES)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_cmd_deps_and_params(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"].startswith(f"python -m stages.{name} "), "one name in four places"
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
    needed = {str(p.relative_to(ROOT)) for p in stage_code(name)}
    missing = needed - deps
    assert not missing, f"{name} imports {sorted(missing)} but does not list them under deps"
    stale = {d for d in deps if d.endswith(".py")} - needed
    assert not stale, f"{name} lists {sorted(stale)} under deps but does not import them"
    assert "compute-env.txt" in deps, "the compute libraries' versions are an input"
    sections = {p.split(".")[0] for p in stage.get("params", [])}
    assert name in sections, "a stage reads its own params section"
    # A stage that computes with torch runs as `compute` says (`stage.running` hands the
    # section to its run record); one that says `computes=False` (prepare's numpy, card's text)
    # must not list it, or a sweep's thread count would re-run it for nothing.
    source = ast.parse((ROOT / f"stages/{name}.py").read_text())
    computes = not any(
        isinstance(n, ast.keyword)
        and n.arg == "computes"
        and isinstance(n.value, ast.Constant)
        and n.value.value is False
        for n in ast.walk(source)
    )
    assert ("compute" in sections) == computes, "compute is listed iff the stage computes"
    assert sections <= set(Params.model_fields)


def test_params_sections_match_stages() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # `compute` is every stage's (how it computes); each other section is one stage's.
    assert set(raw) == set(Params.model_fields) == {"compute", *STAGES}


def test_outputs_are_not_written_by_two_stages() -> None:
    outs: list[str] = []
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            outs += [o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])]
    assert len(outs) == len(set(outs))


def test_compute_env_is_the_locked_versions() -> None:
    """compute-env.txt is what `mnist_pipeline.environment` makes of uv.lock: a new version of a
    compute library in the lock re-runs the pipeline only if the file is regenerated."""
    from mnist_pipeline import environment

    assert (ROOT / "compute-env.txt").read_text() == environment.compute_env_text(
        ROOT / "uv.lock"
    ), "regenerate: uv run python -m mnist_pipeline.environment --write compute-env.txt"


def test_measurements_and_provenance_are_not_hashed_outputs() -> None:
    """Timings and run records change from run to run: no stage may declare them as outputs,
    or dvc.lock would move on every run; `dvc metrics show` reads the measurements."""
    declared = set()
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            declared |= {o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])}
    written = {}
    for name, stage in STAGES.items():
        args = stage["cmd"].split()
        for flag in ("--timings", "--provenance"):
            if flag in args:
                written[f"{name} {flag}"] = args[args.index(flag) + 1]
    assert {f"{s} --provenance" for s in STAGES} <= set(written)
    assert not set(written.values()) & declared
    timings = {v for k, v in written.items() if k.endswith("--timings")}
    assert timings == set(DVC["metrics"])
