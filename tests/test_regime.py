"""The regime check (genattr.harness.regime): queries that copy training images fail it, new samples from the
training distribution pass it; the counterfactual benchmarks record it in their provenance."""

from __future__ import annotations

import torch

from genattr.harness.data import InMemoryDataset
from genattr.harness.regime import MAX_NEAR_COPY, describe, regime_check


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1


def _train(n=200):
    images = _data(n, 0)
    return InMemoryDataset("rand", "1", [f"i{i}" for i in range(n)], images, [(f"image {i}",) for i in range(n)])


def test_copies_fail_and_new_samples_pass():
    train = _train()
    held = _data(100, 1)
    copies = [train.images([i])[0] + 0.01 * torch.randn(1, 8, 8) for i in range(30)]
    bad = regime_check(object(), train, copies, held)
    assert bad["passed"] is False and bad["pixel"]["near_copy_share"] == 1.0 and bad["pixel"]["nn_ratio"] < 0.1
    assert bad["features"]["near_copy_share"] == 1.0 and bad["denoiser_cosine"] is None  # no model pieces
    fresh = list(_data(60, 2))
    good = regime_check(object(), train, fresh, held)
    assert good["passed"] is True, good
    assert good["pixel"]["near_copy_share"] <= MAX_NEAR_COPY + 0.1 and 0.9 <= good["pixel"]["nn_ratio"] <= 1.1
    assert "near-copies" in describe(good)
    assert regime_check(object(), train, fresh, None)["passed"] is None


def test_leave_k_out_records_the_regime_of_theta0(session_cache):
    import genattr
    from genattr.harness.api import RunEnv

    b = genattr.get_benchmark("leave-k-out", scale="tiny")
    prov = b.setup(RunEnv(cache=session_cache, seed=0, scale="tiny"))
    regime = prov["regime"]
    assert regime["queries"] == 50 and regime["heldout"] > 10  # samples of its own: 2 queries judge nothing
    assert set(regime["pixel"]) >= {"near_copy_share", "nn_ratio", "passed"}
    assert set(regime["denoiser_cosine"]) == {"100", "200", "400"}
    assert all(-1 <= v <= 1 for v in regime["denoiser_cosine"].values())
