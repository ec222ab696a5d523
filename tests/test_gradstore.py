"""The gradient store (genattr.harness.gradstore): keys, values, memory-mapped reads, resumable chunked writes, and
the gradient methods computing through it with the same results as their former in-memory path."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from genattr.harness import gradients as G
from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.data import InMemoryDataset
from genattr.harness.gradstore import NAMESPACE, GradientSpec, GradientStore, store_for

from test_baselines_gradients import WORDS, ToyT2I, _images

warnings.filterwarnings("ignore", message=".*batching rule.*")

N = 9


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    return ToyT2I(seed=0)


@pytest.fixture(scope="module")
def data():
    caps = [(f"{WORDS[i % 12]} {WORDS[(3 * i + 1) % 12]}", f"a {WORDS[(5 * i + 2) % 12]}") for i in range(N)]
    return InMemoryDataset("toy", "1", [f"img{i:02d}" for i in range(N)], _images(N), caps)


def _ctx(model, ds, cache, **kw):
    return AttributionContext(model=model, train_set=ds, cache=cache, scale="tiny", **kw)


GRID = {"kind": "grid", "timesteps": [0, 250, 500], "captions": None}


def _direct(model, ds, spec, proj=None):
    """The store's rows computed in one call of gradient_features (V views stacked)."""
    gf = G.PerSampleGrad(model, G.select_parameters(model, spec.selection, spec.include), target=spec.output)
    draws = G.make_draws(spec.draws, spec.seed, 1000)
    views = [G.gradient_features(model, G.dataset_items(ds, flip=bool(v)), len(ds), draws, gf, proj,
                                 reduce=spec.reduce, seed=spec.seed) for v in range(spec.views)]
    return torch.stack(views, 1).numpy()


# -- keys -----------------------------------------------------------------------------------------------------------
def test_key_covers_what_changes_values_and_nothing_else(toy, data, tmp_path):
    store = GradientStore(Cache(tmp_path))
    base = GradientSpec(draws=GRID)
    k = store.key(toy, data, base)
    changed = [GradientSpec(draws={**GRID, "timesteps": [0, 250]}), GradientSpec(draws={**GRID, "captions": 1}),
               GradientSpec(draws=GRID, selection="cross-attn"), GradientSpec(draws=GRID, include=("down_blocks",)),
               GradientSpec(draws=GRID, output="eps-sq-norm"), GradientSpec(draws=GRID, flips=True),
               GradientSpec(draws=GRID, reduce="sum"), GradientSpec(draws=GRID, dtype="float16"),
               GradientSpec(draws=GRID, seed=1),
               GradientSpec(draws=GRID, projection="rademacher", proj_dim=16),
               GradientSpec(draws=GRID, projection="gaussian", proj_dim=16),
               GradientSpec(draws=GRID, output="eps-probe", probes=2),
               GradientSpec(draws=GRID, output="eps-probe", probes=3)]
    keys = {store.key(toy, data, s) for s in changed}
    assert len(keys) == len(changed) and k not in keys
    assert store.key(toy, data, GradientSpec(draws=GRID, batch_size=3, grad_mode="loop")) == k
    # the identity projection ignores dimension and seed; a random one keys on them and on the device type
    assert store.key(toy, data, GradientSpec(draws=GRID, proj_dim=7, proj_seed=3)) == k
    r = GradientSpec(draws=GRID, projection="rademacher", proj_dim=16)
    assert store.key(toy, data, r) != store.key(toy, data, GradientSpec(**{**r.__dict__, "proj_seed": 1}))
    assert store.key(toy, data, r, device="cpu") != store.key(toy, data, r, device="cuda:0")
    assert store.key(toy, data.subset(data.ids[:4]), base) != k
    for bad in (dict(output="nope"), dict(projection="rademacher"), dict(dtype="int8"), dict(reduce="max"),
                dict(draws={"kind": "nope"}), dict(output="eps-probe"), dict(probes=2)):
        with pytest.raises(Exception, match="gradient store"):
            GradientSpec(**{"draws": GRID, **bad})


