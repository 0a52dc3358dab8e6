"""Test infrastructure shipped with the package: the in-process grid."""
