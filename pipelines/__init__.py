"""Prefect orchestration of the DVC pipeline; no training or data logic lives here.

`flow` (the pipeline flow and its tasks, and the audit flow), `dvc_repo` (DVC's view and `dvc`
subprocesses), `retry` (which failures are transient), `overrides` (`-S` params), `report`,
`registry` (GTO model versions), `verify` (the reproducibility audit), `serve` and `deploy`
(schedules on a Prefect server); `sweep` (the sweep flow), `sweep_space` (its search space),
`trials` (a trial as a DVC experiment in its own clone) and `sweep_report`.
"""
