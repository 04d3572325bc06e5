"""Helpers for the tests and the benchmarks, not part of the shipped package.

`synthetic` (tiny MNIST files in the real format), `scratch_repo` (throw-away git + DVC copies
of the checkout), `ports` (free ports for the servers they start) and `prefect_server` (a
Prefect server in its own process).
"""
