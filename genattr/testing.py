"""Helpers for plugin authors' unit tests: an :class:`~genattr.AttributionContext` over a small built-in dataset
(with or without the built-in tiny model), queries made from training items, and the checks the runner applies to
a method's scores — without reaching into genattr's internals::

    from genattr.testing import item_queries, check_method, tiny_context

    def test_my_method_ranks_an_item_first_when_it_is_the_query(tmp_path):
        ctx = tiny_context(tmp_path, model=False)          # 24 digits, a cache under tmp_path
        queries = item_queries(ctx.train_set, [0, 5])
        scores = check_method(MyMethod(), ctx, queries)     # shape, NaN, candidates: as in a run
        assert scores[0].argmax() == 0

``tiny_context(model=True)`` trains the built-in ``tiny-t2i`` model on the dataset with its ``tiny`` recipe (a few
seconds on a CPU; cached in the given folder, so later tests load it) — what a method that reads ``ctx.model``
needs. Everything here uses the public API only.
"""

from __future__ import annotations

import os
from typing import Sequence

__all__ = ["tiny_dataset", "tiny_model", "tiny_context", "item_queries", "check_method", "cache"]


def cache(folder: str | os.PathLike | None = None):
    """A genattr cache in ``folder`` (default: the user cache, ``GENATTR_CACHE``)."""
    from genattr.harness.cache import Cache

    return Cache(folder)


def tiny_dataset(name: str = "digits", n: int = 24, **config):
    """The first ``n`` items of the registered dataset ``name`` (built with ``config``)."""
    import genattr

    ds = genattr.get_dataset(name, **config)
    if n is not None and n < len(ds):
        ds = ds.subset(ds.ids[:n])
    return ds


def tiny_model(dataset, folder: str | os.PathLike | None = None, model: str = "tiny-t2i", seed: int = 0):
    """``model`` built and trained on ``dataset`` with its ``tiny`` recipe (through genattr's model cache in
    ``folder``, so it is trained once)."""
    from genattr.harness.models import load_or_train, model_recipe

    r = model_recipe(model, "tiny", dataset.name)
    return load_or_train(cache(folder), dataset, r["model"], r["train"], seed=seed, model=model)


def tiny_context(folder: str | os.PathLike | None = None, *, model: bool = True, dataset: str = "digits",
                 n: int = 24, seed: int = 0, extra: dict | None = None, **dataset_config):
    """An :class:`~genattr.AttributionContext` at scale ``tiny``: the first ``n`` items of ``dataset``, the built-in
    tiny model trained on them when ``model`` (else None), a cache in ``folder``."""
    from genattr import AttributionContext
    from genattr.harness.models import model_recipe

    # the recipe's dataset options (resolution, captions) first, so the model fits the images; its size is ``n``
    base = {k: v for k, v in model_recipe("tiny-t2i", "tiny", dataset)["dataset"].items() if k not in ("n", "limit")}
    train = tiny_dataset(dataset, n, **{**base, **dataset_config})
    m = tiny_model(train, folder, seed=seed) if model else None
    return AttributionContext(model=m, train_set=train, cache=cache(folder), seed=seed, scale="tiny",
                              extra=dict(extra or {}))


def item_queries(dataset, indices: Sequence[int]) -> list:
    """Training items ``indices`` as queries (their image and first caption): a method whose scores mean
    "influence" should rank each first, or near it."""
    from genattr import Query

    out = []
    for i in indices:
        item = dataset.item(int(i))
        out.append(Query(id=f"item-{item.id}", image=item.image, prompt=item.captions[0], meta={"index": int(i)}))
    return out


def check_method(method, ctx, queries, candidates: Sequence[int] | None = (1, 0)):
    """The method's checked scores for ``queries`` — ``prepare`` + ``attribute`` with the runner's checks (a float
    array ``(len(queries), N)`` without NaN; one :class:`~genattr.ScoringError` line otherwise) — and, unless
    ``candidates`` is None, that scoring a candidate subset gives those columns of the full scores."""
    import numpy as np

    from genattr import score

    full = score(method, ctx, queries)
    if candidates is not None:
        cand = [int(c) for c in candidates if int(c) < full.shape[1]]
        part = score(method, ctx, queries, candidates=cand)
        np.testing.assert_allclose(part, full[:, cand], rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(full).max())),
                                   err_msg="scores of a candidate subset differ from the full scores' columns")
    return full
