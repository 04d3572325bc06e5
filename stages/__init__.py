"""The stages of dvc.yaml, one module each, run as `python -m stages.<name>`.

Running one pins how it computes first: Python imports this package before the stage module,
so the `compute` section of the stage's params file is applied here, before anything imports
torch (`mnist_pipeline.compute`). While `-m` is being resolved, `sys.argv[0]` is "-m"; an import
of a stage from other code (tests, benchmarks) pins nothing.
"""

import sys

if sys.argv[:1] == ["-m"]:
    from mnist_pipeline.compute import pin_from_argv

    pin_from_argv(sys.argv)
