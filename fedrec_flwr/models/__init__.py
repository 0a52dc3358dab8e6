"""Recommender models: shared (item-side) and private (user-side) parameters by name."""