# -- values ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flips", [False, True])
def test_stored_rows_equal_direct_gradients_and_are_memory_mapped(flips, toy, data, tmp_path):
    spec = GradientSpec(draws=GRID, flips=flips, include=("down_blocks.0",))
    store = GradientStore(Cache(tmp_path), chunk_items=4)
    got = store.get(toy, data, spec)
    assert isinstance(got.array, np.memmap) and got.array.mode == "r" and got.array.dtype == np.float32
    assert got.array.shape == (N, 2 if flips else 1, got.layout().dim)
    want = _direct(toy, data, spec)
    np.testing.assert_allclose(np.asarray(got.array), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # every grid row counted once: items × views × captions × timesteps
    assert got.evaluations == store.evaluations == N * spec.views * 2 * 3
    if flips:  # the flipped view is another gradient (same noise, mirrored image)
        assert not np.allclose(want[:, 0], want[:, 1])
    # a reader in another instance reuses the entry (no new gradient)
    again = GradientStore(Cache(tmp_path)).get(toy, data, spec)
    np.testing.assert_array_equal(np.asarray(again.array), np.asarray(got.array))
    # streamed chunks in any row order and G·v
    rows = [7, 2, 2, 0]
    chunks = torch.cat([c for _, c in got.chunks(rows, max_bytes=1)]).numpy()
    np.testing.assert_array_equal(chunks, np.asarray(got.array)[rows])
    v = np.random.default_rng(0).normal(size=(3, got.dim))
    np.testing.assert_allclose(got.dot(v, rows=rows), np.asarray(got.array, dtype=np.float64)[rows] @ v.T, rtol=1e-10)


def test_projection_and_float16(toy, data, tmp_path):
    store = GradientStore(Cache(tmp_path))
    spec = GradientSpec(draws=GRID, projection="rademacher", proj_dim=32, proj_seed=5)
    got = store.get(toy, data, spec)
    proj = store.projector(toy, spec)
    assert proj.dim_out == 32 and got.dim == 32
    np.testing.assert_allclose(np.asarray(got.array), _direct(toy, data, spec, proj), rtol=1e-4, atol=1e-6)
    half = store.get(toy, data, GradientSpec(draws=GRID, projection="rademacher", proj_dim=32, proj_seed=5,
                                             dtype="float16"))
    assert half.array.dtype == np.float16
    np.testing.assert_allclose(np.asarray(half.array, dtype=np.float32), np.asarray(got.array), rtol=2e-3,
                               atol=2e-3 * np.abs(np.asarray(got.array)).max())


def test_projected_entries_derive_from_the_unprojected_one(toy, data, tmp_path, monkeypatch):
    """via_identity: the gradients are taken once (the identity entry); every projection size, seed and storage
    dtype is then a projection of those rows, equal to the direct computation up to rounding, at no gradient
    evaluation. Without an identity entry and without via_identity nothing changes."""
    direct_store = GradientStore(Cache(tmp_path / "direct"))
    store = GradientStore(Cache(tmp_path / "derived"), chunk_items=4)
    spec = GradientSpec(draws=GRID, flips=True, projection="rademacher", proj_dim=32, proj_seed=5, via_identity=True)
    assert store.key(toy, data, spec) == direct_store.key(toy, data, GradientSpec(**{**spec.__dict__,
                                                                                      "via_identity": False}))
    got = store.get(toy, data, spec)
    per_pass = N * spec.views * 2 * 3
    assert store.evaluations == per_pass and got.evaluations == 0
    assert store.lookup(toy, data, store.identity_spec(spec)) is not None
    layout = json.loads((got.path / "layout.json").read_text())
    assert layout["derived_from"] == store.key(toy, data, store.identity_spec(spec))
    want = direct_store.get(toy, data, GradientSpec(**{**spec.__dict__, "via_identity": False}))
    scale = np.abs(np.asarray(want.array)).max()
    np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), rtol=1e-4, atol=1e-5 * scale)
    # another size, seed and dtype: no new gradient, same as computing directly
    for other in (dict(proj_dim=8), dict(proj_seed=6), dict(dtype="float16", projection="gaussian")):
        o = GradientSpec(**{**spec.__dict__, **other, "via_identity": False})
        a = store.get(toy, data, o)
        b = direct_store.get(toy, data, o)
        assert a.dim == b.dim and a.array.dtype == b.array.dtype
        np.testing.assert_allclose(np.asarray(a.array, dtype=np.float32), np.asarray(b.array, dtype=np.float32),
                                   rtol=2e-3, atol=2e-3 * np.abs(np.asarray(b.array, dtype=np.float32)).max())
    assert store.evaluations == per_pass
    assert direct_store.evaluations == 4 * per_pass
    assert direct_store.lookup(toy, data, store.identity_spec(spec)) is None
    # a selection too large to keep unprojected is refused in one line
    monkeypatch.setattr("genattr.harness.gradstore.MAX_IDENTITY_BYTES", 16)
    with pytest.raises(Exception, match="unprojected gradients would take"):
        GradientStore(Cache(tmp_path / "small-limit")).get(toy, data, spec)


