"""Prefect settings the project's flows need on any machine, set before Prefect is imported.

`pipelines/__init__.py` applies them, so every flow (`flow`, `sweep`, the audit) and every
process they start gets them:

- The temporary server a flow starts when no `PREFECT_API_URL` is set gets 180 s to come up
  instead of Prefect's 20 s: on a first run it creates its database, and on a busy 2-core
  machine that took longer than 20 s ("Timed out while attempting to connect to ephemeral
  Prefect API server").
- Prefect's analytics are off: its server's telemetry heartbeat, with no internet, logs an
  ERROR line per run, and the SDK's usage events follow the server's setting.

A setting the user gave, in the environment or in the active Prefect profile, is kept.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def profile_settings() -> dict[str, object]:
    """The settings of the active Prefect profile (`prefect config set` writes them), read
    without importing Prefect; {} when there is no profiles file."""
    home = Path(os.environ.get("PREFECT_HOME") or Path("~") / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return dict(profiles.get("profiles", {}).get(active, {}))


def apply() -> dict[str, str]:
    """Set each of `DEFAULTS` the user has not; returns what was set."""
    given = profile_settings()
    unset = {k: v for k, v in DEFAULTS.items() if k not in os.environ and k not in given}
    os.environ.update(unset)
    return unset
