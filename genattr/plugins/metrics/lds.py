"""The linear datamodeling score (LDS; Park et al. 2023, "TRAK"; for diffusion: D-TRAK, Zheng et al. 2024).

A *datamodeling* metric (``kind="datamodeling"``) is called as ``metric(scores, subsets, outputs) -> float`` for one
query:

* ``scores`` — the method's attribution scores over the N training items at θ0 (higher = more influential, i.e.
  more helpful: removing the item raises the query's loss);
* ``subsets`` — the M training subsets, as an ``(M, N)`` boolean membership matrix or as M sequences of training
  indices;
* ``outputs`` — the model output of the query under the model trained on each subset, ``f(z; θ_{S_j})``: the
  diffusion loss (lower = the subset model reproduces the query better).

:class:`LDS` predicts each subset's effect additively, ``g(z, S_j) = Σ_{i∈S_j} τ(z, i)``, and returns the Spearman
rank correlation between ``(g(z, S_j))_j`` and ``(−f(z; θ_{S_j}))_j``: a subset full of helpful items should give a
*low* loss, so a good method's predictions rise where the loss falls and LDS is positive (PAPER_NOTES §5–6). It lies
in [−1, 1]; random scores give 0 in expectation.

Conventions (where the papers leave it open):

* ties (in the predictions or the outputs) take average ranks — the standard Spearman coefficient (scipy's
  ``spearmanr``);
* when either side is constant the coefficient is undefined (scipy returns NaN); here it is **0** — predictions
  that are all equal carry no ranking information, which is the chance level.

Option ``top`` (not in the papers; a diagnostic): LDS of the method's **top k only** — the items outside the
top ``k`` (a count, or a fraction of N when in (0, 1)) all take the (k+1)-th highest score, so only the head's
membership and its scores' differences to that value move the predictions. LDS sums raw scores over half the
training set, so a method is judged on the scale and order of its whole tail too; ``top`` tells how much of a
method's LDS (or of its shortfall) comes from its head. Column ``lds@top<k>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np


from genattr.harness.statistics import average_ranks, spearman  # noqa: E402,F401 - host helpers


def membership(subsets, n: int) -> "np.ndarray":
    """``subsets`` as an ``(M, n)`` boolean matrix: a boolean matrix is checked, sequences of indices converted."""
    import numpy as np

    if isinstance(subsets, np.ndarray) and subsets.dtype == bool:
        if subsets.ndim != 2 or subsets.shape[1] != n:
            raise ValueError(f"subset membership must be (M, {n}), got shape {tuple(subsets.shape)}")
        return subsets
    rows = list(subsets)
    mask = np.zeros((len(rows), n), dtype=bool)
    for j, idx in enumerate(rows):
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"subset {j} holds an index outside 0..{n - 1}")
        mask[j, idx] = True
    return mask


def subset_predictions(scores, subsets) -> "np.ndarray":
    """``g(S_j) = Σ_{i∈S_j} scores_i`` for every subset: a float64 array of length M."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    mask = membership(subsets, s.size)
    return mask.astype(np.float64) @ s


class LDS:
    """LDS of one query: ``Spearman((Σ_{i∈S_j} τ(z, i))_j, (−f(z; θ_{S_j}))_j)`` (see the module docstring).

    ``outputs`` may also be an ``(R, M)`` array (R training seeds per subset): they are averaged over the seeds
    first, as D-TRAK averages its subset models' outputs."""

    name = "lds"
    version = "1"
    kind = "datamodeling"
    higher_is_better = True
    display = "LDS"

    def __init__(self, top: int | float | None = None):
        if top is not None:
            ok = isinstance(top, (int, float)) and not isinstance(top, bool) and (
                (top >= 1 and float(top).is_integer()) or 0 < top < 1)
            if not ok:
                raise ValueError(f"top must be a count >= 1 or a fraction in (0, 1), got {top!r}")
            top = int(top) if top >= 1 else float(top)
            self.column = f"lds@top{top:g}"
            self.display = f"LDS (top {top:g})"
        self.top = top
        self.config: dict = {} if top is None else {"top": top}

    def head_only(self, scores) -> "np.ndarray":
        """``scores`` with every item outside the top ``k`` set to the (k+1)-th highest score (ties: lower index
        first, as the rankings); unchanged without ``top`` or when k ≥ N."""
        import numpy as np

        s = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
        if self.top is None:
            return s
        k = self.top if isinstance(self.top, int) else max(1, round(self.top * s.size))
        if k >= s.size:
            return s
        order = np.argsort(-s, kind="stable")
        s[order[k:]] = s[order[k]]
        return s

    def __call__(self, scores, subsets, outputs, **_: Any) -> float:
        import numpy as np

        f = np.asarray(outputs, dtype=np.float64)
        if f.ndim == 2:
            f = f.mean(axis=0)
        g = subset_predictions(self.head_only(scores), subsets)
        if f.shape != g.shape:
            raise ValueError(f"lds: {g.size} subsets but {f.size} outputs")
        return spearman(g, -f)

    def __repr__(self) -> str:
        return "<LDS>" if self.top is None else f"<LDS top={self.top:g}>"


def lds(scores, subsets: Sequence, outputs) -> float:
    """:class:`LDS` as a function."""
    return LDS()(scores, subsets, outputs)
