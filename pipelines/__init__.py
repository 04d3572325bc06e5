"""Prefect orchestration of the DVC pipeline; no training or data logic lives here.

`flow` (the flow and its tasks), `dvc_repo` (DVC's view and `dvc` subprocesses), `retry` (which
failures are transient), `overrides` (`-S` params), `report`, `registry` (GTO model versions),
`serve` and `deploy` (schedules on a Prefect server).
"""
