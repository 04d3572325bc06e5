"""What `mnist-serve` and `mnist-predict` run: no torch, Lightning, DVC or Prefect
(import-linter checks it; see pyproject.toml).
"""
