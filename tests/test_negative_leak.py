"""Training negatives must not reveal the held-out items.

If held-out items were never drawn as training negatives, "how rarely was this
candidate drawn as a negative" would point straight at the answer. The oracle
below ranks test candidates by exactly that; with our sampler it must do no
better than chance, and with the leaky pool it finds most answers (and all,
given enough epochs of draws).
"""

import numpy as np
import pytest

from fedrec_flwr.datasets import InteractionSet, prepare_dataset, sample_train_negatives
from fedrec_flwr.metrics import rank_of_positive


def _oracle_hr10(prepared, exclude, epochs=30, num_negatives=4):
    rng = np.random.default_rng(0)
    counts = np.zeros((prepared.num_users, prepared.num_items))
    users = np.repeat(prepared.train_users, num_negatives)
    for _ in range(epochs):
        negatives = sample_train_negatives(rng, prepared.train_users, exclude, num_negatives)
        np.add.at(counts, (users, negatives.reshape(-1)), 1)
    candidates = np.concatenate([prepared.test_items[:, None], prepared.eval_negatives], axis=1)
    drawn = counts[np.arange(prepared.num_users)[:, None], candidates]
    # Rarely drawn ranks high; random jitter < 1 breaks ties between equal counts.
    score = -drawn + rng.random(drawn.shape) * 0.5
    return float((rank_of_positive(score) < 10).mean())


@pytest.fixture(scope="module")
def prepared(ml100k_dir):
    return prepare_dataset("ml-100k", str(ml100k_dir), 42, 99)


def test_oracle_on_our_training_negatives_is_at_chance(prepared):
    train_only = InteractionSet(prepared.train_users, prepared.train_items, prepared.num_items)
    hr = _oracle_hr10(prepared, train_only)
    assert abs(hr - 10 / 100) < 0.035, hr  # chance: 10 of 100 candidates


def test_oracle_exposes_a_pool_that_excludes_held_out_items(prepared):
    u = np.arange(prepared.num_users)
    everything = InteractionSet(
        np.concatenate([prepared.train_users, u, u]),
        np.concatenate([prepared.train_items, prepared.val_items, prepared.test_items]),
        prepared.num_items,
    )
    assert _oracle_hr10(prepared, everything) > 0.8  # vs 0.10 by chance
