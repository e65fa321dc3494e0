"""Training: the DeepSpeed engine loop, checkpoints and metrics."""
