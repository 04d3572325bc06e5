"""Command lines derived from a flow's parameters, so each parameter is written once.

A flow parameter is its name, type and default in the flow's signature and its description in
the flow's docstring, which is what Prefect reads for the UI and the deployment's schema; a
parameter typed as a pydantic model stands for its fields, each with its description in the
model (`Field(description=...)`), and becomes an argument group. The options are derived
from those: `--<name with dashes>`, a bool as a switch, a list as a repeatable option, a
`Literal` as choices. `Cli` in an `Annotated` type says what the name does not: other flags, a
metavar, a positional. So `--help`, the Prefect UI and the deployment's schema say the same.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Constrained types for flow parameters and option fields: a threshold, a count or a duration
# is a finite number in its range, so `nan` or `-1` cannot talk past a gate (`acc < nan` is
# always false). Prefect validates a run's parameters with them; `parse` does on the command
# line, each a usage error (exit 2).
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


@dataclass(frozen=True)
class Cli:
    """How a parameter reads on the command line, where its name alone does not say it."""

    flags: tuple[str, ...] = ()  # default: `--<name>`; for a bool that defaults to True, the
    # flag that turns it off (`--no-push`)
    metavar: str | None = None
    help: str | None = None  # for a flag that turns a parameter off: what it does
    positional: bool = False  # a list of positional arguments (`nargs="*"`)


@dataclass(frozen=True)
class Param:
    """A flow parameter, or a field of a flow parameter that is a model (`group`)."""

    name: str
    annotation: Any
    default: Any
    description: str
    cli: Cli
    group: str | None = None


class Options(BaseModel):
    """A group of flow parameters: frozen, and a misspelt field is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def params(flow: Any) -> Iterator[Param]:
    """The flow's parameters in order, a model parameter's fields in its place."""
    fn = flow.fn
    hints = typing.get_type_hints(fn, include_extras=True)
    described = flow.parameters.properties
    for name, p in inspect.signature(fn).parameters.items():
        annotation, cli = _unannotated(hints[name])
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for field, info in annotation.model_fields.items():
                cli = next((m for m in info.metadata if isinstance(m, Cli)), Cli())
                default = info.get_default(call_default_factory=True)
                yield Param(field, info.annotation, default, info.description or "", cli, name)
        else:
            doc = described.get(name, {}).get("description") or ""
            yield Param(name, annotation, p.default, doc, cli)


def add_arguments(
    parser: argparse.ArgumentParser, flow: Any, only: Collection[str] | None = None
) -> None:
    """The flow's parameters (those in `only`, if given) as options of `parser`."""
    groups: dict[str, Any] = {}
    titles = {name: p.get("description") for name, p in flow.parameters.properties.items()}
    for p in params(flow):
        if only is not None and p.name not in only:
            continue
        where: Any = parser
        if p.group is not None:
            if p.group not in groups:
                title = (titles.get(p.group) or p.group).rstrip(".")
                groups[p.group] = parser.add_argument_group(title)
            where = groups[p.group]
        _add(where, p)


def flow_kwargs(flow: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The flow's keyword arguments from parsed options (only those the parser has)."""
    given = {}
    for p in params(flow):
        if hasattr(args, p.name):
            value = getattr(args, p.name)
            given[p.name] = p.default if p.cli.positional and not value else value
    return grouped(flow, **given)


def grouped(flow: Any, **values: Any) -> dict[str, Any]:
    """Flat values by parameter or field name, as the flow takes them: a model's fields in
    the model. Raises pydantic's ValidationError for a value its model refuses."""
    kwargs: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {}
    models = typing.get_type_hints(flow.fn)
    names = {p.name: p.group for p in params(flow)}
    for name, value in values.items():
        if name not in names:
            raise TypeError(f"{flow.name} has no parameter {name!r}")
        group = names[name]
        if group is None:
            kwargs[name] = value
        else:
            fields.setdefault(group, {})[name] = value
    for group, given in fields.items():
        kwargs[group] = models[group].model_validate(given)
    return kwargs


def parse(
    parser: argparse.ArgumentParser, flow: Any, argv: list[str] | None
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The parsed options and the flow's keyword arguments; a value a model refuses is a
    usage error (exit 2), as argparse's own are."""
    args = parser.parse_args(argv)
    problems = []
    try:
        kwargs = flow_kwargs(flow, args)
    except ValidationError as e:
        problems += _problems(e)
    else:
        hints = typing.get_type_hints(flow.fn, include_extras=True)
        for name, value in kwargs.items():  # the flat parameters' own constraints
            try:
                TypeAdapter(hints[name]).validate_python(value)
            except ValidationError as e:
                problems += _problems(e, (name,))
    if problems:
        parser.error("; ".join(problems))
    return args, kwargs


def _problems(e: ValidationError, where: tuple[str, ...] = ()) -> list[str]:
    """`--option: what is wrong` for each error of a validation."""
    return [
        f"--{'-'.join(str(x) for x in (*where, *err['loc'])).replace('_', '-')}: {err['msg']}"
        for err in e.errors()
    ]


def _add(where: Any, p: Param) -> None:
    kind = _unoptional(p.annotation)
    flags = p.cli.flags or (f"--{p.name.replace('_', '-')}",)
    help_ = (p.cli.help or p.description).rstrip(".").replace("%", "%%")
    if p.default is not None and kind is not bool and not isinstance(p.default, list):
        help_ += f" (default: {p.default})"
    kw: dict[str, Any] = {"dest": p.name, "default": p.default, "help": help_}
    kw["metavar"] = p.cli.metavar or flags[-1].lstrip("-").replace("-", "_").upper()
    if kind is bool:
        if p.default and not p.cli.flags:
            flags = (f"--no-{p.name.replace('_', '-')}",)
        kw["action"] = "store_false" if p.default else "store_true"
        del kw["metavar"]
    elif typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        kw.update(_typed(item))
        if p.cli.positional:
            where.add_argument(p.name, nargs="*", type=kw.get("type"), help=help_)
            return
        kw["action"] = "append"
    else:
        kw.update(_typed(kind))
    if "choices" in kw and not p.cli.metavar:
        del kw["metavar"]  # argparse shows the choices instead
    where.add_argument(*flags, **kw)


def _typed(kind: Any) -> dict[str, Any]:
    """argparse's `type` (and `choices`) for a plain type or a Literal."""
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        return {"type": type(choices[0]), "choices": choices}
    convert: Callable[[str], Any] = kind
    return {"type": convert}


def _unannotated(annotation: Any) -> tuple[Any, Cli]:
    """The type without `Annotated`, and the `Cli` in it (or the default one)."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, next((m for m in extras if isinstance(m, Cli)), Cli())
    return annotation, Cli()


def _unoptional(annotation: Any) -> Any:
    """`X` of `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
