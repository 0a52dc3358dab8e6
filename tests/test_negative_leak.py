"""Training negatives must not reveal the held-out items.

If held-out items were never drawn as training negatives, "how rarely was this
candidate drawn as a negative" would point straight at the answer. The oracle
below ranks test candidates by exactly that; with our sampler it must do no
better than chance, and with the leaky pool it finds most answers (and all,
given enough epochs of draws).
"""

import numpy as np
import pytest

from fedrec_flwr.datasets import DataOptions, prepare_data, sample_train_negatives
from fedrec_flwr.train.metrics import rank_of_positive


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
def everyone(ml100k_dir):
    """All users as one client: the pools below are the ones clients train with."""
    return prepare_data(DataOptions(data_dir=str(ml100k_dir))).client_data()


def test_oracle_on_our_training_negatives_is_at_chance(everyone):
    hr = _oracle_hr10(everyone, everyone.negative_pool("train"))
    assert abs(hr - 10 / 100) < 0.035, hr  # chance: 10 of 100 candidates


def test_oracle_exposes_the_leaky_history_pool(everyone):
    # negative-pool=history, offered only to reproduce published numbers.
    assert _oracle_hr10(everyone, everyone.negative_pool("history")) > 0.8  # chance: 0.10


def test_unknown_pool_is_named(everyone):
    with pytest.raises(ValueError, match="negative-pool='all': unknown; accepted: train, history"):
        everyone.negative_pool("all")
