"""The start-up benchmark's breakdown of a command's imports (`python -X importtime`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import startup


def test_import_profile_sums_each_modules_own_time(tmp_path: Path) -> None:
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(0.2)\n")
    got = startup.import_profile(["-c", "import slow_module, json"], tmp_path)
    # The module that sleeps while it is imported is the slowest one, by its own time.
    assert next(iter(got["top_own_s"])) == "slow_module"
    assert 0.2 <= got["top_own_s"]["slow_module"] <= got["imports_s"] <= got["wall_s"]
    assert "json" in got["top_own_s"] or got["modules"] > startup.TOP_MODULES
    assert len(got["top_own_s"]) == startup.TOP_MODULES


def test_import_profile_refuses_a_command_that_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="failed"):
        startup.import_profile(["-c", "import no_such_module_here"], tmp_path)


def test_the_markdown_shows_each_profile() -> None:
    profile = {"wall_s": 1.5, "imports_s": 1.2, "modules": 1175, "top_own_s": {"torch._C": 0.4}}
    d = {
        "stages": {"skipped": "quick"},
        "libraries": {"python_s": 0.01, "torch": {"import_s": 1.6, "after": None}},
        "busy_core": {"skipped": "one core"},
        "import_profiles": {"import torch": profile},
    }
    text = "\n".join(startup.markdown(d))
    assert "| import torch | 1.50 | 1.20 | 1,175 | `torch._C` 0.40 |" in text
