"""Privacy, measured: server-side audit attacks, differential privacy, local DP, SecAgg+.

- :mod:`~fedrec_flwr.privacy.options`: the ``privacy`` run-config group.
- :mod:`~fedrec_flwr.privacy.accounting`: epsilon per round and noise for a
  target epsilon, by Google's ``dp-accounting``.

Nothing heavy is imported here: each module imports its own libraries.
"""

from .options import DP_MODES, SECURE_AGGREGATIONS, PrivacyOptions

__all__ = ["DP_MODES", "SECURE_AGGREGATIONS", "PrivacyOptions"]
