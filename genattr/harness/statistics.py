"""Statistics the summaries and the leaderboard report: mean ± standard error, paired bootstrap intervals over the
same queries, and a "best" that is claimed only when it is separated from the others.

Methods are compared **paired**: two methods' values are matched by a key that names the query (the leaderboard
uses the canonical JSON of a row's ``params``: concept, query and split, or K and query), and only the keys both
methods have enter the comparison. The interval is a percentile bootstrap of the mean paired difference over those
keys, drawn from a fixed seed, so the same results always give the same intervals.

Nothing here imports torch; numpy only.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Bootstrap resamples and interval level used unless a caller asks otherwise.
N_BOOT = 10_000
LEVEL = 0.95
#: Fewest paired queries behind a "best": below this a percentile bootstrap interval is far narrower than it should
#: be (with 2 pairs it is just their range), so no method is called best however the interval falls.
MIN_PAIRS = 5


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def mean_se(values: Iterable[Any]) -> dict:
    """``{"mean", "se", "n"}`` of the finite values (None and NaN are left out and not counted): se is the sample
    standard deviation (ddof = 1) over √n, NaN when n < 2; the mean is NaN when n = 0."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    mean = math.fsum(xs) / n
    if n < 2:
        return {"mean": mean, "se": float("nan"), "n": n}
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def _sort_key(key: Hashable) -> tuple:
    return (type(key).__name__, repr(key))


@functools.lru_cache(maxsize=64)
def _indices(n: int, n_boot: int, seed: int):
    """The resampling index matrix (n_boot × n) for n paired values: the same for every comparison of n keys."""
    import numpy as np

    idx = np.random.default_rng([int(seed), int(n)]).integers(0, n, size=(int(n_boot), n), dtype=np.int32)
    idx.setflags(write=False)
    return idx


def paired_differences(a: Mapping[Hashable, Any], b: Mapping[Hashable, Any]) -> tuple[list, list[float]]:
    """The keys both mappings hold with finite values (in a stable order) and the differences ``a[k] - b[k]``."""
    keys, diffs = [], []
    for k in sorted(set(a) & set(b), key=_sort_key):
        xa, xb = _finite([a[k]]), _finite([b[k]])
        if xa and xb:
            keys.append(k)
            diffs.append(xa[0] - xb[0])
    return keys, diffs


def paired_bootstrap(a: Mapping[Hashable, Any], b: Mapping[Hashable, Any], n_boot: int = N_BOOT,
                     level: float = LEVEL, seed: int = 0) -> dict:
    """Mean paired difference ``a − b`` over the keys both hold (finite values only) with a percentile bootstrap
    interval: ``{"diff", "lo", "hi", "n"}``. ``n`` is the number of shared keys; with n = 0 everything is NaN, with
    n = 1 the interval is NaN (one pair says nothing about the spread). Deterministic for a given ``seed``."""
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _, diffs = paired_differences(a, b)
    n = len(diffs)
    nan = float("nan")
    if n == 0:
        return {"diff": nan, "lo": nan, "hi": nan, "n": 0}
    d = np.asarray(diffs, dtype=np.float64)
    diff = float(d.mean())
    if n < 2:
        return {"diff": diff, "lo": nan, "hi": nan, "n": 1}
    if np.all(d == d[0]):  # no spread: every resample has the same mean
        return {"diff": diff, "lo": float(d[0]), "hi": float(d[0]), "n": n}
    means = d[_indices(n, int(n_boot), int(seed))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "n": n}


def excludes_zero(interval: Mapping[str, Any] | None, higher_is_better: bool | None = True) -> bool:
    """Whether a paired interval says "better": entirely above 0 (higher is better) or below 0 (lower is better)."""
    if not interval or higher_is_better is None:
        return False
    lo, hi = interval.get("lo"), interval.get("hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    return lo > 0 if higher_is_better else hi < 0


def compare_methods(values: Mapping[str, Mapping[Hashable, Any]], higher_is_better: bool | None,
                    reference: str | None = "random", n_boot: int = N_BOOT, level: float = LEVEL,
                    seed: int = 0, min_pairs: int = MIN_PAIRS) -> dict:
    """Compare methods on one metric column. ``values`` is ``{method: {pairing key: value}}``.

    Returns ``{"best", "order", "methods"}``:

    * ``order``: methods from best to worst mean (as given when the direction is unknown);
    * ``best``: the method with the best mean, but only when its paired interval against **every** other method
      with values (the runner-up first) lies on the better side of 0 and rests on at least ``min_pairs`` shared
      keys; otherwise None (also when the direction is unknown or
      there is only one method);
    * ``methods[m]``: ``mean``, ``se``, ``n``; ``vs_reference`` (the paired interval of m − ``reference``, None
      for the reference itself or when it is absent) and ``vs_best_other`` (the paired interval of m − the best
      other method, with that method's name under ``"method"``; None when the direction is unknown or m is alone).
    """
    stats = {m: mean_se(v.values()) for m, v in values.items()}
    methods = list(values)
    if higher_is_better is None:
        order = methods
    else:
        sign = 1.0 if higher_is_better else -1.0

        def rank(m):
            mean = stats[m]["mean"]
            return (math.isnan(mean), -sign * mean if not math.isnan(mean) else 0.0, methods.index(m))

        order = sorted(methods, key=rank)
    cache: dict[tuple[str, str], dict] = {}

    def pair(x: str, y: str) -> dict:
        if (x, y) not in cache:
            if (y, x) in cache:
                r = cache[(y, x)]
                cache[(x, y)] = {"diff": -r["diff"], "lo": -r["hi"], "hi": -r["lo"], "n": r["n"]}
            else:
                cache[(x, y)] = paired_bootstrap(values[x], values[y], n_boot=n_boot, level=level, seed=seed)
        return dict(cache[(x, y)])

    ranked = [m for m in order if not math.isnan(stats[m]["mean"])]
    best = None
    if higher_is_better is not None and len(ranked) >= 2:
        top = ranked[0]
        if all(excludes_zero(r := pair(top, other), higher_is_better) and r["n"] >= min_pairs
               for other in ranked[1:]):
            best = top
    out: dict[str, dict] = {}
    for m in methods:
        entry = dict(stats[m])
        entry["vs_reference"] = (pair(m, reference) if reference is not None and reference in values
                                 and m != reference else None)
        others = [o for o in ranked if o != m]
        if higher_is_better is not None and others:
            entry["vs_best_other"] = {"method": others[0], **pair(m, others[0])}
        else:
            entry["vs_best_other"] = None
        out[m] = entry
    return {"best": best, "order": order, "methods": out}


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
