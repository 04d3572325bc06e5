"""Prefect orchestration of the DVC pipeline; no training or data logic lives here.

`flow` (the pipeline flow and its tasks, and the audit flow), `dvc_repo` (DVC's view and `dvc`
subprocesses), `retry` (which failures are transient), `overrides` (`-S` params), `report`,
`registry` (GTO model versions), `verify` (the reproducibility audit), `prefect_serve` and
`deploy` (schedules on a Prefect server); `sweep` (the sweep package: its flow, plan, search
space, trials, adaptive search, early stopping, report and command line); `flow_cli` (the
command lines derived from the flows' parameters), `user_values` (checks on the values that
become paths and git arguments) and `prefect_defaults` (the Prefect settings every run gets
unless the user set them).
"""

from pipelines import prefect_defaults

prefect_defaults.apply()  # before any module here imports Prefect, which reads them then
