"""Calibration of a method's hyperparameters on the benchmark's **training** concepts (never the test concepts)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from genattr.harness.api import RunEnv

from .pools import score_pools


def calibrate(bench, env: RunEnv, method_name: str, grid: Sequence[Mapping],
              metric: str = "ap", base_config: Mapping | None = None, pool_sample: int | None = None,
              queries_per_concept: int | None = None, on_result: Callable[[dict], None] | None = None) -> dict:
    """Pick a method's hyperparameters on the **training** concepts (never the test concepts): evaluate
    ``method_name`` with ``{**base_config, **g}`` for each ``g`` in ``grid`` on the queries of every training
    concept and return ``{"best": config, "metric": metric, "table": [{"config", "mean", "by_split", "values"}]}``
    (ties: the first in ``grid``). Built-in data only.

    ``pool_sample``: rank a seeded sample of that many base items plus the concept's own exemplars instead of the
    whole pool (through the method's ``candidates``; cheap for methods whose cost grows with the pool, such as
    unlearning; metrics then refer to that smaller pool). ``queries_per_concept``: only the first queries of each
    concept. ``on_result(record)`` is called after every query (for logging; ``record["method"]`` is the method
    instance that scored it, for diagnostics such as unlearning's ``step_trace``)."""
    import numpy as np

    import genattr
    from genattr.harness.scoring import check_scores

    state = bench._load(env, "train")
    base = None  # the base-item sample: the same for every configuration, concept and query
    if pool_sample is not None:
        base = np.sort(_calibration_rng(env.seed).choice(state.n_base, min(int(pool_sample), state.n_base),
                                                          replace=False))
    table = []
    for g in grid:
        cfg = {**dict(base_config or {}), **dict(g)}
        method = genattr.get_method(method_name, **cfg)
        values: dict = {}
        for case in state.cases.values():
            nq = len(case.queries) if queries_per_concept is None else min(int(queries_per_concept),
                                                                              len(case.queries))
            if base is not None:
                idx = np.concatenate([base, np.asarray(case.own_idx, dtype=np.int64)])
                ctx = bench.context(case.id, method, env, "train")
                method.prepare(ctx)
            for qi in range(nq):
                if base is None:
                    r = bench.evaluate(case.id, qi, method, env, split="train")
                else:
                    s = check_scores(method.attribute(ctx, [case.queries[qi]], candidates=idx.tolist()), method, 1,
                                     idx.size)[0]
                    r, _ = score_pools(s, base.size, np.arange(base.size, idx.size), ["own"], bench._metrics)
                values.setdefault(case.split, []).append(r[metric])
                if on_result is not None:
                    on_result({"config": cfg, "concept": case.id, "split": case.split, "query": qi,
                               metric: r[metric], "method": method})
        allv = [v for vs in values.values() for v in vs]
        table.append({"config": cfg, "mean": sum(allv) / len(allv),
                      "by_split": {k: sum(v) / len(v) for k, v in values.items()}, "values": values})
    best = max(range(len(table)), key=lambda i: (table[i]["mean"], -i))
    return {"best": table[best]["config"], "metric": metric, "table": table}


def _calibration_rng(seed: int):
    """The generator of :func:`calibrate`'s base-item sample (the same sample for every configuration)."""
    from genattr.harness.seeding import numpy_rng

    return numpy_rng(int(seed), "customized-model/calibration-pool")
