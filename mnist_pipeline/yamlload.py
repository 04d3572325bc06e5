"""YAML read with libyaml's C parser, which PyYAML's wheels include: the same objects as
`yaml.safe_load` (the constructor is the same Python code; only scanning and parsing are in
C), several times faster. Every stage reads `params.yaml` and `dvc.lock` before its work
begins, and `dvc.lock` grows with every stage, so this is part of each stage's start-up."""

from __future__ import annotations

from typing import Any

import yaml

# PyYAML built without libyaml has no CSafeLoader; it then parses in Python, just slower.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)`, parsed by libyaml where it is available."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader, C or Python
