"""Integration tests of the unlearning method on the built-in tiny text-to-image model (``tiny`` recipes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genattr.harness.api import AttributionContext, Query
from genattr.harness.data import InMemoryDataset


@pytest.fixture(scope="session")
def digits_model(session_cache):
    import genattr
    from genattr.datasets.digits import Digits
    from genattr.harness.models import load_or_train
    from genattr.plugins.models.recipes import recipe

    genattr.load_plugins()
    r = recipe("digits", "tiny")
    data = Digits(**r["dataset"])
    model = load_or_train(session_cache, data, r["model"], r["train"], seed=0)
    return model, data


@pytest.fixture(scope="session")
def planted_model(session_cache):
    """A tiny model trained on 100 digits plus one "planted" image (a pattern no digit has, with its own caption)
    repeated 40 times."""
    import genattr
    from genattr.datasets.digits import Digits
    from genattr.harness.models import load_or_train
    from genattr.plugins.models.recipes import recipe

    genattr.load_plugins()
    r = recipe("digits", "tiny")
    base = Digits(**{**r["dataset"], "limit": 100})
    res = base.resolution
    planted = -torch.ones(1, 1, res, res)
    planted[..., ::2, :] = 1.0  # horizontal stripes
    copies = 40
    data = base.concat(InMemoryDataset(
        "planted", "1", [f"planted-{k:02d}" for k in range(copies)], planted.expand(copies, -1, -1, -1).clone(),
        [("a striped planted pattern",)] * copies))
    train = {**r["train"], "steps": 60}
    model = load_or_train(session_cache, data, r["model"], train, seed=0)
    return model, data, copies


def _ctx(model, data, cache):
    return AttributionContext(model=model, train_set=data, cache=cache, seed=0, scale="tiny")


def test_training_image_ranks_itself_in_top_percent(digits_model, session_cache):
    from genattr.plugins.methods.unlearning import Unlearning

    model, data = digits_model
    before = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    fp = model.fingerprint
    picks = [5, 60]
    queries = [Query(f"self-{i}", data.item(i).image, data.captions(i)[0]) for i in picks]
    # T = 20 scoring timesteps instead of the tiny preset's 5: with 5 the loss estimate of 120 similar 8 px digits
    # is too noisy for the exact top-1 this test demands (N = 120, so the top 1 % is rank 0).
    m = Unlearning(preset="tiny", timesteps=20)
    scores = m.attribute(_ctx(model, data, session_cache), queries)
    assert scores.shape == (2, len(data))
    top = max(1, len(data) // 100)
    for q, i in enumerate(picks):
        rank = int((scores[q] > scores[q, i]).sum())
        assert rank < top, f"training image {i} ranked {rank} for itself"
    # the caller's model is unchanged
    assert model.fingerprint == fp
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, before[k])


def test_vmap_and_loop_fisher_agree(digits_model):
    from genattr.plugins.methods.unlearning import fisher_diagonal

    model, data = digits_model
    fv = fisher_diagonal(model, data, "cross-attn-kv", samples=6, seed=3, batch=4, flips=True, method="vmap")
    fl = fisher_diagonal(model, data, "cross-attn-kv", samples=6, seed=3, batch=6, flips=True, method="loop")
    assert set(fv) == set(model.parameters("cross-attn-kv")) and len(fv) > 0
    for k in fv:
        assert fv[k].shape == model.parameters("cross-attn-kv")[k].shape
        assert torch.allclose(fv[k], fl[k], rtol=1e-3, atol=1e-12)
        assert float(fv[k].sum()) > 0


def test_scores_do_not_depend_on_scoring_batch_size(digits_model, tmp_path):
    from genattr.harness.cache import Cache
    from genattr.plugins.methods.unlearning import Unlearning

    model, data = digits_model
    sub = data.subset(data.ids[:24])
    q = [Query("q", data.item(30).image, data.captions(30)[0])]
    opts = dict(preset="tiny", fisher_samples=32, steps=2, batch=16, accumulation=1, captions=2, flip="max")
    a = Unlearning(**opts, batch_size=5).attribute(_ctx(model, sub, Cache(tmp_path / "a")), q)
    b = Unlearning(**opts, batch_size=512).attribute(_ctx(model, sub, Cache(tmp_path / "b")), q)
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7 * np.abs(a).max())
    assert (np.argsort(-a[0])[:5] == np.argsort(-b[0])[:5]).all()


def test_planted_memorisation_ranks_first(planted_model, session_cache):
    from genattr.plugins.methods.unlearning import Unlearning

    model, data, copies = planted_model
    image = model.generate(["a striped planted pattern"], seeds=[123], steps=20)[0]
    scores = Unlearning(preset="tiny", timesteps=20).attribute(
        _ctx(model, data, session_cache), [Query("planted-query", image, "a striped planted pattern")])[0]
    order = np.argsort(-scores)
    planted = {i for i, item_id in enumerate(data.ids) if item_id.startswith("planted-")}
    assert len(planted) == copies
    assert order[0] in planted
    # the copies dominate the head of the ranking (each copy has its own noise draws, so single copies can
    # fall below a digit, but most of the top `copies` are copies)
    head = set(order[:copies].tolist())
    assert len(head & planted) >= 0.75 * copies, len(head & planted)
