"""params.yaml's comments and the docs' params table, generated from the params schema.

Each param is described once, in `mnist_pipeline.params.schema` and `mnist_pipeline.params.fit`
(the docstring under the key, and a short `Field(title=...)` where the first sentence of the
description is too long for one line); its allowed values come from its type (Literal choices,
bounds).
This module writes both from there. params.yaml keeps every value's text as written and gets
one comment line per key: the title or first sentence, then the allowed values where they say
more than the type; the table (the block between the params-table markers in
docs/pipeline.md, or in any file given) has the full descriptions.

    python -m mnist_pipeline.params.docs --write   # rewrite both files
    python -m mnist_pipeline.params.docs --check   # exit 1 naming the file and keys that drifted
"""

from __future__ import annotations

import logging
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mnist_pipeline import generated_cli
from mnist_pipeline.atomic import write_bytes
from mnist_pipeline.params.schema import Params

log = logging.getLogger(__name__)

COMMAND = "uv run python -m mnist_pipeline.params.docs --write"
WIDTH = 99
TABLE_START = "<!-- params-table:start -->"
TABLE_END = "<!-- params-table:end -->"
_ROW = re.compile(r"\| `([^`]+)` \|")
HEADER = f"""\
# Params of every stage, validated as a whole by mnist_pipeline/params/schema.py before any work.
# Write floats with a dot and a digit (1.0e-3): YAML reads 1e-3 as a string.
# One comment a key, generated from the schema (mnist_pipeline/params/schema.py and fit.py), whose
# full descriptions are in docs/pipeline.md's params table: change a value here, a description
# there, then run `{COMMAND}`.
"""
HEADER_KEY = "<header>"
END_KEY = "<end of file>"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# (constraint, its attribute, how it reads after the type, how it reads before it)
_BOUNDS = (
    (at.Ge, "ge", ">=", "<="),
    (at.Gt, "gt", ">", "<"),
    (at.Le, "le", "<=", None),
    (at.Lt, "lt", "<", None),
)


def _number_text(name: str, metadata: list[Any]) -> str:
    """`int`, `int >= 1`, `float > 0` or `0 < float <= 1`, from pydantic's bound constraints."""
    low: tuple[str, str | None, str] | None = None
    high: tuple[str, str | None, str] | None = None
    for m in metadata:
        for cls, attr, after, before in _BOUNDS:
            if isinstance(m, cls):
                bound = (after, before, _number(getattr(m, attr)))
                low, high = (bound, high) if before else (low, bound)
    if low and high:
        return f"{low[2]} {low[1]} {name} {high[0]} {high[2]}"
    one = low or high
    if one:
        after, _, value = one
        return f"{name} {after} {value}"
    return name


def _type_text(ann: Any, metadata: list[Any]) -> str:
    """One member of a type: `int >= 1`, `0 < float < 1`, `true | false`, `string`, ..."""
    if get_origin(ann) is Literal:
        return " | ".join(str(a) for a in get_args(ann))
    if ann is bool:
        return "true | false"
    if ann is type(None):
        return "null"
    if ann is str:
        return "string"
    if ann in (int, float):
        return _number_text(ann.__name__, metadata)
    if get_origin(ann) is dict:
        return "mapping"
    if get_origin(ann) is list:
        (item,) = get_args(ann)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "list of {" + ", ".join(item.model_fields) + "}"
    raise TypeError(f"no allowed-values text for the type {ann!r}")


def allowed(field: FieldInfo) -> str:
    """The allowed values of a leaf field, from its type: what params.yaml and README print."""
    ann = field.annotation
    if get_origin(ann) is Literal:
        return "one of: " + _type_text(ann, [])
    if get_origin(ann) in (Union, types.UnionType):
        return " | ".join(_type_text(a, field.metadata) for a in get_args(ann))
    return _type_text(ann, field.metadata)


