"""Named plugins: models, callbacks and loggers found through Python entry points.

A package extends the pipeline by declaring entry points in one of `GROUPS`, each naming a
`Plugin` object (the project registers its own built-ins the same way, in pyproject.toml):

    [project.entry-points."mnist_pipeline.callbacks"]
    early_stopping = "my_package.callbacks:EARLY_STOPPING"

`params.yaml` then chooses plugins by name, with plain-value arguments
(`train.model`, `train.callbacks`, `train.loggers`). The params schema checks each name and
its arguments (the plugin's pydantic `args` model) when params.yaml is loaded, before any work.
A plugin module imports only what that check needs at its top; the heavy libraries are imported
by `build`, when the plugin is used.

Names are resolved, never free class paths: what a run may call is what is installed, and each
plugin's distribution and version are recorded with the run (`source`).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

Kind = Literal["model", "callback", "logger"]
GROUPS: dict[Kind, str] = {
    "model": "mnist_pipeline.models",
    "callback": "mnist_pipeline.callbacks",
    "logger": "mnist_pipeline.loggers",
}


class Args(BaseModel):
    """The base of a plugin's arguments: plain values from params.yaml, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoArgs(Args):
    """A plugin that takes no arguments."""


@dataclass(frozen=True)
class Plugin:
    """What an entry point names.

    `build(args, context)` makes the thing: for a model, an `nn.Module` taking normalized
    (N, 1, 28, 28) images to (N, 10) logits (`context` None); for a callback, a Lightning
    `Callback` (`context` None); for a logger, a Lightning `Logger` (`context` a
    `LoggerContext`). `changes_results`: False for what only observes (loggers, monitors); a
    plugin that does change results is part of the resume fingerprint.
    """

    build: Callable[[Any, Any], Any]
    args: type[BaseModel] = NoArgs
    summary: str = ""
    changes_results: bool = True


@dataclass
class LoggerContext:
    """What a logger plugin's `build` gets besides its arguments.

    `live_dir`: the stage's DVCLive folder (from dvc.yaml); `resume`: the fit continues a
    checkpoint; `run_name`: the stage's name; `params`: the stage's params, flattened to dotted
    keys (for loggers that record them). A logger that needs to see the trained model appends
    an observing Lightning callback to `callbacks`.
    """

    live_dir: Path
    resume: bool
    run_name: str
    params: dict[str, Any]
    callbacks: list[Any] = field(default_factory=list)


class PluginError(ValueError):
    """An unknown plugin name, an entry point that is not a `Plugin`, or bad arguments."""


@dataclass(frozen=True)
class Loaded:
    """A plugin found by name, with where it came from."""

    kind: Kind
    name: str
    plugin: Plugin
    distribution: str | None
    version: str | None
    module: str

    def source(self) -> dict[str, Any]:
        """The run record's entry: which plugin, from which distribution and version."""
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
        }

    def code_file(self) -> Path | None:
        """The source file of the module that defines the plugin (for the resume fingerprint:
        an editable install changes code without changing its version)."""
        try:
            path = inspect.getsourcefile(self.plugin.build)
        except TypeError:
            return None
        return Path(path) if path else None


def installed(kind: Kind) -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of `kind`'s group, by name (read afresh: an install shows at once)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUPS[kind])}


def load(kind: Kind, name: str) -> Loaded:
    """The plugin `name` of `kind`; `PluginError` listing the installed names if none is."""
    found = installed(kind)
    ep = found.get(name)
    if ep is None:
        names = ", ".join(sorted(found)) or "none"
        raise PluginError(
            f"unknown {kind} plugin {name!r}; installed {kind} plugins: {names} "
            f"(entry point group {GROUPS[kind]!r})"
        )
    plugin = ep.load()
    if not isinstance(plugin, Plugin):
        raise PluginError(
            f"{kind} plugin {name!r} ({ep.value}) is a {type(plugin).__name__}, not a "
            "mnist_pipeline.plugins.Plugin"
        )
    dist = ep.dist
    return Loaded(
        kind,
        name,
        plugin,
        dist.metadata["Name"] if dist is not None else None,
        dist.version if dist is not None else None,
        ep.module,
    )


def check_args(loaded: Loaded, args: Mapping[str, Any]) -> BaseModel:
    """`args` validated by the plugin's args model; `PluginError` naming each bad argument."""
    try:
        return loaded.plugin.args.model_validate(dict(args))
    except ValidationError as err:
        bad = "; ".join(
            f"args.{'.'.join(str(p) for p in e['loc'])}: "
            + ("unknown argument" if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()
        )
        allowed = ", ".join(loaded.plugin.args.model_fields) or "none"
        raise PluginError(
            f"bad arguments for {loaded.kind} plugin {loaded.name!r}: {bad} "
            f"(its arguments: {allowed})"
        ) from None


def build(kind: Kind, name: str, args: Mapping[str, Any], context: Any = None) -> Any:
    """Find, check and build a plugin in one go."""
    loaded = load(kind, name)
    return loaded.plugin.build(check_args(loaded, args), context)
