"""The one scoring path: ``prepare`` + ``attribute`` + the checks every benchmark and ``genattr attribute`` rely on.

:func:`score` calls ``method.prepare(ctx)`` then ``method.attribute(ctx, queries[, candidates])`` once for all the
queries, and checks what came back: a float array of shape ``(len(queries), N)`` (``N`` the training set's size, or
``len(candidates)``) without NaN. A method that breaks the contract gets one line naming it and what was wrong
(:class:`ScoringError`), never a silently wrong metric.
"""

from __future__ import annotations

import time
from typing import Sequence

from .errors import ScoringError


def method_name(method) -> str:
    return str(getattr(method, "registered_name", None) or getattr(method, "name", None) or type(method).__name__)


def check_scores(scores, method, n_queries: int, width: int):
    """``scores`` as a float64 array, checked: shape ``(n_queries, width)``, no NaN."""
    import numpy as np

    name = method_name(method)
    if getattr(scores, "requires_grad", False):
        raise ScoringError(f"method {name!r} returned a tensor that requires grad; return scores.detach() (or a "
                           "numpy array)")
    try:
        s = np.asarray(scores, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - whatever it returned, the contract is a float array
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScoringError(f"method {name!r} returned scores that are not a float array "
                           f"({type(scores).__name__}: {text})") from None
    if s.shape != (n_queries, width):
        raise ScoringError(f"method {name!r} returned scores of shape {tuple(s.shape)}, expected "
                           f"({n_queries}, {width}) (queries × training items)")
    bad = np.isnan(s).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ScoringError(f"method {name!r} returned NaN scores for {len(rows)} of {n_queries} queries "
                           f"(first: query #{int(rows[0])})")
    return s


def score(method, ctx, queries: Sequence, candidates: Sequence[int] | None = None, timings: dict | None = None):
    """Checked scores ``(len(queries), N or len(candidates))`` of ``method`` for ``queries`` in ``ctx``.

    ``timings`` (a dict), when given, receives ``prepare_s`` and ``attribute_s``."""
    queries = list(queries)
    t0 = time.perf_counter()
    method.prepare(ctx)
    t1 = time.perf_counter()
    if candidates is None:
        raw = method.attribute(ctx, queries)
        width = len(ctx.train_set)
    else:
        candidates = [int(i) for i in candidates]
        raw = method.attribute(ctx, queries, candidates=candidates)
        width = len(candidates)
    t2 = time.perf_counter()
    if timings is not None:
        timings["prepare_s"] = round(t1 - t0, 6)
        timings["attribute_s"] = round(t2 - t1, 6)
    return check_scores(raw, method, len(queries), width)
