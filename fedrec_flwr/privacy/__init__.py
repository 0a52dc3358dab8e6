"""Privacy, measured: server-side audit attacks, differential privacy, local DP, SecAgg+.

- :mod:`~fedrec_flwr.privacy.options`: the ``privacy`` run-config group.
- :mod:`~fedrec_flwr.privacy.audit`: server-side item-inference attacks on one
  reply (changed rows, direction, shadow-user gradient signature) and their
  precision, recall and AUC against the truth.
- :mod:`~fedrec_flwr.privacy.grid`: :class:`~fedrec_flwr.privacy.grid.AuditedGrid`
  runs them on the training replies as the server receives them.
- :mod:`~fedrec_flwr.privacy.accounting`: epsilon per round and noise for a
  target epsilon, by Google's ``dp-accounting``.

Nothing heavy is imported here: each module imports its own libraries.
"""

from .options import DP_MODES, SECURE_AGGREGATIONS, PrivacyOptions

__all__ = ["DP_MODES", "SECURE_AGGREGATIONS", "PrivacyOptions"]
