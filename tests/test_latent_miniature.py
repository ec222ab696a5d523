"""The built-in latent miniature: a small Stable Diffusion whose VAE is trained once per dataset (cached) and frozen,
shared by every model built for that dataset (θ0, retrains on subsets)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import genattr  # noqa: E402
from genattr.harness.cache import Cache  # noqa: E402
from genattr.harness.errors import UserError  # noqa: E402


def _small_vae():
    return {"block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}


def test_autoencoder_training_reduces_loss_and_normalises_latents():
    from diffusers import AutoencoderKL

    from genattr.datasets.shapes import Shapes
    from genattr.plugins.models.autoencoder import latent_statistics, train_autoencoder

    ds = Shapes(n=64, resolution=16, backgrounds=["plain", "grey"])
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, sample_size=16, **_small_vae())
    report = train_autoencoder(vae, ds.images(), {"steps": 60, "batch_size": 16, "lr": 3e-3})
    assert report["losses"][-1] < 0.5 * report["losses"][0]
    assert vae.config.shift_factor == pytest.approx(report["latent_mean"])
    assert vae.config.scaling_factor == pytest.approx(1 / report["latent_std"])
    z = (vae.encode(ds.images()).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
    assert abs(float(z.mean())) < 1e-3 and float(z.std()) == pytest.approx(1.0, abs=1e-2)
    assert not any(p.requires_grad for p in vae.parameters())
    assert latent_statistics(vae, ds.images())["psnr"] == pytest.approx(report["psnr"])


def test_vae_trained_once_and_shared_by_retrains(tmp_path):
    """pin_config trains the VAE on the full set (cached); a model built for a subset gets the same frozen VAE."""
    from genattr.harness.models import load_or_train, pin_model_config

    genattr.load_plugins()
    cache = Cache(tmp_path / "cache")
    ds = genattr.get_dataset("shapes", n=40, resolution=16, holdout=["red circle"])
    cfg = {"vae": _small_vae(), "vae_train": {"steps": 4, "batch_size": 8},
           "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8}}
    pinned = pin_model_config("diffusers", ds, cfg, cache=cache)
    assert pinned["vae_key"] and len(list((tmp_path / "cache" / "models" / "autoencoder").iterdir())) == 1
    plan = {"steps": 2, "batch_size": 4, "lr": 1e-3, "train_text_encoder": True}
    full = load_or_train(cache, ds, pinned, plan, model="diffusers")
    sub = load_or_train(cache, ds.subset(ds.ids[:20]), pinned, plan, model="diffusers")
    for a, b in zip(full.vae.parameters(), sub.vae.parameters()):
        assert torch.equal(a, b)
    assert full.shift_factor == sub.shift_factor != 0.0
    assert len(list((tmp_path / "cache" / "models" / "autoencoder").iterdir())) == 1
    # the latents the diffusion model sees are centred and scaled by the trained statistics
    z = full.latents(ds.images())
    assert abs(float(z.mean())) < 0.05
    # another cache without the pinned VAE and a subset it was not trained on: a one-line error, no silent retrain
    with pytest.raises(UserError, match="vae_key") as e:
        load_or_train(Cache(tmp_path / "other"), ds.subset(ds.ids[:20]), pinned, plan, model="diffusers")
    assert "\n" not in str(e.value)


def test_small_recipe_is_a_latent_sd_with_custom_diffusion():
    from genattr.harness.models import model_recipe

    genattr.load_plugins()
    r = model_recipe("diffusers", "small", "shapes")
    assert r["model"]["vae_train"] and r["dataset"]["resolution"] == 32 and r["dataset"]["holdout"]
    assert r["customize"]["weights"] == "cross-attn-kv"
    with pytest.raises(UserError, match="vae_train"):
        from genattr.plugins.models.autoencoder import autoencoder_plan

        autoencoder_plan({"stepz": 3})


def test_the_latent_testbed_config_resolves_for_every_benchmark():
    """examples/configs/latent-testbed.toml names valid options of every built-in benchmark at small (no work)."""
    import tomllib
    from pathlib import Path

    genattr.load_plugins()
    doc = tomllib.loads((Path(__file__).resolve().parents[1] / "examples/configs/latent-testbed.toml").read_text())
    assert doc["run"]["scale"] == "small"
    for name in ("customized-model", "leave-k-out", "lds", "teacher-agreement"):
        bench = genattr.get_benchmark(name, scale="small", **doc[name])
        assert bench.config["model"] == "diffusers"
        assert bench.resolved_recipe()["train"]["steps"] == 1600  # in the configuration hash and run.json
        if name != "customized-model":
            assert bench.config["recipe"] == "small" and bench.config["dataset"] == "shapes"
            assert not bench.config["n"] and not bench.config["train_config"] and not bench.config["dataset_config"]
            parts = bench._recipe_parts()
            assert parts[2]["n"] == 4000 and parts[1]["steps"] == 1600  # the recipe's: every base seed passes
            assert parts[0]["vae_train"] and parts[2]["holdout"] and parts[2]["heldout_min_objects"] == 2
            assert parts[2]["jitter"] > 0  # no two training scenes share a layout
    # unlearning's α: the latent calibration's choice on this test bed's Customized Model (a per-model value of its
    # preset, so the configuration file needs none), the `small` preset's own on the counterfactual benchmarks
    import json

    from genattr.harness.api import resolve_method_config
    from genattr.plugins.methods.unlearning.config import ALPHA_CUSTOMIZED_LATENT, ALPHA_CUSTOMIZED_SMALL, ALPHA_SMALL

    assert "unlearning" not in doc
    for name in ("customized-model", "leave-k-out", "lds", "teacher-agreement"):
        bench = genattr.get_benchmark(name, scale="small", **doc[name])
        cfg = resolve_method_config(genattr.get_method("unlearning"), "small", bench.preset_hint, bench.preset_model)
        assert cfg["alpha"] == (ALPHA_CUSTOMIZED_LATENT if name == "customized-model" else ALPHA_SMALL)
    tiny_t2i = genattr.get_benchmark("customized-model", scale="small")
    assert tiny_t2i.preset_model == "tiny-t2i"
    assert resolve_method_config(genattr.get_method("unlearning"), "small", "customized",
                                 tiny_t2i.preset_model)["alpha"] == ALPHA_CUSTOMIZED_SMALL != ALPHA_CUSTOMIZED_LATENT
    calib = [json.loads(line) for line in (Path(__file__).resolve().parents[1]
             / "results/calibration/unlearning-alpha-latent-small.jsonl").read_text().splitlines() if line.strip()]
    def grid_point(r):  # the configuration without the method seed (each point ran at two)
        return json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True)

    best = max({grid_point(r) for r in calib},
               key=lambda c: sum(sum(r["by_split"].values()) for r in calib if grid_point(r) == c))
    assert json.loads(best) == {"preset": "customized-small", "alpha": ALPHA_CUSTOMIZED_LATENT}  # the winner


def test_the_customized_model_base_is_the_counterfactual_theta0(session_cache):
    """With the same model, recipe, data and seed the Customized Model's base model is the θ0 of leave-K-out, LDS and
    teacher agreement: one training, one cache entry, one regime check."""
    from genattr.harness.api import RunEnv
    from genattr.harness.models import is_trained

    genattr.load_plugins()
    env = RunEnv(cache=session_cache, seed=3, scale="tiny")
    cm = genattr.get_benchmark("customized-model", scale="tiny")
    lko = genattr.get_benchmark("leave-k-out", scale="tiny")
    train, _ = lko._datasets(3)
    model_config, train_config = lko._recipe(train, env)
    assert cm.config["model"] == lko.config["model"] == "diffusers"
    cm._builtin.base(env)  # trains (or finds) the base model
    assert is_trained(session_cache, train, model_config, train_config, 3, "diffusers")
