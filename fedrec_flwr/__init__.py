"""fedrec-flwr: federated neural collaborative filtering on Flower.

User embeddings stay on the client that owns the user; item embeddings and the
interaction layers are shared and aggregated by a Flower strategy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
