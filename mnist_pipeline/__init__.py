"""The pipeline's shared code: what the stages, the flows and the benchmarks import."""
