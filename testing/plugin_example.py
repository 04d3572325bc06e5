"""The example plugin package (examples/mnist-plugin-example) made importable from a folder,
as an install would: its module and a dist-info with its entry points, without pip or a venv.

Put the folder on `sys.path` (in-process) or `PYTHONPATH` (a stage's process, `dvc repro`), and
`importlib.metadata` finds its plugins by name.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist-plugin-example"


def install_example(folder: Path) -> Path:
    """Write the example's module link and dist-info into `folder`; returns `folder`."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    link = folder / "mnist_plugin_example"
    if not link.exists():
        link.symlink_to(EXAMPLE / "src" / "mnist_plugin_example")
    return folder
