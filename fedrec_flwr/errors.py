"""Errors every layer raises: one home, so no module imports config.py just for one."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""
