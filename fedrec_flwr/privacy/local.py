"""Local DP on item updates and pseudo items, as FedPerGNN (Wu et al., Nature
Communications 2022) and FedMF (Chai et al., 2020) do it.

A node's reply moves exactly the item rows it trained (its positives and the
negatives it drew); that alone tells the server which items it touched
(:mod:`fedrec_flwr.privacy.audit`). FedPerGNN's two defences, both applied to
the item-table update ``reply - sent`` of one reply:

- **Pseudo items**: ``pseudo-items`` rows the node did not move get a fake
  update drawn from a Gaussian with the mean and standard deviation of the
  real row updates, so "which rows moved" no longer separates the two.
- **Local DP**: every element of the real and pseudo rows' update is clipped
  to ``[-ldp-clip, ldp-clip]`` and Laplace noise of scale ``ldp-noise`` is
  added. Per element that is the Laplace mechanism with sensitivity
  ``2 * ldp-clip``, i.e. ``epsilon = 2 * ldp-clip / ldp-noise`` per element;
  the elements of a row and the rounds compose, so this is a heuristic
  defence whose effect the audit measures, not a formal guarantee for a
  user (use ``dp='user'`` for that).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["perturb_item_update"]


def perturb_item_update(
    sent: Mapping[str, np.ndarray],
    reply: Mapping[str, np.ndarray],
    item_tables: Iterable[str],
    *,
    clip: float,
    noise: float,
    pseudo_items: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The reply with pseudo-item rows and clipped, Laplace-noised item-row updates.

    Parameters
    ----------
    sent : mapping of str to numpy.ndarray
        The global arrays the server sent.
    reply : mapping of str to numpy.ndarray
        The arrays after local training (same names).
    item_tables : iterable of str
        Names of the shared item tables (row ``i`` = item ``i``).
    clip : float
        Element-wise clip of the row updates; 0 = no clipping.
    noise : float
        Laplace scale added to every element of the real and pseudo rows; 0 = none.
    pseudo_items : int
        Unmoved rows given a fake update (at most the number of unmoved rows).
    rng : numpy.random.Generator
        Draws the pseudo items, their updates and the noise.

    Returns
    -------
    dict of str to numpy.ndarray
        ``reply`` with the item tables replaced; other arrays unchanged.
    """
    tables = [t for t in item_tables if t in reply]
    out = dict(reply)
    if not tables:
        return out
    deltas = {t: np.asarray(reply[t], np.float64) - np.asarray(sent[t], np.float64) for t in tables}
    moved = np.zeros(len(deltas[tables[0]]), dtype=bool)
    for delta in deltas.values():
        moved |= np.any(delta.reshape(len(delta), -1) != 0, axis=1)
    rows = np.flatnonzero(moved)
    unmoved = np.flatnonzero(~moved)
    fake = (
        rng.choice(unmoved, size=min(pseudo_items, len(unmoved)), replace=False)
        if pseudo_items > 0 and len(unmoved) and len(rows)
        else np.zeros(0, dtype=np.int64)
    )
    for name in tables:  # the given table order: the same draws for the same seed
        delta = deltas[name]
        if len(fake):
            real = delta[rows]
            delta[fake] = rng.normal(real.mean(), real.std(), size=(len(fake), *delta.shape[1:]))
        touched = np.sort(np.concatenate([rows, fake]))
        if clip > 0:
            delta[touched] = np.clip(delta[touched], -clip, clip)
        if noise > 0:
            delta[touched] += rng.laplace(0.0, noise, size=delta[touched].shape)
        out[name] = (np.asarray(sent[name], np.float64) + delta).astype(reply[name].dtype)
    return out
