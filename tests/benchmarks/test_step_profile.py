"""`python -m benchmarks.step_profile` on a tiny batch: each operator group of the issue is
there, the operators add up to the profiled step, and the fill_ calls are traced to callers."""

from __future__ import annotations

import pytest

from benchmarks import compare_report, step_profile
from tests.conftest import ROOT


def test_step_profile_names_the_operators_and_the_fills_callers() -> None:
    got = step_profile.measure(
        ROOT / "params.yaml", batch_size=16, steps=2, warmup=1, stacks=True, profiles=("portable",)
    )
    p = got["portable"]
    assert p["compute"]["profile"] == "portable"  # the child started with the profile's pins
    groups = p["groups_ms_per_step"]
    for name in ("conv forward", "conv backward", "max-pool forward", "max-pool backward"):
        assert groups[name] > 0, name
    assert sum(groups.values()) == pytest.approx(p["profiled_ms_per_step"], rel=1e-2)
    assert p["ops"]["aten::max_pool2d_with_indices"]["calls"] == 2  # LeNet-5's two pools
    fills = p["fill_callers"]
    assert fills and all(f["chain"].startswith(("aten::fill_", "aten::zero_")) for f in fills)
    assert any(" <- " in f["chain"] for f in fills)  # called from inside another operator
    table = "\n".join(
        compare_report.step_profile_markdown({"batch_size": 16, "steps": 2, "step_profile": got})
    )
    assert "| max-pool backward |" in table and "`aten::max_pool2d_with_indices`" in table
