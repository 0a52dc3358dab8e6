"""Users hashed into K groups: stable as the log grows."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["HashPartitioner"]


class HashPartitioner(Partitioner):
    """Partition ``blake2b(seed, raw user id) mod K``.

    A user's partition depends only on its raw id and the seed, not on the
    other users, so adding users never moves existing ones (unlike random
    groups) and any process can compute it without the whole log.

    Parameters
    ----------
    num_partitions : int
        K.
    seed : int (default: 0)
        Salt of the hash.
    """

    name = "hash"

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        k = self._k(data)
        salt = str(self.seed).encode()
        digests = [
            int.from_bytes(
                hashlib.blake2b(str(u).encode(), digest_size=8, key=salt).digest(), "little"
            )
            for u in data.user_ids
        ]
        return np.asarray(digests, dtype=np.uint64) % np.uint64(k), [f"hash-{p}" for p in range(k)]
