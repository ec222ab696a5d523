"""Retrieval metrics of the Customized Model benchmark (AbC): Recall@K and average precision.

Both take ``(scores, positives)``: ``scores`` a float array over the retrieval pool (higher = more influential),
``positives`` the pool indices of the true sources (a customized model's exemplars).

Ranking rule (shared by both metrics, see :func:`positive_ranks`):

* items are ranked by descending score, ranks are 1-based;
* **ties are broken pessimistically**: a positive whose score equals a negative's is ranked *after* that
  negative. A method that gives every item the same score therefore gets the worst possible ranks, never a
  lucky one. (The public AbC evaluation uses an unstable sort, so its ties fall arbitrarily; on data without
  ties both agree.) Positives tied with each other take consecutive ranks — they are interchangeable, so
  their order changes neither metric;
* ``NaN`` scores rank below every number (pessimistic again).

Duplicate indices in ``positives`` count once; an empty ``positives`` or an index outside the pool is a
``ValueError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np


def _prepare(scores, positives):
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.unique(np.asarray(positives, dtype=np.int64).reshape(-1))
    if pos.size == 0:
        raise ValueError("retrieval metric: no positives given")
    if pos.min() < 0 or pos.max() >= s.size:
        raise ValueError(f"retrieval metric: positive index out of range for a pool of {s.size}")
    return s, pos


def positive_ranks(scores, positives) -> "np.ndarray":
    """1-based ranks of the positives, ascending, under the pessimistic tie rule of this module."""
    import numpy as np

    s, pos = _prepare(scores, positives)
    s = np.where(np.isnan(s), -np.inf, s)
    is_pos = np.zeros(s.size, dtype=np.int8)
    is_pos[pos] = 1
    # lexsort: the last key is primary. Descending score, then negatives (0) before positives (1).
    order = np.lexsort((is_pos, -s))
    ranks = np.empty(s.size, dtype=np.int64)
    ranks[order] = np.arange(1, s.size + 1)
    return np.sort(ranks[pos])


def recall_at_k(scores, positives, k: int = 10) -> float:
    """(#positives among the top ``k``) / #positives."""
    ranks = positive_ranks(scores, positives)
    return float((ranks <= int(k)).sum() / ranks.size)


def average_precision(scores, positives) -> float:
    """Mean over the positives, in rank order, of ``j / rank_j`` (``j`` = 1, 2, …; 1-based ranks)."""
    import numpy as np

    ranks = positive_ranks(scores, positives)
    return float(np.mean(np.arange(1, ranks.size + 1) / ranks))


class RecallAtK:
    """Recall@K = (#exemplars in the top K) / #exemplars (AbC reports K = 5, 10, 100; 10 is the headline)."""

    name = "recall-at-k"
    version = "1"
    kind = "retrieval"
    higher_is_better = True

    def __init__(self, k: int = 10):
        k = int(k)
        if k < 1:
            raise ValueError(f"recall-at-k: k must be >= 1, got {k}")
        self.k = k
        self.config = {"k": k}
        #: The result column and the label a benchmark reports this metric under.
        self.column = f"recall@{k}"
        self.display = f"Recall@{k}"

    def __call__(self, scores, positives: Sequence[int]) -> float:
        return recall_at_k(scores, positives, self.k)

    def __repr__(self) -> str:
        return f"RecallAtK(k={self.k})"


class AveragePrecision:
    """Average precision of the exemplars' ranks (mean over queries = mAP). Equals scikit-learn's
    ``average_precision_score`` on scores without ties."""

    name = "average-precision"
    version = "1"
    kind = "retrieval"
    higher_is_better = True

    #: The result column (AbC's name) and the label of its mean over queries.
    column = "ap"
    display = "mAP"

    def __init__(self):
        self.config = {}

    def __call__(self, scores, positives: Sequence[int]) -> float:
        return average_precision(scores, positives)

    def __repr__(self) -> str:
        return "AveragePrecision()"
