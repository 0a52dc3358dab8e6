"""The one exception type every loader raises for bad input."""

from __future__ import annotations

__all__ = ["DataFileError"]


class DataFileError(ValueError):
    """A data file is missing, malformed or fails its checksum."""
