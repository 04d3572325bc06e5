"""`benchmarks.compare` on a tiny git + DVC repository: the reference is HEAD itself, so both
sides run the same code, and every figure must be there, on both sides, with its ratio."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks import compare, compare_report
from testing.scratch_repo import dvc, git
from tests.conftest import ROOT

STAGE = '''"""A resumable stage: it sleeps a little unless its checkpoint is there, then writes
its output, its checkpoint and its run record."""
import json, sys, time
from pathlib import Path

if __name__ == "__main__":  # not when the benchmark only imports it
    t = time.perf_counter()
    ckpt = Path("ckpt/done")
    resumed = ckpt.is_file()
    if not resumed:
        time.sleep(0.2)
    Path("out.txt").write_text("hello\\n")
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_text("")
    Path("provenance").mkdir(exist_ok=True)
    seconds = time.perf_counter() - t
    record = {"seconds": seconds, "resumed": resumed}
    Path("provenance/hello.json").write_text(json.dumps(record))
'''
DVC_YAML = """stages:
  hello:
    cmd: python -m stages.hello --provenance provenance/hello.json --ckpt-dir ckpt
    deps: [stages/hello.py]
    outs: [out.txt]
"""


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "stages" / "__init__.py").write_text("")
    (repo / "stages" / "hello.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")  # its compute section
    (repo / ".gitignore").write_text("/out.txt\n/provenance/\n/ckpt/\n")
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny")
    return repo


def test_compare_head_with_itself(tiny_repo: Path, tmp_path: Path) -> None:
    (tiny_repo / "uncommitted.txt").write_text("the branch side is the working tree\n")
    got = compare.measure(
        tiny_repo, "HEAD", tmp_path / "work", reps=2, own_venv=False, train=False, flows=False
    )
    head = git(tiny_repo, "rev-parse", "HEAD").strip()
    assert got["commits"]["reference"] == got["commits"]["branch"] == head
    assert (tmp_path / "work" / "branch" / "uncommitted.txt").is_file()
    assert not (tmp_path / "work" / "reference" / "uncommitted.txt").exists()
    keys = {
        "dvc_repro_full_s",
        "dvc_repro_noop_s",
        "stage_wall_s/hello",
        "stage_own_s/hello",
        "stage_overhead_s/hello",
        "import_process_s/hello",
        "import_s/hello",
        "import_modules/hello",
    }
    for side in ("reference", "branch"):
        s = got["sides"][side]
        assert keys <= set(s), keys - set(s)
        assert all(math.isfinite(v) and v > 0 for v in s.values()), s
        # The stage's own clock runs inside the process DVC started, inside the whole repro;
        # every repetition from scratch, not resumed from the checkpoint of the one before.
        assert 0.2 <= s["stage_own_s/hello"] < s["stage_wall_s/hello"] < s["dvc_repro_full_s"]
        record = tmp_path / "work" / side / "provenance" / "hello.json"
        assert json.loads(record.read_text())["resumed"] is False
    assert keys == set(got["ratios"])
    assert got["ratios"]["import_modules/hello"] == 1.0  # the same code on both sides
    assert got["stages"] == ["hello"]
    table = "\n".join(compare_report.compare_markdown(got))
    assert "| hello | modules imported |" in table and head[:10] in table
    json.dumps(got)  # what --out writes


def test_summarize_takes_medians_and_reference_over_branch() -> None:
    runs = {
        "reference": {"dvc_repro_full_s": [10.0, 30.0, 20.0], "dense_test_acc": [0.99]},
        "branch": {"dvc_repro_full_s": [5.0, 4.0, 6.0], "dense_test_acc": [0.992]},
    }
    got = compare.summarize(runs)
    assert got["sides"]["reference"]["dvc_repro_full_s"] == 20.0
    assert got["ratios"] == {"dvc_repro_full_s": 4.0}  # accuracy is no ratio


def test_docs_block_waits_for_the_committed_run_then_renders_it(tmp_path: Path) -> None:
    from benchmarks import docs

    name, command, _ = docs.PENDING_BLOCKS["step-profile"]
    assert "No run committed yet" in docs.BLOCKS["step-profile"](tmp_path)
    profile = {
        "compute": {"profile": "portable"},
        "step_ms_median": 30.0,
        "profiled_ms_per_step": 3.0,
        "groups_ms_per_step": {"max-pool forward": 2.0, "fill_": 1.0},
        "ops": {"aten::max_pool2d_with_indices": {"ms_per_step": 2.0, "calls": 2}},
    }
    machine = {
        "cpu": "cpu",
        "cpu_cores": 2,
        "memory_gb": 8,
        "gpu": None,
        "torch": "t",
        "lightning": "l",
        "python": "p",
        "load_avg_1m_at_start": 0.1,
    }
    run = {"command": command, "machine": machine, "batch_size": 512, "steps": 50}
    (tmp_path / docs.REF).mkdir(parents=True)
    (tmp_path / docs.REF / name).write_text(
        json.dumps({**run, "step_profile": {"portable": profile}})
    )
    block = docs.BLOCKS["step-profile"](tmp_path)
    assert "| max-pool forward | 2 |" in block and f"`{docs.REF}/{name}`" in block
