"""Runs and their results: the federated run, the centralised baseline, results files."""
