"""An example plugin package for mnist-pipeline (see docs/extending.md)."""
