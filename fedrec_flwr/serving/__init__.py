"""Serving: scoring, the node store, checkpoints and recommendations."""

__all__: list[str] = []
