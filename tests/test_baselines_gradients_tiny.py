"""TRAK, D-TRAK, JourneyTRAK and DataInf on the built-in tiny model (``tiny-t2i`` trained on digits, tiny recipe)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from genattr.harness.api import AttributionContext, Query

warnings.filterwarnings("ignore", message=".*batching rule.*")

POOL = 30


@pytest.fixture(scope="module")
def tiny(session_cache):
    from genattr.datasets.digits import Digits
    from genattr.harness.models import load_or_train
    from genattr.plugins.models.recipes import recipe

    torch.set_num_threads(1)
    r = recipe("digits", "tiny")
    ds = Digits(**r["dataset"])
    model = load_or_train(session_cache, ds, r["model"], r["train"], seed=0)
    return model, ds.subset(ds.ids[:POOL])


def _ctx(model, pool, cache):
    return AttributionContext(model=model, train_set=pool, cache=cache, scale="tiny")


@pytest.mark.parametrize("name", ["trak", "dtrak"])
def test_training_image_query_ranks_itself_first(name, tiny, session_cache):
    from genattr import get_method

    model, pool = tiny
    m = get_method(name)
    ctx = _ctx(model, pool, session_cache)
    m.prepare(ctx)
    idx = [0, 7, 19]
    qs = [Query(f"train-{i}", pool.item(i).image, pool.item(i).captions[0]) for i in idx]
    s = m.attribute(ctx, qs)
    assert s.shape == (3, POOL) and np.isfinite(s).all()
    assert list(s.argmax(axis=1)) == idx


def test_per_sample_gradients_use_vmap_on_the_real_adapter(tiny):
    from genattr.harness import gradients as G

    model, pool = tiny
    gf = G.PerSampleGrad(model, G.select_parameters(model, "cross-attn-kv"))
    ex = [pool.item(i) for i in range(3)]
    lat = model.latents(torch.stack([e.image for e in ex]))
    emb = model.text_embeddings([e.captions[0] for e in ex])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with torch.no_grad():
            g = gf(lat, emb, torch.tensor([5, 300, 900]), torch.randn_like(lat))
    assert gf.mode == "vmap" and g.shape == (3, gf.layout.dim) and torch.isfinite(g).all()


def test_journeytrak_regenerates_the_query_trajectory(tiny):
    from genattr.plugins.methods.trak import _run_sampler

    model, _ = tiny
    prompt = "a handwritten digit 3"
    img = model.generate([prompt], [11], steps=8)
    traj, x = _run_sampler(model, prompt, 11, 8, "cpu")
    assert len(traj) == 8
    assert torch.allclose(model.decode(x).clamp(-1, 1).cpu(), img, atol=1e-5)
    # the scheduler's last x̂0 is (close to) the generated image
    assert (traj[-1][1].clamp(-1, 1) - img[0]).abs().mean() < 0.05


def test_all_gradient_methods_run_on_the_tiny_model(tiny, session_cache):
    from genattr import get_method

    model, pool = tiny
    ctx = _ctx(model, pool, session_cache)
    gen = model.generate(["a handwritten digit 5"], [3], steps=10)[0]
    qs = [Query("gen", gen, "a handwritten digit 5", meta={"seed": 3, "steps": 10}),
          Query("masked", pool.item(2).image, pool.item(2).captions[0], mask=torch.ones(8, 8))]
    for name in ("journeytrak", "datainf"):
        m = get_method(name)
        m.prepare(ctx)
        s = m.attribute(ctx, qs)
        assert s.shape == (2, POOL) and np.isfinite(s).all() and s.std() > 0, name
