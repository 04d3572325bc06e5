"""The README's Prefect server with basic auth, for real: a client without the string is
refused (401), and the flow given it as `PREFECT_API_AUTH_STRING` runs."""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testing.prefect_server import running_server, without_prefect_settings
from tests.conftest import ROOT
from tests.pipelines.conftest import make_repo

pytestmark = pytest.mark.slow


def _status(api: str, auth: str | None) -> int:
    """The HTTP status of a read of the server's flows, with `auth` as basic auth or none."""
    request = urllib.request.Request(f"{api}/flows/filter", data=b"{}", method="POST")
    request.add_header("content-type", "application/json")
    if auth:
        request.add_header("authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_server_with_an_auth_string_refuses_clients_without_it(
    tmp_path: Path, flow_env: None
) -> None:
    auth = f"admin:{secrets.token_hex(16)}"
    repo = make_repo(tmp_path / "repo", tmp_path / "remote")
    cmd = [sys.executable, "-m", "pipelines.flow", "--root", str(repo), "--no-push", "prepare"]
    with running_server(tmp_path / "prefect-home", auth_string=auth) as api:
        assert _status(api, None) == 401
        assert _status(api, "admin:wrong") == 401
        assert _status(api, auth) == 200

        def flow(**env: str) -> subprocess.CompletedProcess:
            env = without_prefect_settings(PREFECT_API_URL=api, **env)
            return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)

        refused = flow()
        assert refused.returncode != 0
        assert "401" in refused.stdout + refused.stderr
        done = flow(PREFECT_API_AUTH_STRING=auth)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Finished in state Completed" in done.stdout + done.stderr
        assert _status(api, auth) == 200
