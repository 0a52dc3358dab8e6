"""Personal layers (FedPer-style): shared parameters a client keeps its own copy of.

``private-layers`` names prefixes of shared parameters (e.g. ``"output"``). The
client trains its own copy of those layers, keeps it in ``context.state``
between rounds, and echoes the server's copy back unchanged, so the personal
layers never leave the node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from ..models import Recommender
from ..protocol import PERSONAL_STATE_KEY

__all__ = ["PersonalLayers"]


class PersonalLayers:
    """A node's personal layers, stored in its ``context.state``.

    Parameters
    ----------
    state : flwr.app.RecordDict
        The node's ``context.state``.
    """

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    @staticmethod
    def names(shared_names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
        """The shared arrays the ``private-layers`` prefixes name.

        Raises
        ------
        ValueError
            A prefix matches no shared parameter (one line listing them).
        """
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in shared_names)]
        if unknown:
            raise ValueError(
                f"private-layers={','.join(prefixes)}: {unknown} match no shared parameter; "
                f"shared parameters: {list(shared_names)}"
            )
        return [n for n in shared_names if any(n.startswith(p) for p in prefixes)]

    def load(self, model: Recommender, names: Sequence[str]) -> None:
        """Overwrite ``names`` in ``model`` with this node's own copy, if it has one."""
        if names and PERSONAL_STATE_KEY in self.state.array_records:
            record = self.state.array_records[PERSONAL_STATE_KEY]
            state = model.state_dict()
            with torch.no_grad():
                for name in names:
                    state[name].copy_(torch.from_numpy(record[name].numpy()))

    def keep(
        self,
        names: Sequence[str],
        updated: dict[str, np.ndarray],
        received: Mapping[str, np.ndarray],
    ) -> None:
        """Store the trained ``names`` here and put the server's copy back in ``updated``."""
        if not names:
            return
        self.state[PERSONAL_STATE_KEY] = ArrayRecord({n: Array(updated[n]) for n in names})
        for name in names:
            updated[name] = np.array(received[name], copy=True)