def _section(field: FieldInfo) -> type[BaseModel] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def fields(model: type[BaseModel] = Params, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) for every key of the schema, sections before their keys."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field
        section = _section(field)
        if section is not None:
            yield from fields(section, f"{key}.")


def description(field: FieldInfo) -> str:
    """A key's description (the docstring under it in the schema) as one line of prose."""
    return " ".join((field.description or "").split())


def table_rows() -> list[tuple[str, str, str]]:
    """(key, allowed, meaning) for every leaf key, in schema order."""
    return [
        (key, allowed(field), description(field))
        for key, field in fields()
        if _section(field) is None
    ]


# --- params.yaml ---------------------------------------------------------------------------

# Allowed values that only name the type: the value beside them already shows it.
_JUST_THE_TYPE = {"true | false", "int", "float", "string"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def summary(key: str, field: FieldInfo) -> str:
    """A key's one comment line in params.yaml: its title, or the first sentence of its
    description, then its allowed values in brackets where they fit and say more than the type.
    """
    short = field.title or _SENTENCE_END.split(description(field))[0]
    if _section(field) is not None:
        return short
    values = allowed(field).removeprefix("one of: ")
    room = WIDTH - 2 * key.count(".") - 2  # after the indent and "# "
    if len(short) > room:
        raise ValueError(
            f"{key}: the first sentence of its description is too long for one comment line; "
            f"give it a shorter Field(title=...) of at most {room} characters"
        )
    with_values = f"{short} [{values}]"
    return with_values if values not in _JUST_THE_TYPE and len(with_values) <= room else short


def _value_texts(text: str) -> dict[str, str | dict]:
    """Each key's value exactly as written in `text` (nested dicts for sections)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        raise ValueError("params file: expected a mapping of sections")

    def walk(node: yaml.MappingNode, prefix: str) -> dict[str, str | dict]:
        out: dict[str, str | dict] = {}
        for key_node, value in node.value:
            key = f"{prefix}{key_node.value}"
            if isinstance(value, yaml.MappingNode) and not value.flow_style:
                out[key_node.value] = walk(value, f"{key}.")
            elif value.start_mark.line != value.end_mark.line:
                raise ValueError(f"params file: {key}: write the value on one line")
            else:
                out[key_node.value] = text[value.start_mark.index : value.end_mark.index]
        return out

    return walk(root, "")


def render_params_yaml(text: str) -> str:
    """`text` (a params.yaml) with its comments regenerated from the schema, values untouched.

    Keys are written in schema order; a key the file leaves out (one with a default) stays out.
    """
    values = _value_texts(text)
    out = [HEADER.rstrip("\n")]

    def walk(
        model: type[BaseModel], written: dict[str, str | dict], prefix: str, depth: int
    ) -> None:
        unknown = sorted(set(written) - set(model.model_fields))
        if unknown:
            keys = ", ".join(prefix + k for k in unknown)
            raise ValueError(
                f"params file: {keys}: not in the schema (mnist_pipeline/params/schema.py)"
            )
        indent = "  " * depth
        first, after_section = True, False
        for name, field in model.model_fields.items():
            if name not in written:
                continue
            value = written[name]
            section = _section(field)
            # A blank line around each section keeps the nesting visible.
            if depth == 0 or (not first and (section or after_section)):
                out.append("")
            first, after_section = False, section is not None
            out.append(f"{indent}# {summary(prefix + name, field)}")
            if (section is not None) != isinstance(value, dict):
                want = "keys" if section is not None else "a value"
                raise ValueError(f"params file: {prefix}{name}: expected {want}")
            if isinstance(value, dict) and section is not None:
                out.append(f"{indent}{name}:")
                walk(section, value, f"{prefix}{name}.", depth + 1)
            else:
                out.append(f"{indent}{name}: {value}".rstrip())

    walk(Params, values, "", 0)
    return "\n".join(out) + "\n"


def _yaml_blocks(text: str) -> dict[str, list[str]]:
    """Each key's line with the comment lines above it, by dotted key; the header apart."""
    blocks: dict[str, list[str]] = {}
    pending: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            pending.append(line)
            continue
        if not blocks:  # the header ends at the last blank line before the first key
            cut = max((i + 1 for i, ln in enumerate(pending) if not ln.strip()), default=0)
            blocks[HEADER_KEY], pending = pending[:cut], pending[cut:]
        indent = len(line) - len(line.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, stripped.split(":", 1)[0]))
        blocks[".".join(k for _, k in stack)] = [*pending, line]
        pending = []
    blocks[END_KEY] = pending
    return blocks


