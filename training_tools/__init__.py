"""Training toolkit: data preparation, samplers, losses, DDP training, evaluation and bundle export."""
