"""Gradient-based baselines: TRAK, D-TRAK, JourneyTRAK, DataInf and the shared gradient/projection machinery.

A toy text-to-image adapter (a tiny diffusers UNet with cross-attention over hashed word embeddings, 8×8 pixels)
keeps these tests fast; the real adapter is exercised in ``test_baselines_gradients_tiny.py``.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError
from genattr.harness.seeding import item_noise
from genattr.harness import gradients as G
from genattr.plugins.methods.datainf import DataInfMethod
from genattr.plugins.methods.trak import DTrakMethod, JourneyTrakMethod, TrakMethod

warnings.filterwarnings("ignore", message=".*batching rule.*")


class ToyT2I:
    """A pixel-space ε-prediction model implementing the parts of ``T2IModel`` the gradient methods use."""

    name = "toy"
    version = "1"
    num_train_timesteps = 1000

    def __init__(self, seed=0, resolution=8, emb_dim=8, tokens=4):
        from diffusers import DDPMScheduler, UNet2DConditionModel

        torch.manual_seed(seed)
        self.resolution, self.channels, self.tokens = resolution, 1, tokens
        self.unet = UNet2DConditionModel(
            sample_size=resolution, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=emb_dim, attention_head_dim=4, norm_num_groups=4,
        ).eval()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.table = torch.randn(64, emb_dim, generator=torch.Generator().manual_seed(seed + 1))

    @property
    def fingerprint(self):
        h = hashlib.sha256()
        for k, v in sorted(self.unet.state_dict().items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        return h.hexdigest()

    def latents(self, images):
        return images

    def text_embeddings(self, captions):
        rows = []
        for c in captions:
            words = (c.split() + ["<pad>"] * self.tokens)[: self.tokens]
            rows.append(self.table[[int(hashlib.sha256(w.encode()).hexdigest(), 16) % 64 for w in words]])
        return torch.stack(rows)

    def denoise_loss(self, latents, text_emb, timesteps, noise, mask=None, params=None, target="loss"):
        from torch.func import functional_call

        ac = self.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        xt = ac.sqrt() * latents + (1 - ac).sqrt() * noise
        if params is None:
            eps = self.unet(xt, timesteps, encoder_hidden_states=text_emb).sample
        else:
            eps = functional_call(self.unet, dict(params), (xt, timesteps), {"encoder_hidden_states": text_emb}).sample
        err = (noise - eps) ** 2 if target == "loss" else eps ** 2
        if mask is not None:
            m = mask[:, None].expand_as(err)
            return (err * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)
        return err.mean((1, 2, 3))

    def parameters(self, selection="cross-attn-kv"):
        keep = {
            "cross-attn-kv": lambda n: "attn2" in n and ("to_k" in n or "to_v" in n),
            "cross-attn": lambda n: "attn2" in n,
            "attn": lambda n: "attn1" in n or "attn2" in n,
            "full": lambda n: True,
        }[selection]
        return {n: p for n, p in self.unet.named_parameters() if keep(n)}


N = 10
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # 64 weights


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    out = []
    for i in range(n):
        a, b, c = (torch.rand(3, generator=g) * 6).tolist()
        out.append(torch.tanh(2 * torch.sin(a * xx + b * yy + c) + 0.3 * torch.randn(8, 8, generator=g)))
    return torch.stack(out)[:, None]


WORDS = ["red", "blue", "ring", "cross", "dot", "stripe", "big", "small", "left", "right", "up", "down"]


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    return ToyT2I(seed=0)


@pytest.fixture(scope="module")
def train_set():
    caps = [(f"{WORDS[i % 12]} {WORDS[(3 * i + 1) % 12]}", f"a {WORDS[(5 * i + 2) % 12]}") for i in range(N)]
    return InMemoryDataset("toy", "1", [f"img{i:02d}" for i in range(N)], _images(N), caps)


def _ctx(model, ds, tmp_path, name="cache", **kw):
    return AttributionContext(model=model, train_set=ds, cache=Cache(tmp_path / name), scale="tiny", **kw)


def _train_queries(ds, idx):
    return [Query(f"q{i}", ds.item(i).image, ds.item(i).captions[0]) for i in idx]


# -- per-sample gradients and projection -----------------------------------------------------------------------------
def test_vmap_gradients_match_autograd_loop(toy):
    ps = G.select_parameters(toy, "cross-attn-kv")
    B = 3
    lat, emb = _images(B), toy.text_embeddings(["red ring", "blue dot", "big"])
    t, noise = torch.tensor([0, 500, 999]), torch.randn(B, 1, 8, 8)
    with torch.no_grad():
        a = G.PerSampleGrad(toy, ps, mode="vmap")(lat, emb, t, noise)
        b = G.PerSampleGrad(toy, ps, mode="loop")(lat, emb, t, noise)
    assert a.shape == (B, sum(p.numel() for p in ps.values()))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # each row really is that example's gradient (the loss of example 0 alone)
    p = {n: v.clone().requires_grad_(True) for n, v in ps.items()}
    loss = toy.denoise_loss(lat[:1], emb[:1], t[:1], noise[:1], params=p).sum()
    g0 = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, [p[n] for n in sorted(p)])])
    assert torch.allclose(a[0], g0, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projector_blocks_seeded_and_norm_preserving(kind):
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(1))
    full = G.Projector(300, 128, seed=3, kind=kind, block_rows=7)
    blocked = G.Projector(300, 128, seed=3, kind=kind, max_cached_bytes=0, block_rows=7)
    assert full._full is not None and blocked._full is None and blocked.num_blocks > 1
    assert torch.allclose(full(x), blocked(x), atol=1e-5)
    assert not torch.allclose(full(x), G.Projector(300, 128, seed=4, kind=kind, block_rows=7)(x))
    assert torch.equal(G.Projector(300, 128, seed=3, kind=kind)(x), G.Projector(300, 128, seed=3, kind=kind)(x))
    big = G.Projector(300, 4096, seed=0, kind=kind)
    ratio = big(x).norm(dim=1) / x.norm(dim=1)
    assert torch.all((ratio > 0.9) & (ratio < 1.1))


def test_kernel_scores_invariant_to_projection_when_dim_at_least_params():
    """With λ = 0, N ≥ P and any full-rank projection of dimension k ≥ P, φ(q)ᵀ(ΦᵀΦ)⁻¹φ_i = g(q)ᵀ(GᵀG)⁻¹g_i."""
    rng = np.random.default_rng(0)
    P, Nn = 40, 90
    g = rng.normal(size=(Nn, P)) * rng.uniform(0.1, 3, size=P)
    q = rng.normal(size=(3, P))
    direct = q @ np.linalg.solve(g.T @ g, g.T)
    for kind, k in (("gaussian", 64), ("rademacher", 40), ("identity", P)):
        proj = G.Projector(P, k, seed=5, kind=kind)
        phi = proj(torch.tensor(g, dtype=torch.float32)).double()
        fq = proj(torch.tensor(q, dtype=torch.float32)).double()
        s = (fq @ G.kernel_solve(phi, 0.0).T).numpy()
        assert np.allclose(s, direct, rtol=1e-3, atol=1e-4 * np.abs(direct).max()), kind
    # a projection smaller than P does not give the same scores
    proj = G.Projector(P, 16, seed=5, kind="gaussian")
    s = (proj(torch.tensor(q, dtype=torch.float32)).double()
         @ G.kernel_solve(proj(torch.tensor(g, dtype=torch.float32)).double(), 0.0).T).numpy()
    assert not np.allclose(s, direct, rtol=1e-2)


# -- TRAK family ------------------------------------------------------------------------------------------------------
def _direct_trak(model, ds, queries, seed, layer, num_t, lam_rel, name="trak", shared=True):
    """TRAK without projection, from per-example autograd gradients and numpy linear algebra."""
    ps = {n: p.detach() for n, p in model.parameters("cross-attn-kv").items() if layer in n}
    names = sorted(ps)

    def grad(image, caption, t, key):
        p = {n: v.clone().requires_grad_(True) for n, v in ps.items()}
        noise = item_noise(seed, key, caption[1], t, image.shape)
        loss = model.denoise_loss(image[None], model.text_embeddings([caption[0]]), torch.tensor([t]), noise[None],
                                  params=p).sum()
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, [p[n] for n in names])]).double().numpy()

    def feat(item, ns):
        draws = G.random_draws(seed, ns, item, num_t, 1000, shared=shared)
        return np.mean([grad(item.image, (item.captions[d.caption % len(item.captions)], d.noise_caption), d.t,
                             d.noise_key) for d in draws], axis=0)

    ns_train, ns_query = (name, name) if shared else (f"{name}/train", f"{name}/query")
    phi = np.stack([feat(G.GradItem(e.id, e.image, e.captions), ns_train) for e in map(ds.item, range(len(ds)))])
    fq = np.stack([feat(G.GradItem(f"query:{q.id}", q.image, (q.prompt,)), ns_query) for q in queries])
    k = phi.shape[1]
    lam = lam_rel * np.trace(phi.T @ phi) / k
    return fq @ np.linalg.solve(phi.T @ phi + lam * np.eye(k), phi.T)


@pytest.mark.parametrize("draws", ["shared", "per-item"])
def test_trak_identity_projection_equals_direct_computation(draws, toy, train_set, tmp_path):
    m = TrakMethod(projection="identity", include=[LAYER], num_timesteps=2, lambda_reg=0.05, draws=draws)
    assert m.config["proj_dim"] is None
    ctx = _ctx(toy, train_set, tmp_path)
    qs = _train_queries(train_set, [1]) + [Query("other", _images(1, seed=9)[0], "red cross")]
    got = m.attribute(ctx, qs)
    want = _direct_trak(toy, train_set, qs, ctx.seed, LAYER, 2, 0.05, shared=draws == "shared")
    assert np.allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_scores_do_not_depend_on_batch_size(toy, train_set, tmp_path):
    qs = _train_queries(train_set, [2, 5])
    a = TrakMethod(batch_size=3).attribute(_ctx(toy, train_set, tmp_path, "a"), qs)
    b = TrakMethod(batch_size=64).attribute(_ctx(toy, train_set, tmp_path, "b"), qs)
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("cls", [TrakMethod, DTrakMethod, JourneyTrakMethod, DataInfMethod])
def test_candidates_subset_equals_full_scores(cls, toy, train_set, tmp_path):
    m = cls()
    ctx = _ctx(toy, train_set, tmp_path)
    qs = [Query("g0", _images(1, seed=11)[0], "blue ring", meta={"seed": 4}), *_train_queries(train_set, [6])]
    full = m.attribute(ctx, qs)
    cand = [7, 2, 9, 0]
    sub = m.attribute(ctx, qs, candidates=cand)
    assert full.shape == (2, N) and sub.shape == (2, 4)
    assert np.allclose(sub, full[:, cand], rtol=1e-6, atol=1e-9 * np.abs(full).max())
    assert np.isfinite(full).all() and full.std() > 0


def test_prepare_is_cached(toy, train_set, tmp_path, monkeypatch):
    ctx = _ctx(toy, train_set, tmp_path)
    TrakMethod().prepare(ctx)
    calls = []
    real = G.gradient_features
    monkeypatch.setattr(G, "gradient_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = TrakMethod()
    m.prepare(ctx)  # a new instance: from the disk cache
    m.prepare(ctx)  # the same instance: from memory
    assert calls == []
    TrakMethod(lambda_reg=1.0).prepare(ctx)  # another λ reuses the cached gradients
    assert calls == []
    TrakMethod(proj_dim=64).prepare(ctx)  # another projection recomputes them
    assert len(calls) == 1


def test_ensemble_averages_checkpoints(toy, train_set, tmp_path):
    other = ToyT2I(seed=1)
    qs = _train_queries(train_set, [4])
    ctx = _ctx(toy, train_set, tmp_path)
    s0 = TrakMethod().attribute(ctx, qs)
    s1 = TrakMethod().attribute(_ctx(other, train_set, tmp_path), qs)
    ens = _ctx(toy, train_set, tmp_path, extra={"checkpoints": [toy, other]})
    assert np.allclose(TrakMethod().attribute(ens, qs), (s0 + s1) / 2, rtol=1e-6)
    # D-TRAK is a single-model method unless asked
    d = DTrakMethod()
    assert np.allclose(d.attribute(ens, qs), d.attribute(ctx, qs))


def test_dtrak_uses_strided_timesteps_and_eps_norm(toy):
    m = DTrakMethod(scale="paper")
    assert m.target == "eps-sq-norm"
    assert (m.config["num_timesteps"], m.config["proj_dim"], m.config["lambda_reg"]) == (10, 32768, 500.0)
    draws = G.strided_draws(0, "dtrak/train", G.GradItem("x", torch.zeros(1, 8, 8), ("a",)), 10, 1000)
    assert [d.t for d in draws] == list(range(0, 1000, 100))


def test_timestep_scheme_option_switches_random_and_strided_draws(toy, train_set, tmp_path):
    """``timestep_scheme`` (absent: the method's own, and not in the configuration) picks random or D-TRAK's strided
    timesteps for the stored and the query draws of the TRAK family and DataInf."""
    ctx = _ctx(toy, train_set, tmp_path)
    item = G.GradItem("x", torch.zeros(1, 8, 8), ("a",))
    T = int(toy.num_train_timesteps)
    for cls, own in ((TrakMethod, "random"), (DTrakMethod, "strided"), (JourneyTrakMethod, "random"),
                     (DataInfMethod, "random")):
        plain = cls()
        assert "timestep_scheme" not in plain.config
        for scheme in ("random", "strided"):
            m = cls() if scheme == own else cls(timestep_scheme=scheme)
            draws = (m._draws(ctx, "train") if cls is DataInfMethod else m._draw_fn(ctx, toy, "train"))(item)
            n = int(m.config["num_timesteps"])
            ts = [d.t for d in draws]
            assert len(ts) == n and (ts == list(range(0, T, T // n))) == (scheme == "strided"), (cls.name, scheme, ts)
            assert m._spec(ctx).draws["kind"] == scheme
        with pytest.raises(UserError, match="timestep_scheme"):
            cls(timestep_scheme="uniform")
    # DataInf's, TRAK's and JourneyTRAK's `small` presets take the strided scheme (calibrated on the training
    # concepts), the same configuration as setting it explicitly; `tiny` and `paper` keep their random draws
    for cls in (DataInfMethod, TrakMethod, JourneyTrakMethod):
        assert cls(scale="small").config == cls(scale="small", timestep_scheme="strided").config
        assert cls(scale="small")._spec(ctx).draws["kind"] == "strided"
        assert cls(scale="tiny")._spec(ctx).draws["kind"] == "random"
        assert cls(scale="paper")._spec(ctx).draws["kind"] == "random"
    qs = _train_queries(train_set, [1])
    a = TrakMethod(include=[LAYER]).attribute(ctx, qs)
    b = TrakMethod(include=[LAYER], timestep_scheme="strided").attribute(ctx, qs)
    assert a.shape == b.shape and not np.allclose(a, b)


def test_journeytrak_trajectory_and_aggregation(toy, train_set, tmp_path):
    ctx = _ctx(toy, train_set, tmp_path)
    q_seed = Query("gen", _images(1, seed=3)[0], "red ring", meta={"seed": 7})
    q_img = Query("img", _images(1, seed=3)[0], "red ring")
    m = JourneyTrakMethod()
    traj = m.trajectory(ctx, toy, q_seed)
    assert len(traj) == m.config["feature_steps"]
    ts = [t for t, _ in traj]
    assert ts == sorted(ts, reverse=True) and all(x.shape == (1, 8, 8) for _, x in traj)
    # the trajectory is a function of (prompt, seed) only
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(traj, m.trajectory(ctx, toy, q_seed)))
    feats = m.query_features(ctx, toy, [q_seed])[0]
    assert feats.shape == (m.config["feature_steps"], m.config["proj_dim"])
    mean = m.attribute(ctx, [q_seed, q_img])
    kphi = m.kernel_features(ctx, toy)
    per_step = (feats.double() @ kphi.T).numpy()
    assert np.allclose(mean[0], per_step.mean(0), rtol=1e-6)
    mx = JourneyTrakMethod(aggregate="max").attribute(ctx, [q_seed])
    assert np.allclose(mx[0], per_step.max(0), rtol=1e-6)
    assert not np.allclose(mean[0], mean[1])


def test_config_presets_and_errors(toy, train_set, tmp_path):
    m = TrakMethod()
    assert m.config["scale"] == "tiny" and m.version == "1" and m.needs_model
    ctx = _ctx(toy, train_set, tmp_path)
    ctx.scale = "small"
    m._config_for(ctx)
    assert m.config["scale"] == "small" and m.config["proj_dim"] == 1024
    assert TrakMethod(scale="paper").config["selection"] == "full"
    # the runner's hook: adopt the run's scale unless one was given
    for cls in (TrakMethod, DTrakMethod, JourneyTrakMethod, DataInfMethod):
        r = cls()
        assert r.resolve_config("small") is r.config
        assert r.config["scale"] == "small" and r.config["proj_dim" if cls is not DataInfMethod else "scale"]
        kept = cls(scale="tiny")
        kept.resolve_config("small", "customized")
        assert kept.config["scale"] == "tiny"
    assert TrakMethod().config["proj_dim"] == 256 and TrakMethod(proj_dim=64).config["proj_dim"] == 64
    r = TrakMethod(proj_dim=64)
    r.resolve_config("small")
    assert r.config["proj_dim"] == 64  # explicit options still win over the preset
    with pytest.raises(UserError):
        TrakMethod(projdim=3)
    with pytest.raises(UserError):
        DataInfMethod(lambda_scale=0)
    with pytest.raises(UserError):
        TrakMethod(include=["no-such-layer"]).prepare(_ctx(toy, train_set, tmp_path))


# -- DataInf ----------------------------------------------------------------------------------------------------------
def _datainf_direct(grads_train, grads_query, slices, lam_scale=0.1, per_element=True):
    """The DataInf formula with explicit loops (numpy), sign flipped so that higher = more influential."""
    n = grads_train.shape[0]
    out = np.zeros((grads_query.shape[0], n))
    for sl in slices:
        g = grads_train[:, sl]
        d = g.shape[1]
        lam = lam_scale * np.mean([gj @ gj for gj in g]) / (d if per_element else 1)
        for qi, v in enumerate(grads_query[:, sl]):
            for k in range(n):
                corr = sum((v @ g[j]) * (g[j] @ g[k]) / (lam + g[j] @ g[j]) for j in range(n)) / n
                out[qi, k] += (v @ g[k] - corr) / lam
    return out


def test_datainf_matches_direct_numpy(toy, train_set, tmp_path):
    m = DataInfMethod(include=["down_blocks.0", "mid_block"], num_timesteps=2)
    ctx = _ctx(toy, train_set, tmp_path)
    qs = [Query("g", _images(1, seed=5)[0], "dot ring"), *_train_queries(train_set, [8])]
    got = m.attribute(ctx, qs)
    Gt = np.asarray(m.train_gradients(ctx).array[:, 0], dtype=np.float64)
    gf = m._grad_fn(ctx)
    assert len(gf.layout.names) == 4  # to_k / to_v of two blocks: four layers
    items = [G.GradItem(f"query:{q.id}", q.image, (q.prompt,)) for q in qs]
    Vq = G.gradient_features(toy, lambda r: items[r], 2, m._draws(ctx, "query"), gf, None).double().numpy()
    want = _datainf_direct(Gt, Vq, gf.layout.slices())
    assert np.allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
