"""A sweep's search space, in the `-S` syntax of `dvc exp run`, checked before any trial runs.

Grid mode reads the overrides as `dvc exp run --queue -S` does, with DVC's own Hydra sweep
expansion (`dvc.utils.hydra.get_hydra_sweeps`): `train.optimizer.lr=1.2e-2,4.8e-2` is two
values, `train.batch_size=range(32,129,32)` four, `train.optimizer.name=choice(adam,adamw)`
two, and the grid is their product. Adaptive mode (Optuna) reads the same grammar, where Hydra
has a word for a continuous range too: `interval(1e-3,1e-1)` (uniform), `tag(log,
interval(1e-3,1e-1))` (log-uniform), `range(a,b[,step])` (integers), `choice(...)` and comma
lists (categorical); a single value is fixed for every trial.

Every trial's `params.yaml` is built with DVC's override code and validated whole with
`mnist_pipeline.params.schema` (through `pipelines.overrides`), so a malformed override, an unknown
key or a value outside the schema stops the sweep before it starts, with a message naming the
override, the trial and the key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_pipeline.errors import ParamsError
from pipelines import overrides as params_overrides

PARAMS_FILE = params_overrides.PARAMS_FILE


@dataclass(frozen=True)
class Trial:
    """One point of the space: its experiment name and its `-S` overrides, in order."""

    name: str
    overrides: tuple[str, ...]

    @property
    def values(self) -> dict[str, str]:
        """{key: value as written}, for the report."""
        return dict(o.split("=", 1) for o in self.overrides if "=" in o)


@dataclass(frozen=True)
class Invalid:
    """A trial whose params do not validate: it fails alone when the sweep runs anyway."""

    trial: Trial
    error: str


def _parse(override: str) -> Any:
    """One override through Hydra's parser (DVC's `to_hydra_overrides`); ParamsError names it."""
    from dvc.utils.hydra import to_hydra_overrides

    text = params_overrides.strip_file(override)
    try:
        (parsed,) = to_hydra_overrides([text])
    except Exception as err:  # hydra's OverrideParseException and friends
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        detail = " ".join(str(err).splitlines()[1:2])
        raise ParamsError(
            f"malformed override {override!r}: {first}{f' ({detail})' if detail else ''}"
        ) from None
    if not parsed.key_or_group or parsed.key_or_group.startswith("."):
        raise ParamsError(f"malformed override {override!r}: no key before '='")
    return parsed


def grid(overrides: list[str]) -> list[list[str]]:
    """The grid of `overrides`, one list of plain `key=value` overrides per point, in DVC's
    order (the last key varies fastest). Raises ParamsError naming a malformed override."""
    from dvc.utils.hydra import get_hydra_sweeps

    plain = [params_overrides.strip_file(o) for o in overrides]
    for o in overrides:
        _parse(o)  # the first bad one is named, before the product is taken
    try:
        points = get_hydra_sweeps({PARAMS_FILE: plain})
    except Exception as err:  # interval() and glob() do not make a grid
        raise ParamsError(f"invalid sweep override in {overrides}: {err}") from None
    return [list(point[PARAMS_FILE]) for point in points]


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys that take more than one value in the space, in the order given."""
    keys = []
    for o in overrides:
        parsed = _parse(o)
        if parsed.is_sweep_override() and parsed.key_or_group not in keys:
            keys.append(parsed.key_or_group)
    return keys


def default_name(overrides: list[str], mode: str) -> str:
    """A stable sweep name for a space: the same command finds its own trials again."""
    digest = hashlib.sha1("\n".join([mode, *overrides]).encode()).hexdigest()[:6]
    return f"sweep-{digest}"


def trial_name(sweep: str, index: int) -> str:
    return f"{sweep}-{index:03d}"


def grid_trials(sweep: str, overrides: list[str], extra: Sequence[str] = ()) -> list[Trial]:
    """The grid's trials, named `<sweep>-000`, ...; `extra` overrides go to every trial."""
    return [
        Trial(trial_name(sweep, i), tuple([*point, *extra]))
        for i, point in enumerate(grid(overrides))
    ]


