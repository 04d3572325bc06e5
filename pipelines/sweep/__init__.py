"""Hyper-parameter sweeps as a Prefect flow: every trial a DVC experiment, J at a time.

    uv run python -m pipelines.sweep -S 'train.optimizer.lr=1.2e-2,4.8e-2' \\
        -S train.max_epochs=1 --jobs 2
    uv run python -m pipelines.sweep --trials 8 --jobs 2 \\
        -S 'train.optimizer.lr=tag(log,interval(3e-3,1e-1))' -S 'train.optimizer.name=adam,adamw'
    uv run python -m pipelines.sweep ... --engine dask [--cluster tcp://scheduler:8786]
    uv run python -m pipelines.sweep ... --cluster tcp://scheduler:8786 --origin <git url>

The flow (`flow.sweep`) reads as its four steps, one module each:

1. `plan`: before any task, the `-S` overrides become trials (`space`: a grid, as
   `dvc exp run --queue -S` expands it, or, with `--trials N`, Optuna TPE over the same
   grammar's `interval`/`range`/`choice`, in `adaptive`), and every trial's params.yaml is
   validated before anything runs. The stages no overridden param reaches (`prepare`) are
   shared: they run once per commit, into the cache, and every trial takes their outputs. A
   trial whose experiment already exists with the same params is not run again, so a killed
   sweep, run again, picks up where it stopped.
2. `run`: one `trial` task per trial (`trials`): `dvc exp run -n <sweep>-<i> -S ...` in the
   trial's clone, then `dvc exp push` to this repo (with `--origin`, to that URL, and fetched
   from there), so `dvc exp show` lists it. `--jobs J` runs J at a time and sets
   `compute.threads` so that they share the cores. With `--prune-trials median|percentile`
   an Optuna pruner stops the hopeless ones where they run (`early_stopping`): PRUNED in the
   study and the report, with no experiment.
3. `results` and `report`: the trials read back from `dvc exp show`; a leaderboard table
   artifact, a markdown summary with the best trial and the command that applies it,
   `plots/sweeps/<sweep>.png` and `sweeps/<sweep>.json`.
4. `promote` (`--promote`): `dvc exp apply` the best trial here; with `--register`, tag it as
   the next model version.

The parameters are in `options` (four groups); `cli` derives the command line from them.
Exit code: 0 when every trial succeeded (or was pruned), 1 when some failed, 2 for bad params.
"""