def test_killed_computation_resumes_from_its_last_finished_chunk(toy, data, tmp_path, monkeypatch):
    spec = GradientSpec(draws=GRID, include=("down_blocks.0",))
    cache = Cache(tmp_path)
    real = G.gradient_features
    calls = []

    def dying(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while computing the third chunk
        calls.append(a[2])
        return real(*a, **k)

    monkeypatch.setattr(G, "gradient_features", dying)
    with pytest.raises(KeyboardInterrupt):
        GradientStore(cache, chunk_items=2).get(toy, data, spec)
    store = GradientStore(cache, chunk_items=2)
    key = store.key(toy, data, spec)
    assert cache.lookup(NAMESPACE, key) is None  # no half entry is visible
    staged = json.loads((cache.root / ".staging" / NAMESPACE / key / "progress.json").read_text())
    assert staged["done"] == 4
    calls.clear()
    monkeypatch.setattr(G, "gradient_features", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    got = store.get(toy, data, spec)
    assert calls == [2, 2, 1]  # only the unfinished items: rows 4–8
    assert store.evaluations == 5 * 2 * 3 and got.evaluations == N * 2 * 3
    np.testing.assert_allclose(np.asarray(got.array), _direct(toy, data, spec), rtol=1e-4, atol=1e-7)
    assert not (cache.root / ".staging" / NAMESPACE / key).exists()


def test_peak_memory_of_a_streamed_read_does_not_grow_with_the_pool(tmp_path):
    """Reading a stored array chunk by chunk allocates one chunk, whatever the number of rows (tracemalloc counts
    numpy's allocations; the memory map's pages are not allocations)."""
    import tracemalloc

    from genattr.harness.gradstore import StoredGradients

    peaks = {}
    for n in (2000, 8000):
        d = tmp_path / str(n)
        d.mkdir()
        arr = np.lib.format.open_memmap(d / "grads.npy", mode="w+", dtype=np.float32, shape=(n, 1, 256))
        arr[:] = 1.0
        arr.flush()
        del arr
        (d / "layout.json").write_text(json.dumps({"names": ["w"], "shapes": [[256]]}))
        sg = StoredGradients(d, GradientSpec(), "k")
        tracemalloc.start()
        total = sum(float(g.sum()) for _, g in sg.chunks(max_bytes=256 * 4 * 500))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert total == n * 256
        peaks[n] = peak
    assert peaks[8000] < 1.2 * peaks[2000]


def test_host_modules_import_no_builtin_plugin():
    code = ("import sys, genattr.harness.gradstore, genattr.harness.gradients; "
            "print([m for m in sys.modules if m.startswith(('genattr.plugins', 'genattr.benchmarks', "
            "'genattr.datasets'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the methods through the store, against their former in-memory path ---------------------------------------------
def _old_kernel_scores(m, ctx, model, queries):
    """TRAK's former path: Φ from one gradient_features call, Φ(ΦᵀΦ+λI)⁻¹ in float32, per-query products."""
    cfg = m.config
    gf = G.PerSampleGrad(model, G.select_parameters(model, cfg["selection"], cfg["include"]), target=m.target)
    proj = None
    if cfg["projection"] != "identity":
        proj = G.Projector(gf.layout.dim, int(cfg["proj_dim"]), seed=ctx.seed, kind=cfg["projection"])
    phi = G.gradient_features(model, G.dataset_items(ctx.train_set), len(ctx.train_set),
                              m._draw_fn(ctx, model, "train"), gf, proj, reduce=m.reduce, seed=ctx.seed)
    lam = float(cfg["lambda_reg"])
    if cfg["lambda_mode"] == "relative":
        lam *= float((phi.double() ** 2).sum()) / phi.shape[1]
    kphi = G.kernel_solve(phi, lam).float().double()
    feats = m.query_features(ctx, model, queries)
    return np.stack([m._aggregate((f.double() @ kphi.T).numpy()) for f in feats])


@pytest.mark.parametrize("name", ["trak", "dtrak", "journeytrak"])
def test_kernel_methods_equal_their_former_path(name, toy, data, tmp_path):
    from genattr.plugins.methods.trak import DTrakMethod, JourneyTrakMethod, TrakMethod

    cls = {"trak": TrakMethod, "dtrak": DTrakMethod, "journeytrak": JourneyTrakMethod}[name]
    m = cls(proj_dim=32)
    ctx = _ctx(toy, data, Cache(tmp_path))
    qs = [Query("g", _images(1, seed=4)[0], "red ring", meta={"seed": 2}), Query("t", data.item(3).image, "big dot")]
    got = m.attribute(ctx, qs)
    want = _old_kernel_scores(m, ctx, toy, qs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_datainf_equals_its_former_path(toy, data, tmp_path):
    from genattr.plugins.methods.datainf import DataInfMethod

    m = DataInfMethod(include=["down_blocks.0"])
    ctx = _ctx(toy, data, Cache(tmp_path))
    qs = [Query("g", _images(1, seed=4)[0], "red ring"), Query("t", data.item(3).image, "big dot")]
    got = m.attribute(ctx, qs, candidates=[5, 1, 8])
    gf = m._grad_fn(ctx)
    Gt = G.gradient_features(toy, G.dataset_items(data), N, m._draws(ctx, "train"), gf, None).double()
    items = [G.GradItem(f"query:{q.id}", q.image, (q.prompt,)) for q in qs]
    V = G.gradient_features(toy, lambda r: items[r], 2, m._draws(ctx, "query"), gf, None).double()
    want = torch.zeros(2, 3, dtype=torch.float64)
    for sl, d in zip(gf.layout.slices(), gf.layout.sizes):
        Gl, Vl = Gt[:, sl], V[:, sl]
        lam = 0.1 * float((Gl ** 2).sum(dim=1).mean()) / d
        c = (Vl @ Gl.T) / (N * (lam + (Gl ** 2).sum(dim=1)))
        want += ((Vl - c @ Gl) @ Gl[[5, 1, 8]].T) / lam
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-8 * float(want.abs().max()))


def test_second_method_and_run_reuse_the_stored_gradients(toy, data, tmp_path):
    from genattr.plugins.methods.trak import TrakMethod

    cache = Cache(tmp_path)
    store = store_for(cache)
    ctx = _ctx(toy, data, cache)
    TrakMethod(proj_dim=32).prepare(ctx)
    spent = store.evaluations
    assert spent > 0
    TrakMethod(proj_dim=32, lambda_reg=3.0).prepare(ctx)  # another λ, another instance: no new gradient
    TrakMethod(proj_dim=32).attribute(ctx, [Query("t", data.item(1).image, "dot")])
    assert store.evaluations == spent
    # a fresh process-level store (a second run) reads the same entry from disk
    fresh = GradientStore(cache)
    spec = TrakMethod(proj_dim=32)._spec(ctx)
    assert fresh.lookup(toy, data, spec) is not None


def test_a_projection_size_sweep_takes_the_gradients_once(toy, data, tmp_path):
    """TRAK with unprojected_store=True: the option enters the configuration only when given; scores equal the
    default path's; a second projection size then spends no gradient evaluation."""
    from genattr.plugins.methods.trak import DTrakMethod

    assert "unprojected_store" not in DTrakMethod(proj_dim=32).config
    qs = [Query("t", data.item(3).image, "big dot")]
    plain = DTrakMethod(proj_dim=32).attribute(_ctx(toy, data, Cache(tmp_path / "a")), qs)
    cache = Cache(tmp_path / "b")
    store = store_for(cache)
    m = DTrakMethod(proj_dim=32, unprojected_store=True)
    assert m.config["unprojected_store"] is True
    got = m.attribute(_ctx(toy, data, cache), qs)
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
    spent = store.evaluations
    DTrakMethod(proj_dim=8).attribute(_ctx(toy, data, cache), qs)
    assert store.evaluations == spent


@pytest.mark.parametrize("name", ["trak", "dtrak", "datainf", "das", "retrac"])
def test_method_seed_option_replaces_the_run_seed_only_when_given(name, toy, data, tmp_path):
    """``seed`` (a second method seed on the same model): absent or null leaves the configuration as it was; equal to
    the run's seed it reproduces the run-seeded scores exactly (every draw goes through ``seed_for``); another value
    changes the draws and so the scores; a non-integer is a one-line error."""
    import genattr
    from genattr.harness.errors import UserError

    genattr.load_plugins()
    base = genattr.get_method(name, proj_dim=16) if name != "datainf" else genattr.get_method(name)
    opts = {"proj_dim": 16} if name != "datainf" else {}
    assert "seed" not in base.config
    assert genattr.get_method(name, seed=None, **opts).config == base.config
    qs = [Query("t", data.item(3).image, "big dot")]
    cache = Cache(tmp_path / "c")
    run_seeded = base.attribute(_ctx(toy, data, cache, seed=5), qs)
    same = genattr.get_method(name, seed=5, **opts).attribute(_ctx(toy, data, cache, seed=0), qs)
    np.testing.assert_array_equal(same, run_seeded)
    other = genattr.get_method(name, seed=6, **opts).attribute(_ctx(toy, data, cache, seed=5), qs)
    assert not np.allclose(other, run_seeded)
    with pytest.raises(UserError, match="seed"):
        genattr.get_method(name, seed="1", **opts)