def validate(params_path: Path, trials: list[Trial]) -> list[Invalid]:
    """Each trial's params.yaml, built and validated without touching the file."""
    bad = []
    for trial in trials:
        try:
            params_overrides.overridden(params_path, list(trial.overrides))
        except ParamsError as err:
            bad.append(Invalid(trial, str(err)))
    return bad


def refuse(invalid: list[Invalid], total: int) -> ParamsError:
    """One error for the invalid trials of a sweep, each named with its overrides."""
    lines = [f"{len(invalid)} of {total} trials have invalid params:"]
    for bad in invalid:
        lines.append(f"  {bad.trial.name} ({' '.join(bad.trial.overrides)}):")
        lines.extend(f"    {line}" for line in bad.error.splitlines())
    return ParamsError("\n".join(lines))


# --- adaptive mode: the same grammar, read as Optuna distributions ----------------------------


@dataclass(frozen=True)
class Dimension:
    """One key of an Optuna space. kind: float | int | categorical | fixed."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.kind in ("float", "int"):
            low, high = self.low, self.high
            assert low is not None and high is not None  # a range has both
            if self.kind == "float":
                return d.FloatDistribution(low, high, log=self.log)
            return d.IntDistribution(int(low), int(high), step=int(self.step or 1))
        return d.CategoricalDistribution(self.choices)


def _value_text(value: Any) -> str:
    """A sampled value as an override writes it (floats in full, so YAML reads a float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))  # 6 digits are plenty, and keep YAML's float form
    return str(value)


def optuna_space(overrides: list[str]) -> list[Dimension]:
    """The Optuna dimensions of `overrides`: interval/range/choice/lists as above, any other
    override fixed. Raises ParamsError naming an override that is malformed or not a range."""
    from hydra.core.override_parser.types import (
        ChoiceSweep,
        IntervalSweep,
        RangeSweep,
    )

    dims = []
    for o in overrides:
        parsed = _parse(o)
        key, value = parsed.key_or_group, parsed.value()
        if isinstance(value, IntervalSweep):
            assert value.start is not None and value.end is not None  # Hydra's grammar needs both
            low, high = float(value.start), float(value.end)
            log = "log" in (value.tags or set())
            if not low < high or (log and low <= 0) or math.isinf(high - low):
                raise ParamsError(
                    f"override {o!r}: interval needs low < high{' and low > 0 for log' * log}"
                )
            dims.append(Dimension(key, "float", low, high, log=log))
        elif isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step or 1
            assert start is not None and stop is not None  # Hydra's grammar needs both
            if not all(float(x).is_integer() for x in (start, stop, step)) or step <= 0:
                raise ParamsError(f"override {o!r}: range needs integers and a step > 0")
            count = math.ceil((stop - start) / step)  # Hydra's range, like Python's, stops short
            if count < 1:
                raise ParamsError(f"override {o!r}: the range is empty")
            high = start + (count - 1) * step
            dims.append(Dimension(key, "int", start, high, step=step))
        elif isinstance(value, ChoiceSweep):
            choices = tuple(value.list)
            if len(set(map(repr, choices))) != len(choices):
                raise ParamsError(f"override {o!r}: a choice is listed twice")
            dims.append(Dimension(key, "categorical", choices=choices))
        elif parsed.is_sweep_override():
            raise ParamsError(f"override {o!r}: not a range Optuna can sample")
        else:
            dims.append(Dimension(key, "fixed", choices=(o,)))
    return dims


def sampled_overrides(dims: list[Dimension], values: dict[str, Any]) -> list[str]:
    """The overrides of one Optuna trial: the fixed ones as written, the sampled ones set."""
    out = []
    for dim in dims:
        if dim.kind == "fixed":
            out.append(params_overrides.strip_file(dim.choices[0]))
        else:
            out.append(f"{dim.key}={_value_text(values[dim.key])}")
    return out
