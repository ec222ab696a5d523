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
"""

from __future__ import annotations

from typing import Any, Sequence


def average_ranks(values) -> "np.ndarray":
    """1-based ranks of ``values`` with ties given the mean of the ranks they span."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size, dtype=np.float64)
    sv = v[order]
    start = 0
    for k in range(1, v.size + 1):
        if k == v.size or sv[k] != sv[start]:
            ranks[order[start:k]] = 0.5 * (start + k - 1) + 1.0
            start = k
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); 0 when either is
    constant or shorter than 2. NaN values are a ``ValueError``."""
    import numpy as np

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman: lengths differ ({x.size} vs {y.size})")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("spearman: NaN values")
    if x.size < 2:
        return 0.0
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    if den == 0.0:
        return 0.0
    return float(np.clip((rx * ry).sum() / den, -1.0, 1.0))


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

    def __init__(self):
        self.config: dict = {}

    def __call__(self, scores, subsets, outputs, **_: Any) -> float:
        import numpy as np

        f = np.asarray(outputs, dtype=np.float64)
        if f.ndim == 2:
            f = f.mean(axis=0)
        g = subset_predictions(scores, subsets)
        if f.shape != g.shape:
            raise ValueError(f"lds: {g.size} subsets but {f.size} outputs")
        return spearman(g, -f)

    def __repr__(self) -> str:
        return "<LDS>"


def lds(scores, subsets: Sequence, outputs) -> float:
    """:class:`LDS` as a function."""
    return LDS()(scores, subsets, outputs)
