"""Training: the Trainer factory, fingerprinted checkpoints and the resumable fit loop."""