# --- README --------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    """The README's params table, markers included."""
    lines = [TABLE_START, "| key | allowed | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | `{_cell(a)}` | {_cell(m)} |" for k, a, m in table_rows()]
    return "\n".join([*lines, TABLE_END])


def _split_readme(text: str) -> tuple[str, str, str]:
    """(before, table with markers, after); raises when the markers are missing."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"README: no {TABLE_START} ... {TABLE_END} block for the params table")
    end += len(TABLE_END)
    return text[:start], text[start:end], text[end:]


def render_readme(text: str) -> str:
    """`text` (the README) with the block between the params-table markers regenerated."""
    before, _, after = _split_readme(text)
    return before + render_table() + after


def _table_blocks(text: str) -> dict[str, list[str]]:
    """Each row by its key; the markers and the header row apart."""
    blocks: dict[str, list[str]] = {}
    for line in text.splitlines():
        row = _ROW.match(line)
        blocks.setdefault(row[1] if row else HEADER_KEY, []).append(line)
    return blocks


# --- check and write -----------------------------------------------------------------------


def _drifted(current: dict[str, list[str]], expected: dict[str, list[str]]) -> list[str]:
    keys = [*expected, *(k for k in current if k not in expected)]
    return [k for k in keys if current.get(k) != expected.get(k)] or [END_KEY]


def drift(params_path: Path, readme_path: Path) -> list[str]:
    """What differs from what `--write` would write: one message per file, naming the keys."""
    problems = []
    text = params_path.read_text()
    expected = render_params_yaml(text)
    if text != expected:
        keys = _drifted(_yaml_blocks(text), _yaml_blocks(expected))
        problems.append(f"{params_path}: comments drifted from the schema at {', '.join(keys)}")
    readme = readme_path.read_text()
    try:
        table = _split_readme(readme)[1]
    except ValueError as err:
        problems.append(f"{readme_path}: {err}")
    else:
        if table != render_table():
            keys = _drifted(_table_blocks(table), _table_blocks(render_table()))
            problems.append(
                f"{readme_path}: params table drifted from the schema at {', '.join(keys)}"
            )
    return problems


def write(params_path: Path, readme_path: Path) -> list[Path]:
    """Regenerate both files where they differ; returns the files written."""
    written = []
    for path, render in ((params_path, render_params_yaml), (readme_path, render_readme)):
        text = path.read_text()
        new = render(text)
        if new != text:
            write_bytes(path, new.encode())
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = generated_cli.parser(
        "python -m mnist_pipeline.params.docs",
        __doc__,
        write="rewrite both files",
        check="exit 1 if either file drifted",
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    # --readme: its name from when the table was in the README.
    p.add_argument(
        "--page",
        "--readme",
        "--table",
        dest="readme",
        type=Path,
        default=Path("docs/pipeline.md"),
        help="the file whose params-table markers hold the table (default: the docs page)",
    )
    args = p.parse_args(argv)
    return generated_cli.run(
        args,
        lambda: write(args.params, args.readme),
        lambda: drift(args.params, args.readme),
        (OSError, ValueError, yaml.YAMLError),
        regenerate=COMMAND,
    )


if __name__ == "__main__":
    sys.exit(main())
