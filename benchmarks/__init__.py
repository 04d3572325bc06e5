"""Speed benchmarks of the project, measured side by side on one machine: `python -m benchmarks`.

Training (the project's path against the seed tutorial's recipe and a plain PyTorch loop),
time to 99 % test accuracy, peak memory, inference (ONNX Runtime against PyTorch, dense against
pruned), orchestration overhead (DVC, Prefect) and sweeps (`--jobs 2` against one at a
time). See `python -m benchmarks --help`.
"""
