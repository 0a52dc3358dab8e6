"""Operator tooling: the ``fedrec`` CLI, local deployments, Flower processes, certificates."""
