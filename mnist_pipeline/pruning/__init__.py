"""Structured pruning, its rounds and the distillation that fine-tunes the pruned model."""
