"""Unlearning's prescreen + exact refinement, the base-model Fisher and the stratified query draws (toy model)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.errors import UserError
from genattr.plugins.methods import unlearning as U

from test_unlearning import ToyT2I, _queries, toy_dataset


def _ctx(model, data, tmp_path, name="c", **kw):
    return AttributionContext(model=model, train_set=data, cache=Cache(tmp_path / name), seed=0, scale="tiny", **kw)


OPTS = dict(preset="tiny", fisher_samples=16, alpha=0.5, steps=2, timesteps=4)


@pytest.mark.parametrize("flip", ["none", "max"])
def test_linear_prescreen_is_the_derivative_of_the_scoring_loss(flip, tmp_path):
    """g_zᵀΔθ is d/dε L(z, θ0 + εΔθ) at ε = 0 of exactly the loss the score uses (timesteps, noise, captions and
    each flip view): checked against a central difference of the scoring path."""
    data = toy_dataset(n=6, captions=3)
    model = ToyT2I(noisy=True)
    ctx = _ctx(model, data, tmp_path)
    m = U.Unlearning(**OPTS, flip=flip, captions=2, prescreen="linear", refine=2)
    m.prepare(ctx)
    theta = m.unlearned_weights(ctx, _queries()[0])
    theta0 = {k: v.detach() for k, v in model.parameters().items()}
    from genattr.harness.gradstore import store_for

    store, stored = store_for(ctx.cache), m._stored_gradients(ctx)
    lin = U.linear_scores(store, stored, model, m._linear_spec(ctx), [theta], None, "none")  # view 0 only
    eps = 1e-3
    scorer = m._scorer(ctx)
    plus, minus = scorer([{k: theta0[k] + eps * (theta[k] - theta0[k]) for k in theta},
                          {k: theta0[k] - eps * (theta[k] - theta0[k]) for k in theta}])
    fd = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(lin[0], fd[:, 0], rtol=1e-3, atol=1e-6 * np.abs(fd).max())
    if flip == "max":  # the mirror view is its own gradient, combined like the exact score
        both = U.linear_scores(store, stored, model, m._linear_spec(ctx), [theta], None, "max")
        np.testing.assert_allclose(both[0], fd.max(1), rtol=1e-3, atol=1e-6 * np.abs(fd).max())
        assert not np.allclose(fd[:, 0], fd[:, 1])


@pytest.mark.parametrize("prescreen", ["linear", "coarse"])
def test_head_is_exact_and_ranks_above_the_rest(prescreen, tmp_path):
    data = toy_dataset(n=14, captions=2)
    model = ToyT2I(noisy=True)
    qs = _queries()
    full = U.Unlearning(**OPTS).attribute(_ctx(model, data, tmp_path, "a"), qs)
    m = U.Unlearning(**OPTS, prescreen=prescreen, refine=5, coarse_timesteps=2)
    ctx = _ctx(model, data, tmp_path, "b")
    got = m.attribute(ctx, qs)
    pre = m.prescreen_scores(ctx, [m.unlearned_weights(ctx, q) for q in qs], np.arange(14))
    for q in range(len(qs)):
        head = np.argsort(-pre[q], kind="stable")[:5]
        rest = np.setdiff1d(np.arange(14), head)
        np.testing.assert_allclose(got[q, head], full[q, head], rtol=1e-9, atol=1e-12)
        assert got[q, rest].max() < got[q, head].min()
        assert (np.argsort(-got[q, rest], kind="stable") == np.argsort(-pre[q, rest], kind="stable")).all()
    # a head as large as the pool is the exhaustive score
    np.testing.assert_allclose(U.Unlearning(**OPTS, prescreen=prescreen, refine=14).attribute(ctx, qs), full,
                               rtol=1e-9, atol=1e-12)


def test_prescreen_with_candidates_and_many_queries(tmp_path):
    data = toy_dataset(n=12)
    model = ToyT2I(noisy=True)
    ctx = _ctx(model, data, tmp_path)
    m = U.Unlearning(**OPTS, prescreen="linear", refine=3)
    qs = _queries()
    together = m.attribute(ctx, qs, candidates=[11, 0, 5, 7, 2, 9])
    apart = np.concatenate([m.attribute(ctx, [q], candidates=[11, 0, 5, 7, 2, 9]) for q in qs])
    np.testing.assert_allclose(together, apart, rtol=1e-9, atol=1e-12)
    full = U.Unlearning(**OPTS).attribute(ctx, qs, candidates=[11, 0, 5, 7, 2, 9])
    for q in range(3):
        top = np.argsort(-together[q])[:3]
        np.testing.assert_allclose(together[q, top], full[q, top], rtol=1e-9)


def test_evaluation_counts(tmp_path):
    """UNet evaluations per query, from the scoring path's counter: exhaustive N·T, coarse N·Tc + M·T, linear M·T
    plus one N·T gradient pass shared by every later query."""
    n, T, M, Q = 12, 4, 3, 3
    data = toy_dataset(n=n)
    model = ToyT2I(noisy=True)
    qs = _queries()
    update = OPTS["steps"] * 32 * 4  # tiny preset: batch 32 × accumulation 4
    ex = U.Unlearning(**OPTS)
    ex.attribute(_ctx(model, data, tmp_path, "e"), qs)
    assert ex.stats["scoring_evaluations"] == Q * n * T and ex.stats["theta0_evaluations"] == n * T
    assert ex.stats["update_evaluations"] == Q * update and ex.stats["fisher_evaluations"] == 16
    co = U.Unlearning(**OPTS, prescreen="coarse", refine=M, coarse_timesteps=1)
    co.attribute(_ctx(model, data, tmp_path, "c"), qs)
    assert co.stats["prescreen_evaluations"] == Q * n * 1 and co.stats["scoring_evaluations"] == Q * M * T
    assert co.stats["theta0_evaluations"] == n * T + n * 1
    li = U.Unlearning(**OPTS, prescreen="linear", refine=M, prescreen_order=1)
    ctx = _ctx(model, data, tmp_path, "l")
    li.attribute(ctx, qs)
    assert li.stats["gradient_evaluations"] == n * T and li.stats["scoring_evaluations"] == Q * M * T
    assert li.stats["prescreen_evaluations"] == 0
    again = U.Unlearning(**OPTS, prescreen="linear", refine=M, prescreen_order=1)
    again.attribute(ctx, qs[:1])  # the stored gradients are reused
    assert again.stats["gradient_evaluations"] == 0 and again.stats["scoring_evaluations"] == M * T
    second = U.Unlearning(**OPTS, prescreen="linear", refine=M, prescreen_probes=3)  # order 2: + 3 probes per row
    second.attribute(ctx, qs[:1])
    assert second.stats["gradient_evaluations"] == 3 * n * T


@pytest.mark.parametrize("flip", ["none", "mean"])
def test_second_order_prescreen_estimates_the_exact_score(flip, tmp_path):
    """The toy's prediction is linear in its weights, so τ is exactly g_zᵀΔθ + the Gauss–Newton term: with many
    probes the second-order prescreen reproduces τ, the first-order one does not (a large step)."""
    data = toy_dataset(n=10, captions=2)
    model = ToyT2I(noisy=True)
    ctx = _ctx(model, data, tmp_path)
    qs = _queries()[:2]
    opts = dict(OPTS, alpha=5.0, flip=flip, captions=None)
    exact = U.Unlearning(**opts).attribute(ctx, qs)
    idx = np.arange(10)
    two = U.Unlearning(**opts, prescreen="linear", prescreen_probes=400)
    thetas = [two.unlearned_weights(ctx, q) for q in qs]
    two.prepare(ctx)
    est = two.prescreen_scores(ctx, thetas, idx)
    one = U.Unlearning(**opts, prescreen="linear", prescreen_order=1)
    one.prepare(ctx)
    lin = one.prescreen_scores(ctx, thetas, idx)
    err2, err1 = np.abs(est - exact).max(), np.abs(lin - exact).max()
    assert err2 < 0.15 * np.abs(exact).max() and err2 < 0.3 * err1, (err2, err1)
    # candidates read the same rows
    np.testing.assert_allclose(two.prescreen_scores(ctx, thetas, np.array([7, 1])), est[:, [7, 1]], rtol=1e-9)


def test_projected_and_half_precision_linear_prescreen(tmp_path):
    data = toy_dataset(n=10)
    model = ToyT2I(noisy=True)
    ctx = _ctx(model, data, tmp_path)
    qs = _queries()
    m = U.Unlearning(**OPTS, prescreen="linear", refine=2)
    thetas = [m.unlearned_weights(ctx, q) for q in qs]
    m.prepare(ctx)
    exact = m.prescreen_scores(ctx, thetas, np.arange(10))
    for opts in (dict(prescreen_projection="gaussian", prescreen_dim=4096), dict(prescreen_dtype="float16")):
        p = U.Unlearning(**OPTS, prescreen="linear", refine=2, **opts)
        p.prepare(ctx)
        got = p.prescreen_scores(ctx, thetas, np.arange(10))
        np.testing.assert_allclose(got, exact, rtol=0.1, atol=0.1 * np.abs(exact).max())


def test_coarse_subset_and_option_checks():
    assert U.coarse_subset([0, 50, 100, 150, 200], 2) == [0, 100]
    assert U.coarse_subset(list(range(0, 1000, 50)), 4) == [0, 250, 500, 750]
    assert U.coarse_subset([0, 200, 400], 9) == [0, 200, 400]
    assert U.coarse_subset([0, 200, 400], [400, 0]) == [0, 400]
    with pytest.raises(UserError, match="not scoring timesteps"):
        U.coarse_subset([0, 200], [100])
    for bad in (dict(prescreen="fast"), dict(refine=0), dict(coarse_timesteps=0), dict(coarse_timesteps=[]),
                dict(prescreen_order=3), dict(prescreen_probes=0),
                dict(prescreen_projection="sparse"), dict(prescreen_dtype="int8"), dict(fisher_model="other"),
                dict(query_timesteps="sobol")):
        with pytest.raises(UserError):
            U.Unlearning(preset="tiny", **bad)
    cfg = U.Unlearning(preset="small").config
    assert (cfg["prescreen"], cfg["fisher_model"], cfg["query_timesteps"]) == ("none", "context", "random")
    assert U.Unlearning(preset="customized-small").config["fisher_model"] == "base"


def test_merge_head_orders():
    pre = np.array([5.0, 1.0, 3.0, 4.0, 2.0])
    out = U.merge_head(pre, np.array([0, 3]), np.array([0.1, 0.2]))
    assert out[0] == 0.1 and out[3] == 0.2
    assert out[[1, 2, 4]].max() < 0.1
    assert list(np.argsort(-out)) == [3, 0, 2, 4, 1]


# -- Fisher once per base model --------------------------------------------------------------------------------------
def test_base_model_fisher_is_computed_once_for_every_customized_model(tmp_path, caplog):
    data = toy_dataset(n=8)
    base = ToyT2I(a=0.3, b=-0.2, noisy=True)
    custom = [ToyT2I(a=0.31, b=-0.2, noisy=True), ToyT2I(a=0.3, b=-0.25, noisy=True)]
    cache = Cache(tmp_path / "c")
    qs = _queries()[:1]
    fishers, base_calls = [], []
    for model in custom:
        m = U.Unlearning(**OPTS, fisher_model="base")
        ctx = AttributionContext(model=model, train_set=data, cache=cache, scale="tiny", extra={"base_model": base})
        m.attribute(ctx, qs)
        fishers.append(m.fisher(ctx))
        base_calls.append(base.calls)
        assert model.calls > 0 and m.stats["fisher_evaluations"] == (16 if model is custom[0] else 0)
    assert base_calls[0] > 0 and base_calls[1] == base_calls[0]  # one Fisher on the base model, shared
    for k in fishers[0]:
        assert torch.equal(fishers[0][k], fishers[1][k])
    own = U.Unlearning(**OPTS).fisher(AttributionContext(model=custom[0], train_set=data, cache=cache, scale="tiny"))
    assert not all(torch.equal(own[k], fishers[0][k]) for k in own)
    # without a base model in the context: the context's model, with a warning
    caplog.set_level(logging.WARNING, logger="genattr.unlearning")
    fb = U.Unlearning(**OPTS, fisher_model="base").fisher(
        AttributionContext(model=custom[0], train_set=data, cache=cache, scale="tiny"))
    assert all(torch.equal(fb[k], own[k]) for k in own)
    assert "offers no base model" in caplog.text


def test_stratified_query_timesteps():
    ts = U.query_draws(0, "q", 0, 100, 1000, "stratified")
    assert [t // 10 for t in ts] == list(range(100))
    assert ts == U.query_draws(0, "q", 0, 100, 1000, "stratified")
    assert ts != U.query_draws(0, "q", 1, 100, 1000, "stratified")
    assert U.query_draws(0, "q", 0, 50, 1000) == U.query_draws(0, "q", 0, 50, 1000, "random")
