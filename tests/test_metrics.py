import numpy as np
import pytest

from fedrec_flwr.train.metrics import finalize_sums, rank_of_positive, ranking_sums


def test_rank_counts_ties_against_the_positive():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # best: rank 0
            [0.5, 0.5, 0.1, 0.9],  # one tie + one higher: rank 2
            [1.0, 1.0, 1.0, 1.0],  # constant model: last
        ]
    )
    np.testing.assert_array_equal(rank_of_positive(scores), [0, 2, 3])


def test_ranking_sums_by_hand():
    ranks = np.array([0, 2, 9, 10, 50])
    sums = ranking_sums(ranks, ks=[1, 10])
    assert sums["hr@1"] == 1
    assert sums["hr@10"] == 3  # ranks 0, 2, 9 are inside the top 10
    assert sums["ndcg@1"] == pytest.approx(1.0)
    assert sums["ndcg@10"] == pytest.approx(1 + 1 / np.log2(4) + 1 / np.log2(11))


def test_finalize_divides_and_rejects_empty():
    assert finalize_sums({"hr@10": 3.0}, 4) == {"hr@10": 0.75}
    with pytest.raises(ValueError, match="no users"):
        finalize_sums({"hr@10": 0.0}, 0)
