"""Recall@K and average precision (genattr.plugins.metrics.retrieval)."""

import numpy as np
import pytest

from genattr.plugins.metrics.retrieval import AveragePrecision, RecallAtK, average_precision, positive_ranks


def test_registered_metrics_resolve():
    import genattr

    r = genattr.get_metric("recall-at-k", k=5)
    ap = genattr.get_metric("average-precision")
    assert isinstance(r, RecallAtK) and r.k == 5 and r.kind == "retrieval" and r.higher_is_better
    assert isinstance(ap, AveragePrecision) and ap.kind == "retrieval" and ap.higher_is_better
    assert r.name == "recall-at-k" and ap.name == "average-precision" and r.version == ap.version == "1"


@pytest.mark.parametrize("seed", range(20))
def test_average_precision_matches_sklearn_without_ties(seed):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    scores = rng.normal(size=n)
    npos = int(rng.integers(1, min(n, 15) + 1))
    positives = rng.choice(n, size=npos, replace=False)
    y = np.zeros(n, dtype=int)
    y[positives] = 1
    assert AveragePrecision()(scores, positives) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_average_precision_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # positives at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5
    assert average_precision(scores, [1, 3]) == pytest.approx(0.5)
    assert average_precision(scores, [0]) == 1.0
    assert average_precision(scores, [4]) == pytest.approx(1 / 5)


def test_recall_at_k_edges():
    scores = np.arange(100, dtype=float)[::-1]  # item i has rank i + 1
    assert RecallAtK(k=10)(scores, [0, 9, 10, 50]) == 0.5
    assert RecallAtK(k=1)(scores, [0]) == 1.0
    assert RecallAtK(k=1)(scores, [1]) == 0.0
    assert RecallAtK(k=1000)(scores, [99]) == 1.0  # k beyond the pool: everything retrieved
    # duplicates count once
    assert RecallAtK(k=10)(scores, [0, 0, 50]) == 0.5
    with pytest.raises(ValueError):
        RecallAtK(k=10)(scores, [])
    with pytest.raises(ValueError):
        RecallAtK(k=10)(scores, [100])
    with pytest.raises(ValueError):
        RecallAtK(k=0)


def test_ties_are_pessimistic():
    # constant scores: every positive ranked after every negative
    scores = np.zeros(20)
    assert list(positive_ranks(scores, [0, 5])) == [19, 20]
    assert RecallAtK(k=18)(scores, [0, 5]) == 0.0
    assert RecallAtK(k=19)(scores, [0, 5]) == 0.5
    assert average_precision(scores, [0, 5]) == pytest.approx((1 / 19 + 2 / 20) / 2)
    # a positive tied with one negative at the top comes second
    scores = np.array([1.0, 1.0, 0.0, 0.0])
    assert list(positive_ranks(scores, [0])) == [2]
    assert list(positive_ranks(scores, [1])) == [2]
    # positives tied with each other only: consecutive ranks, order irrelevant
    assert list(positive_ranks(scores, [0, 1])) == [1, 2]
    assert average_precision(scores, [0, 1]) == 1.0


def test_nan_ranks_last():
    scores = np.array([np.nan, 0.5, -10.0])
    assert list(positive_ranks(scores, [0])) == [3]
    assert list(positive_ranks(scores, [2])) == [2]


def test_result_independent_of_pool_order():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=50).astype(float)  # many ties
    positives = np.array([3, 7, 20])
    perm = rng.permutation(50)
    inv = np.argsort(perm)
    ap1 = average_precision(scores, positives)
    ap2 = average_precision(scores[perm], inv[positives])
    assert ap1 == ap2
    assert RecallAtK(k=10)(scores, positives) == RecallAtK(k=10)(scores[perm], inv[positives])
