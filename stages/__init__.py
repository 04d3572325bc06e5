"""The stages of dvc.yaml, one module each, run as `python -m stages.<name>`."""
