"""Speed benchmarks of the project, measured side by side on one machine: `python -m benchmarks`.

Training (the project's path against the seed tutorial's recipe and a plain PyTorch loop),
time to 99 % test accuracy, peak memory, inference (ONNX Runtime against PyTorch, dense against
pruned), orchestration overhead (DVC, Prefect) and sweeps (`--jobs 2` against one at a
time). See `python -m benchmarks --help`.

`python -m benchmarks --quick` (and `--prune-recipes`) trains in this process, so it pins how
it computes here, from the `compute` section of its params file, as `python -m stages.<name>`
does: Python imports this package before `__main__`, and so before anything imports torch.
The full runs train in child processes, each pinned on its own; an import from other code
pins nothing.
"""

import sys

if sys.argv[:1] == ["-m"] and ("--quick" in sys.argv or "--prune-recipes" in sys.argv):
    from mnist_pipeline.compute import pin_from_argv

    pin_from_argv(sys.argv)
