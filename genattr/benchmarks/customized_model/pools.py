"""Retrieval pools of the Customized Model benchmark and the per-query metric columns over them.

The ``all`` pool is the base items (a seeded subset of the base model's training set, or all of it) followed by
every concept's exemplars; a concept's ``own`` pool is the base items plus its own exemplars (the AbC headline). One
attribution over the ``all`` pool serves both: the ``own`` scores are the same vector restricted to the own pool.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .config import DEFAULT_METRICS, pool_column


def resolve_metrics(specs: Sequence[dict] | None = None) -> list[tuple[str, Any, dict]]:
    """``[(column, metric object, info)]`` for the retrieval metric specs, through the metric registry: the column
    is the metric's ``column`` attribute (``recall@10``, ``ap``) or its registered name; ``info`` holds the
    registered name, a display label and ``higher_is_better``."""
    from .._metrics import resolve_metric_specs

    return resolve_metric_specs("customized-model", specs if specs is not None else DEFAULT_METRICS, "retrieval",
                                "retrieval metrics (scores, positives)")


def score_pools(scores, n_base: int, own_idx, pools: Sequence[str],
                metrics: Sequence[tuple[str, Callable, dict]] | None = None) -> tuple[dict, dict]:
    """Metric columns for one query's score vector over the ``all`` pool (base items ``0 … n_base−1``, then every
    concept's exemplars); the ``own`` pool is the base items plus ``own_idx``. ``metrics``: from
    :func:`resolve_metrics` (default: the built-in Recall@10/5/100 and AP). ``extra`` gets the exemplars' 1-based
    ranks per pool (pessimistic ties, as the built-in retrieval metrics rank)."""
    import numpy as np

    if metrics is None:
        metrics = resolve_metrics()

    own_idx = np.asarray(own_idx, dtype=np.int64)
    row, extra = {}, {}
    for p in pools:
        if p == "own":
            keep = np.concatenate([np.arange(n_base), own_idx])
            s = scores[keep]
            pos = np.arange(n_base, n_base + own_idx.size)
        else:
            s, pos = scores, own_idx
        for column, metric, _ in metrics:
            row[pool_column(column, p)] = float(metric(s, pos))
        extra[f"ranks_{p}"] = _ranks(s, pos)
        extra[f"pool_size_{p}"] = int(s.size)
    return row, extra


def _ranks(scores, positives) -> list[int]:
    """1-based ranks of the positives: descending score, a positive after the negatives it ties with (the
    pessimistic rule of the built-in retrieval metrics), NaN last."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s = np.where(np.isnan(s), -np.inf, s)
    pos = np.unique(np.asarray(positives, dtype=np.int64))
    is_pos = np.zeros(s.size, dtype=np.int8)
    is_pos[pos] = 1
    ranks = np.empty(s.size, dtype=np.int64)
    ranks[np.lexsort((is_pos, -s))] = np.arange(1, s.size + 1)
    return sorted(int(r) for r in ranks[pos])


def base_pool(dataset, pool_size, seed: int):
    """``pool_size`` items of the base training set (a seeded subset, in dataset order), or all of it."""
    if pool_size is None or int(pool_size) >= len(dataset):
        return dataset
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(dataset), size=int(pool_size), replace=False))
    ids = dataset.ids
    return dataset.subset([ids[i] for i in keep])


def pool_name(base) -> str:
    """``BASE+customized-model-pool``: the pool carries its base dataset's name, so methods that pick a component
    by the training set's name (the ``features`` encoder) recognise the built-in data."""
    return f"{getattr(base, 'name', 'base')}+customized-model-pool"


def assemble_pool(base, cases: Sequence[Any]):
    """The ``all`` pool: base items then each case's exemplars (captions kept); sets ``case.own_idx``."""
    import torch

    from genattr.harness.data import InMemoryDataset

    ids = list(base.ids)
    images = [base.images()]
    captions = [tuple(base.captions(i)) for i in range(len(base))]
    seen = set(ids)
    for case in cases:
        ex = case.exemplars
        start = len(ids)
        for i, eid in enumerate(ex.ids):
            pid = eid if eid not in seen else f"{case.id}/{eid}"
            if pid in seen:
                raise ValueError(f"duplicate pool id {pid!r}")
            seen.add(pid)
            ids.append(pid)
            captions.append(tuple(ex.captions(i)))
        images.append(ex.images().to(images[0].dtype))
        case.own_idx = list(range(start, len(ids)))
    pool = InMemoryDataset(pool_name(base), "1", ids, torch.cat(images), captions,
                           meta={"n_base": len(base)})
    return pool, len(base)
