"""The sweep flow's parameters, in four groups; `python -m pipelines.sweep` derives its options
from them (`pipelines.flow_cli`), and Prefect shows each field with its description.

No `from __future__ import annotations`: Prefect and pydantic read these types at run time.
"""

from typing import Annotated, Literal

from pydantic import Field

from pipelines.flow_cli import Cli, Options
from pipelines.registry import MODEL_NAME, Bump

# Optuna pruners that stop a trial from the epochs it reported (pipelines.sweep.early_stopping).
Pruner = Literal["none", "median", "percentile"]


class SearchSpace(Options):
    """What the sweep searches, and for what."""

    overrides: Annotated[list[str], Cli(("-S", "--set-param"), metavar="KEY=VALUES")] = Field(
        default_factory=list,
        description="a param and its values, as `dvc exp run --queue -S` (repeatable): comma "
        "lists, range() and choice() make a grid; with --trials, interval() too",
    )
    name: str | None = Field(
        default=None,
        description="the sweep's name, its experiments' prefix; default: from the space",
    )
    objective: str = Field(default="test.acc", description="a metric, `key` or `file:key`")
    maximize: Annotated[bool, Cli(("--minimize",), help="minimise the objective")] = Field(
        default=True, description="maximise the objective (false: minimise it)"
    )
    trials: int | None = Field(
        default=None, ge=1, description="Optuna TPE with this many trials instead of the grid"
    )
    seed: int = Field(default=0, description="the TPE sampler's seed")
    skip_invalid: bool = Field(
        default=False,
        description="a trial whose params do not validate fails alone, not the sweep",
    )


class Execution(Options):
    """Where and how the trials run."""

    jobs: Annotated[int, Cli(("-j", "--jobs"))] = Field(
        default=1, ge=1, description="trials running at once"
    )
    threads_per_trial: int | None = Field(
        default=None,
        ge=1,
        description="`compute.threads` of each trial; default: the cores / jobs",
    )
    targets: Annotated[list[str] | None, Cli(("--target",), metavar="STAGE")] = Field(
        default=None,
        description="a stage each trial runs, with its upstream (repeatable); default: evaluate",
    )
    retries: int = Field(
        default=2, ge=0, description="retries of a trial after a transient failure (it resumes)"
    )
    retry_delay_s: float = Field(
        default=10.0,
        ge=0.0,
        allow_inf_nan=False,
        description="delay before the first retry; doubled for each later one",
    )
    trial_timeout_s: float = Field(
        default=6 * 3600,
        gt=0.0,
        allow_inf_nan=False,
        description="a trial still running after this long is stopped",
    )
    origin: Annotated[str | None, Cli(metavar="GIT_URL")] = Field(
        default=None,
        description="workers clone the commit from this git URL (or remote) and move data "
        "through the DVC remote; default: clones of the repo with its cache (one machine)",
    )


class EarlyStopping(Options):
    """Stopping hopeless trials on their per-epoch metric (with --trials), with an Optuna
    pruner; see `pipelines.sweep.early_stopping`."""

    pruner: Annotated[Pruner, Cli(("--prune-trials",))] = Field(
        default="none", description="the Optuna pruner that stops hopeless trials"
    )
    metric: Annotated[str | None, Cli(("--prune-metric",))] = Field(
        default=None,
        description="the per-epoch metric `train` logs with DVCLive that the pruner reads; "
        "default: val/acc when maximising, val/loss when minimising",
    )
    startup_trials: Annotated[int, Cli(("--prune-startup-trials",))] = Field(
        default=5, ge=0, description="no pruning until this many trials completed"
    )
    warmup_epochs: Annotated[int, Cli(("--prune-warmup-epochs",))] = Field(
        default=1, ge=0, description="a trial's first epochs are never pruned"
    )
    percentile: Annotated[float, Cli(("--prune-percentile",))] = Field(
        default=25.0,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="percentile: a trial not among the best this % at an epoch is pruned",
    )


class Promotion(Options):
    """What becomes of the best trial."""

    promote: bool = Field(
        default=False, description="`dvc exp apply` the best trial to the workspace"
    )
    register_model: Annotated[bool, Cli(("--register",))] = Field(
        default=False, description="with --promote, tag it as the next `<model_name>@vX.Y.Z` (GTO)"
    )
    model_name: str = Field(default=MODEL_NAME, description="the dvc.yaml artifact to register")
    bump: Bump = Field(default="minor", description="which part of the version to increase")
    min_test_acc: float = Field(
        default=0.98,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="the test accuracy a model needs to register",
    )
