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


def test_the_share_is_judged_with_its_sampling_interval():
    """New samples from the reals' distribution pass whatever their point share (≈ 10 % by construction); a quarter
    of copies among 200 samples puts the whole interval above 10 % and fails."""
    from genattr.harness.regime import wilson_interval

    train, held = _train(), _data(1000, 1)
    fresh = regime_check(object(), train, list(_data(200, 3)), held)
    lo, hi = fresh["pixel"]["near_copy_ci95"]
    assert fresh["passed"] is True and lo <= MAX_NEAR_COPY <= hi, fresh
    mixed = list(_data(150, 4)) + [train.images([i])[0] for i in range(50)]
    bad = regime_check(object(), train, mixed, held)
    assert bad["passed"] is False and bad["pixel"]["near_copy_ci95"][0] > MAX_NEAR_COPY, bad
    assert "[" in describe(bad)
    lo, hi = wilson_interval(20, 200)
    assert abs(lo - 0.0657) < 1e-3 and abs(hi - 0.1494) < 1e-3 and wilson_interval(0, 0) == (0.0, 1.0)


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


class _BlurringLatentModel:
    """A latent model whose decoder blurs (a 2× average-pool encoder, a nearest-neighbour decoder)."""

    channels, resolution, device = 1, 8, "cpu"

    def latent_shape(self):
        return (1, 4, 4)

    def latents(self, x):
        return torch.nn.functional.avg_pool2d(x, 2)

    def decode(self, z):
        return torch.nn.functional.interpolate(z, scale_factor=2, mode="nearest")


def test_a_latent_model_is_judged_on_its_own_renderings():
    """Blurred fresh samples of a blurring latent model look like near-copies against crisp images (blur shrinks
    every distance) but pass once training and held-out images take the same round trip; copies still fail."""
    model = _BlurringLatentModel()
    train = _train()
    held = _data(100, 1)
    fresh = model.decode(model.latents(_data(60, 2)))
    crisp = regime_check(object(), train, list(fresh), held)
    judged = regime_check(model, train, list(fresh), held)
    assert crisp["pixel"]["nn_ratio"] < 0.9 and crisp["passed"] is False  # blur alone fails the crisp comparison
    assert judged["passed"] is True and judged["rendered"] == "decode(latents(x))"
    copies = [model.decode(model.latents(train.images([i])))[0] for i in range(30)]
    assert regime_check(model, train, copies, held)["pixel"]["near_copy_share"] == 1.0
    assert "rendered" not in regime_check(object(), train, list(fresh), held)


def test_the_customized_model_records_its_base_models_regime(session_cache):
    """The Customized Model's base model is checked as a counterfactual θ0 is; when it is their θ0 (same model,
    recipe, data and seed, as at ``tiny``) it is judged on the same samples and gets the same figures."""
    import genattr
    from genattr.harness.api import RunEnv

    env = RunEnv(cache=session_cache, seed=0, scale="tiny")
    cm = genattr.get_benchmark("customized-model", scale="tiny").setup(env)
    lko = genattr.get_benchmark("leave-k-out", scale="tiny").setup(env)
    assert cm["models"]["base"] == lko["models"]["base"]
    assert cm["regime"]["queries"] == 50 and cm["regime"]["passed"] in (True, False)
    assert cm["regime"] == lko["regime"]


def test_a_base_model_without_held_out_images_records_why_it_is_not_checked():
    from genattr.benchmarks._counterfactual import check_base_model

    check = check_base_model(None, object(), _train(), "customized-model", "tiny", 10)
    assert check["passed"] is None and "no held-out images" in check["reason"]
    assert describe(check).startswith("regime check not run")


def test_a_regime_check_is_read_back_from_the_cache(tmp_path, monkeypatch):
    """The same model, training set, samples, held-out images and seed: the figures come from the cache (the
    computation is not repeated); other samples are a new check."""
    from genattr.harness import regime
    from genattr.harness.cache import Cache

    class Model:
        fingerprint = "m0"

    cache, train, held = Cache(tmp_path), _train(), _data(100, 1)
    fresh = list(_data(60, 2))
    first = regime.cached_regime_check(cache, Model(), train, fresh, held)
    calls = []
    monkeypatch.setattr(regime, "regime_check", lambda *a, **k: calls.append(1) or {"passed": None})
    assert regime.cached_regime_check(cache, Model(), train, fresh, held) == first and not calls
    assert regime.cached_regime_check(cache, Model(), train, fresh[:30], held) == {"passed": None} and calls
