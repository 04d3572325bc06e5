"""Prefect orchestration of the DVC pipeline; no training or data logic lives here.

`flow` (the pipeline flow and its tasks, and the audit flow), `dvc_repo` (DVC's view and `dvc`
subprocesses), `retry` (which failures are transient), `overrides` (`-S` params), `report`,
`registry` (GTO model versions), `verify` (the reproducibility audit), `serve` and `deploy`
(schedules on a Prefect server); `sweep` (the sweep flow), `sweep_space` (its search space),
`trials` (a trial as a DVC experiment in its own clone) and `sweep_report`; `user_values`
(checks on the values that become paths and git arguments) and `prefect_defaults` (the
Prefect settings every run gets unless the user set them).
"""

from pipelines import prefect_defaults

prefect_defaults.apply()  # before any module here imports Prefect, which reads them then
