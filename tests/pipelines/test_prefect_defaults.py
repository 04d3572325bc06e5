"""A first flow run that just works: on a fresh Prefect home with no Prefect variables set, the
flow starts its temporary server in time and logs no ERROR and no traceback, offline too;
what the user set, in the environment or the active profile, is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import prefect_defaults
from tests.conftest import ROOT
from tests.pipelines.conftest import make_repo

TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
ANALYTICS = "PREFECT_SERVER_ANALYTICS_ENABLED"


@pytest.fixture
def no_prefect_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Prefect variable set, and an empty Prefect home; returns the home."""
    for key in {*prefect_defaults.DEFAULTS, *(k for k in os.environ if k.startswith("PREFECT_"))}:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    return tmp_path / "prefect-home"


def test_the_defaults_fill_in_only_what_the_user_left_unset(
    no_prefect_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert prefect_defaults.apply() == prefect_defaults.DEFAULTS
    assert os.environ[TIMEOUT] == "180" and os.environ[ANALYTICS] == "false"

    monkeypatch.setenv(TIMEOUT, "30")
    monkeypatch.delenv(ANALYTICS)
    no_prefect_env.mkdir()
    (no_prefect_env / "profiles.toml").write_text(
        f'active = "mine"\n[profiles.mine]\n{ANALYTICS} = "true"\n'
    )
    assert prefect_defaults.apply() == {}
    assert os.environ[TIMEOUT] == "30" and ANALYTICS not in os.environ  # the profile's holds
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")  # another profile: its own settings
    assert prefect_defaults.apply() == {ANALYTICS: "false"}


@pytest.mark.slow  # a fresh temporary Prefect server: its database is created from scratch
def test_a_first_flow_run_on_a_fresh_prefect_home_succeeds_without_errors(
    tmp_path: Path, no_prefect_env: Path, flow_env: None
) -> None:
    repo = make_repo(tmp_path / "repo", tmp_path / "remote")
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.flow", "--root", str(repo), "--no-push", "prepare"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Finished in state Completed" in out
    errors = [line for line in out.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not errors, out[-4000:]
