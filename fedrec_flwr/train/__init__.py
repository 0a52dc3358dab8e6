"""Training and evaluation: group and per-user local training, ranking metrics."""
