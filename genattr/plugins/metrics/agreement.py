"""Agreement with a teacher's ranking: mAP(k) (FastGDA, Wang et al. 2025, §4 and ``eval.py``).

``TeacherMAP(k)(scores, teacher_ranking)``: the relevant set is the teacher's **top k** items (the first ``k`` entries
of ``teacher_ranking``, training indices best first); the value is the average precision of those items in the
method's ranking of the whole pool — the mean, over the k relevant items in the method's rank order, of
``j / rank_j`` (``j`` = 1 … k, ``rank_j`` the 1-based rank of the j-th of them). A method that ranks the teacher's
top k first scores 1; a random ranking scores about k / N. This equals scikit-learn's ``average_precision_score`` of
the relevance labels against the method's rank order (what FastGDA's ``compute_map_k`` computes) on scores without
ties; ties are broken pessimistically (:mod:`genattr.plugins.metrics.retrieval`). The teacher-agreement benchmark
reports it for k as fractions of N, mean ± s.e. over held-out queries.
"""

from __future__ import annotations

from typing import Sequence


class TeacherMAP:
    """mAP(k) against the teacher's top ``k`` (see the module docstring)."""

    name = "teacher-map"
    version = "1"
    kind = "retrieval"
    higher_is_better = True

    def __init__(self, k: int = 10):
        k = int(k)
        if k < 1:
            raise ValueError(f"teacher-map: k must be >= 1, got {k}")
        self.k = k
        self.config = {"k": k}
        #: The result column and the label of its mean over queries.
        self.column = f"map@{k}"
        self.display = f"mAP({k})"

    def __call__(self, scores, positives: Sequence[int]) -> float:
        import numpy as np

        from .retrieval import average_precision

        top = np.asarray(list(positives), dtype=np.int64).reshape(-1)
        top = top[top >= 0][: self.k]
        if top.size < self.k:
            raise ValueError(f"teacher-map: the teacher ranking holds {top.size} items, k = {self.k} asked")
        return average_precision(scores, top)

    def __repr__(self) -> str:
        return f"TeacherMAP(k={self.k})"
