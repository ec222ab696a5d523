"""ReTrac's per-draw gradient re-normalisation as the ``normalize`` option of TRAK, D-TRAK, JourneyTRAK and DataInf
(on the toy pixel-space model of ``test_baselines_gradients.py``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from genattr.harness import gradients as G
from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError
from genattr.harness.seeding import item_noise
from genattr.plugins.methods.datainf import DataInfMethod
from genattr.plugins.methods.trak import DTrakMethod, JourneyTrakMethod, TrakMethod

from test_baselines_gradients import WORDS, ToyT2I, _images

warnings.filterwarnings("ignore", message=".*batching rule.*")

N = 8
INCLUDE = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]  # to_k and to_v: two layers, 128 weights
METHODS = [TrakMethod, DTrakMethod, JourneyTrakMethod, DataInfMethod]


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    return ToyT2I(seed=0)


@pytest.fixture(scope="module")
def train_set():
    caps = [(f"{WORDS[i % 12]} {WORDS[(3 * i + 1) % 12]}", f"a {WORDS[(5 * i + 2) % 12]}") for i in range(N)]
    return InMemoryDataset("toy", "1", [f"img{i:02d}" for i in range(N)], _images(N), caps)


def _ctx(model, ds, path):
    return AttributionContext(model=model, train_set=ds, cache=Cache(path), scale="tiny")


def _queries(ds):
    return [Query("g", _images(1, seed=5)[0], "dot ring", meta={"seed": 4}),
            Query("t2", ds.item(2).image, ds.item(2).captions[0])]


def _small(cls, **kw):
    """A cheap configuration: two attention layers, few draws (JourneyTRAK: a short trajectory)."""
    kw = {"include": INCLUDE, "num_timesteps": 2, **kw}
    if cls is JourneyTrakMethod:
        kw.update(sampling_steps=6, feature_steps=3, resamplings=2)
    return cls(**kw)


def _spec(m, ctx):
    return m._spec(ctx) if isinstance(m, DataInfMethod) else m._spec(ctx, ctx.model)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_normalize_none_is_todays_behaviour(cls, toy, train_set, tmp_path):
    default, none = _small(cls), _small(cls, normalize="none")
    # the option enters the configuration only when given: results and caches keyed on the configuration of
    # before the option (LDS, Customized Model and leave-K-out tables) stay valid
    assert "normalize" not in default.config and none.config["normalize"] == "none"
    assert default.option(default.config, "normalize") == "none"
    qs = _queries(train_set)
    a = default.attribute(_ctx(toy, train_set, tmp_path / "a"), qs)
    b = none.attribute(_ctx(toy, train_set, tmp_path / "b"), qs)  # computed afresh in another cache
    assert np.array_equal(a, b)
    ctx = _ctx(toy, train_set, tmp_path / "a")
    assert "normalize" not in _spec(none, ctx).key_parts()  # the gradient-store keys of before the option
    assert _spec(none, ctx).key_parts() == _spec(default, ctx).key_parts()


def _hand_grad(model, image, caption, draw, seed, names, target):
    """One draw's per-sample gradient over ``names``, by plain autograd (``names`` in the store's order)."""
    ps = G.select_parameters(model, "cross-attn-kv", INCLUDE)
    p = {n: ps[n].clone().requires_grad_(True) for n in names}
    noise = item_noise(seed, draw.noise_key, draw.noise_caption, draw.t, tuple(image.shape))
    loss = model.denoise_loss(image[None], model.text_embeddings([caption]), torch.tensor([draw.t]), noise[None],
                              params=p, target=target).sum()
    return torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, [p[n] for n in names])]).double().numpy()


def _unit_mean(grads, reduce="mean"):
    u = [g / np.linalg.norm(g) for g in grads]
    return np.sum(u, axis=0) if reduce == "sum" else np.mean(u, axis=0)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_unit_rows_are_means_of_unit_draw_gradients(cls, toy, train_set, tmp_path):
    m = _small(cls, normalize="unit", **({} if cls is DataInfMethod else {"projection": "identity"}))
    assert m.config["normalize"] == "unit"
    ctx = _ctx(toy, train_set, tmp_path)
    qs = _queries(train_set)
    datainf = isinstance(m, DataInfMethod)
    store = m.train_gradients(ctx) if datainf else m.train_features(ctx, toy)
    assert store.spec.normalize == "unit" and store.spec.key_parts()["normalize"] == "unit"
    names = store.names
    assert len(names) == 2
    target = getattr(m, "target", "loss")
    reduce = getattr(m, "reduce", "mean")
    draws = m._draws(ctx, "train") if datainf else m._draw_fn(ctx, toy, "train")
    for i in (0, 5):
        ex = train_set.item(i)
        it = G.GradItem(ex.id, ex.image, tuple(ex.captions))
        ds = draws(it)
        assert len(ds) == 2
        want = _unit_mean([_hand_grad(toy, ex.image, ex.captions[d.caption % len(ex.captions)], d, ctx.seed, names,
                                      target) for d in ds], reduce)
        got = np.asarray(store.array[i, 0], dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
        assert np.linalg.norm(got) <= (2 if reduce == "sum" else 1) + 1e-5
    # the query side gets the same per-draw normalisation
    q = qs[1]
    if isinstance(m, JourneyTrakMethod):
        feats = m.query_features(ctx, toy, [q])[0].double().numpy()
        traj = m.trajectory(ctx, toy, q)
        assert feats.shape == (len(traj), store.dim)
        for s, (t, x0) in enumerate(traj):
            ds = [G.Draw(t, 0, f"query:{q.id}/t{t}/r{r}") for r in range(m.config["resamplings"])]
            want = _unit_mean([_hand_grad(toy, x0.detach(), q.prompt, d, ctx.seed, names, "loss") for d in ds])
            np.testing.assert_allclose(feats[s], want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    else:
        item = G.GradItem(f"query:{q.id}", q.image, (q.prompt,))
        qdraws = m._draws(ctx, "query") if datainf else m._query_draws(ctx, toy)
        gf = m._grad_fn(ctx) if datainf else m._tools(toy, ctx)[0]
        got = G.gradient_features(toy, lambda r: item, 1, qdraws, gf, None, seed=ctx.seed)[0].double().numpy()
        want = _unit_mean([_hand_grad(toy, q.image, q.prompt, d, ctx.seed, names, target) for d in qdraws(item)])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    # and the scores differ from the unnormalised method's
    unit = m.attribute(ctx, qs)
    plain = _small(cls, **({} if datainf else {"projection": "identity"})).attribute(ctx, qs)
    assert np.isfinite(unit).all() and not np.allclose(unit, plain, rtol=1e-3)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_bad_normalize_is_a_one_line_user_error(cls):
    with pytest.raises(UserError, match="normalize") as e:
        cls(normalize="l2")
    assert "\n" not in str(e.value) and "'l2'" in str(e.value)
    with pytest.raises(UserError, match="normalize"):
        cls(normalize=True)
