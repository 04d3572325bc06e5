"""The built-in model plugin, `train.model: {name: lenet5}` (pyproject.toml's entry points).

Apart from model.py, which imports torch at its top: checking params.yaml imports each named
plugin's module to validate its arguments, and every stage runs that check, `prepare` (no torch)
included. Torch is imported when the model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnist_pipeline.plugins import NoArgs, Plugin

if TYPE_CHECKING:
    from mnist_pipeline.model import LeNet5


def _build_lenet5(args: NoArgs, context: None) -> LeNet5:
    from mnist_pipeline.model import LeNet5

    return LeNet5()


LENET5 = Plugin(_build_lenet5, summary="LeNet-5 at its classic widths (61,706 params)")
