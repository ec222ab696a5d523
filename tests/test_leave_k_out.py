"""The leave-K-out counterfactual benchmark and its ΔL / ΔG metrics (tiny scale, session cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genattr.benchmarks.leave_k_out import (  # noqa: E402
    LeaveKOutBenchmark,
    random_removal,
    resolve_k,
    top_k,
)
from genattr.harness.api import Cell, Query, RunEnv  # noqa: E402
from genattr.harness.errors import UserError  # noqa: E402
from genattr.harness.counterfactual import loss_timesteps, query_loss  # noqa: E402
from genattr.plugins.metrics.counterfactual import DeltaGenMSE, DeltaGenSim, DeltaLoss  # noqa: E402

#: The smallest useful configuration: one K, two queries, two random draws, a short training.
FAST = dict(k=[3], num_queries=2, random_draws=2, query_steps=5, n=32, train_config={"steps": 12})


@pytest.fixture(scope="module")
def env(session_cache):
    return RunEnv(cache=session_cache, seed=0, scale="tiny")


@pytest.fixture(scope="module")
def bench(env):
    b = LeaveKOutBenchmark("tiny", **FAST)
    b.setup(env)
    return b


class FixedScores:
    """A ranking method with known scores (so the top-K is known exactly)."""

    name = "fixed"
    version = "1"
    needs_model = False

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)
        self.config = {"scores": self.scores.tolist()}
        self.calls = 0

    def prepare(self, ctx):
        pass

    def attribute(self, ctx, queries, candidates=None):
        self.calls += 1
        return np.tile(self.scores, (len(queries), 1))


# -- pure functions ---------------------------------------------------------------------------------------------
def test_resolve_k_counts_fractions_and_minimum():
    assert resolve_k([0.0042, 0.0085, 0.034], 118_287) == [
        (497, 497 / 118_287), (1005, 1005 / 118_287), (4022, 4022 / 118_287)]
    assert resolve_k([0.001, 5], 100) == [(1, 0.01), (5, 0.05)]  # a fraction never rounds to 0
    assert resolve_k([2, 2.0], 10) == [(2, 0.2)]  # duplicates dropped
    with pytest.raises(UserError):
        resolve_k([10], 10)
    with pytest.raises(UserError):
        resolve_k([0], 10)


def test_top_k_ties_and_nan():
    s = np.array([0.5, 0.9, np.nan, 0.9, 0.1])
    assert top_k(s, 3).tolist() == [1, 3, 0]


def test_random_removal_is_a_function_of_seed_k_draw():
    a = random_removal(0, 5, 0, 100)
    assert a.tolist() == random_removal(0, 5, 0, 100).tolist()
    assert len(set(a.tolist())) == 5 and a.min() >= 0 and a.max() < 100
    assert a.tolist() != random_removal(0, 5, 1, 100).tolist()
    assert a.tolist() != random_removal(1, 5, 0, 100).tolist()


def test_loss_timesteps_stride_5():
    ts = loss_timesteps(1000, 5)
    assert ts[:3] == [0, 5, 10] and ts[-1] == 995 and len(ts) == 200


# -- cells ------------------------------------------------------------------------------------------------------
def test_cells_enumeration():
    b = LeaveKOutBenchmark("tiny", k=[0.1, 4], num_queries=3, n=40)
    cells = b.cells(["unlearning", "random"])
    assert len(cells) == 2 * 1 * 3  # 0.1 × 40 = 4 = the count 4: one K
    assert len({c.id for c in cells}) == len(cells)
    assert {c.group["K"] for c in cells} == {4}
    b = LeaveKOutBenchmark("tiny", k=[0.05, 6], num_queries=3, n=40)
    cells = b.cells(["unlearning", "random"])
    assert len(cells) == 12 and {c.group["K"] for c in cells} == {2, 6}
    c = next(c for c in cells if c.id == "random/K6/q002")
    assert c.method == "random" and c.params == {"K": 6, "K_frac": 0.15, "query": 2}
    assert c.group == {"K": 6, "K_frac": 0.15}
    assert json.loads(json.dumps([c.params for c in cells]))  # JSON-able


def test_config_errors():
    with pytest.raises(UserError):
        LeaveKOutBenchmark("tiny", nonsense=1)
    with pytest.raises(UserError):
        LeaveKOutBenchmark("huge")
    with pytest.raises(UserError):
        LeaveKOutBenchmark("tiny", dataset="cifar")


def test_paper_config_is_the_papers():
    b = LeaveKOutBenchmark("paper")
    cfg = b.config
    assert cfg["dataset"] == "mscoco" and cfg["model"] == "diffusers"
    assert cfg["k"] == [500, 1000, 4000] and cfg["num_queries"] == 110 and cfg["random_draws"] == 10
    import genattr

    assert cfg["recipe"] == "paper" and cfg["model_config"] is None
    recipe = genattr.model_recipe("diffusers", cfg["recipe"], cfg["dataset"])
    assert recipe["model"]["unet"]["block_out_channels"] == [128, 256, 256, 256]
    assert recipe["model"]["unet"]["cross_attention_dim"] == 1024 and recipe["model"]["from_scratch"] == ["unet"]
    assert recipe["train"]["lr"] == 1e-4 and recipe["train"]["batch_size"] == 128 and recipe["train"]["flip"]
    assert recipe["train"]["steps"] == -(-200 * 118287 // 128)  # 200 epochs
    assert len(b.cells(["unlearning"])) == 3 * 110



@pytest.mark.parametrize("bench_name", ["leave-k-out", "lds", "teacher-agreement"])
def test_another_model_or_dataset_brings_its_own_recipe_not_the_presets(bench_name):
    """The ``small`` preset's 300 digits at 8 px and 400 steps belong to its model and dataset: another model
    or dataset takes its own recipe's N, data settings and steps unless they are given."""
    import genattr

    preset = genattr.get_benchmark(bench_name, scale="small").config
    assert preset["n"] == 300 and preset["train_config"] == {"steps": 400}
    assert preset["dataset_config"] == {"resolution": 8}
    latent = genattr.get_benchmark(bench_name, scale="small", model="diffusers", dataset="shapes").config
    assert latent["n"] is None and latent["train_config"] is None and latent["dataset_config"] is None
    assert latent["recipe"] == "small"  # the scale of the model's own recipe: its 4,000 scenes and steps
    if bench_name == "leave-k-out":
        assert LeaveKOutBenchmark("small", model="diffusers", dataset="shapes")._n_without_setup() == 4000
    shapes = genattr.get_benchmark(bench_name, scale="small", dataset="shapes").config
    assert shapes["n"] is None and shapes["dataset_config"] is None and shapes["train_config"] == {"steps": 400}
    # given values stay; the preset's model keeps adjusting its recipe
    given = genattr.get_benchmark(bench_name, scale="small", model="diffusers", n=2000,
                                  train_config={"steps": 100}, dataset_config={"jitter": 0.0}).config
    assert given["n"] == 2000 and given["train_config"] == {"steps": 100} and given["dataset_config"] == {"jitter": 0.0}
    same = genattr.get_benchmark(bench_name, scale="small", model="tiny-t2i", train_config={"lr": 1e-3}).config
    assert same["n"] == 300 and same["train_config"] == {"steps": 400, "lr": 1e-3}

# -- setup, queries ---------------------------------------------------------------------------------------------
def test_setup_queries_are_held_out_and_reproducible(bench, env):
    st = bench._setup(env)
    assert len(st.train) == FAST["n"]
    train_ids = set(st.train.ids)
    for q in st.queries:
        assert q.meta["source_id"] not in train_ids  # caption from a held-out item
        assert tuple(q.image.shape) == (st.train.channels, st.train.resolution, st.train.resolution)
    again = LeaveKOutBenchmark("tiny", **FAST)
    st2 = again._setup(env)
    assert st2.base.fingerprint == st.base.fingerprint  # the base model comes from the cache
    for a, b in zip(st.queries, st2.queries):
        assert a.prompt == b.prompt and a.meta["seed"] == b.meta["seed"]
        assert torch.equal(a.image, b.image)


# -- metrics ----------------------------------------------------------------------------------------------------
def _perturbed(model, scale=0.05):
    m = model.clone()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.unet.parameters():
            if p.numel() > 1:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    m._invalidate()
    return m


def test_delta_metrics_zero_for_identical_models(bench, env):
    st = bench._setup(env)
    base, q = st.base, st.queries[0]
    assert DeltaLoss()(base, base, q) == 0.0
    assert DeltaGenMSE()(base, base, q) == 0.0
    sim = DeltaGenSim()(base, base, q, cache=env.cache, dataset=st.train)
    assert sim == pytest.approx(1.0, abs=1e-5)
    # a copy with identical weights is also identical (noise shared, not drawn afresh)
    assert DeltaLoss()(base, base.clone(), q) == 0.0


def test_delta_metrics_when_the_model_changes(bench, env):
    st = bench._setup(env)
    base, q = st.base, st.queries[0]
    other = _perturbed(base, 0.3)
    dl = DeltaLoss()(base, other, q)
    assert dl > 0  # a damaged model reproduces the query worse
    assert DeltaGenMSE()(base, other, q) > 0
    assert DeltaGenSim()(base, other, q, cache=env.cache, dataset=st.train) < 1 - 1e-4
    # ΔL is exactly the mean difference of per-timestep losses computed with the same noise
    lb, lo = query_loss(base, q), query_loss(other, q)
    assert dl == pytest.approx(float(np.mean(lo - lb)), rel=1e-9, abs=1e-12)
    # the noise is keyed on (query id, t): another batch size gives the same losses
    assert np.allclose(query_loss(base, q, batch_size=7), lb, rtol=1e-5, atol=1e-6)


def test_query_noise_differs_per_query(bench, env):
    st = bench._setup(env)
    q = st.queries[0]
    other = Query(id="another-id", image=q.image, prompt=q.prompt, meta=q.meta)
    assert not np.allclose(query_loss(st.base, q), query_loss(st.base, other))


# -- removal and retraining -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_independent(env):
    b = LeaveKOutBenchmark("tiny", retrain="independent", **FAST)
    b.setup(env)
    return b


@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_removal_excludes_exactly_the_top_k(mode, bench, bench_independent, env, monkeypatch):
    b = bench if mode == "coupled" else bench_independent
    assert b.config["retrain"] == mode
    st = b._setup(env)
    n = len(st.train)
    scores = np.linspace(0, 1, n)[::-1].copy()
    scores[[5, 17, 20]] = 10.0 + np.arange(3)  # the top 3
    method = FixedScores(scores)
    cell = Cell(id="fixed/K3/q000", method="fixed", params={"K": 3, "K_frac": 3 / n, "query": 0},
                group={"K": 3})
    (removal,) = b.removal_for(cell, method, env)
    assert removal == [5, 17, 20]
    trained_on = []
    real = b._train

    def spy(dataset, e, state, exclude=None):
        trained_on.append((list(dataset.ids), sorted(exclude or [])))
        return real(dataset, e, state, exclude)

    monkeypatch.setattr(b, "_train", spy)
    out = b.run_cell(cell, method, env)
    assert trained_on, "the retrain must go through _train"
    removed = {st.train.ids[i] for i in (5, 17, 20)}
    ids, excluded = trained_on[-1]
    if mode == "coupled":  # the full set's batch sequence, the removed items weighted 0
        assert ids == list(st.train.ids) and excluded == sorted(removed)
    else:  # a smaller training set: only those removed, order kept
        assert ids == [i for i in st.train.ids if i not in removed] and excluded == []
    assert set(out["extra"]["removed_ids"]) == removed
    for m in ("delta-loss", "delta-gen-mse", "delta-gen-sim"):
        assert np.isfinite(out[m])
    # scores were computed once and are served from the cache for another K
    calls = method.calls
    b.removal_for(Cell(id="fixed/K5/q000", method="fixed", params={"K": 5, "K_frac": 5 / n, "query": 0}),
                  method, env)
    assert method.calls == calls


def test_retrain_cache_hit_on_same_removal_set(bench, env, monkeypatch):
    from genattr.plugins.models.common import DDPMAdapter

    st = bench._setup(env)
    removal = [1, 2, 3]
    bench.evaluate_removal(removal, st.queries[0], env)  # trains (or finds) the model without 1, 2, 3
    trainings = []
    real_train = DDPMAdapter.train

    def counting(self, dataset, config=None):
        trainings.append((len(dataset), sorted((config or {}).get("item_weights") or [])))
        return real_train(self, dataset, config)

    monkeypatch.setattr(DDPMAdapter, "train", counting)
    # another query, same removal set (in another order): the retrained model comes from the cache
    v = bench.evaluate_removal([3, 2, 1], st.queries[1], env)
    assert trainings == []
    assert v["retrain_key"] == bench.evaluate_removal(removal, st.queries[0], env)["retrain_key"]
    # a different removal set does train (coupled: on the full set with those three excluded)
    bench.evaluate_removal([1, 2, 4], st.queries[0], env)
    assert trainings == [(len(st.train), sorted(st.train.ids[i] for i in (1, 2, 4)))]


def test_coupled_retrain_moves_less_than_independent(bench, env):
    """Coupling check: the coupled retrain differs from θ0 only through the removed items, so removing an item
    moves the query loss far less than an independent retrain on the reduced set (which reshuffles every batch)."""
    from genattr.harness.counterfactual import query_loss

    st = bench._setup(env)
    q = st.queries[0]
    base = query_loss(st.base, q, seed=0, stride=50)
    coupled = bench._train(st.train, env, st, exclude=[st.train.ids[7]])
    reduced = st.train.subset([i for k, i in enumerate(st.train.ids) if k != 7])
    independent = bench._train(reduced, env, st)
    d_coupled = float(np.abs(query_loss(coupled, q, seed=0, stride=50) - base).mean())
    d_indep = float(np.abs(query_loss(independent, q, seed=0, stride=50) - base).mean())
    assert 0 < d_coupled < d_indep


def test_random_draws_shared_across_queries(bench, env):
    from genattr import get_method

    method = get_method("random")
    cells = [c for c in bench.cells(["random"])]
    removals = [bench.removal_for(c, method, env) for c in cells]
    assert len(removals[0]) == FAST["random_draws"]
    assert all(r == removals[0] for r in removals)  # every query: the same R sets
    assert removals[0][0] != removals[0][1]  # the draws differ
    assert all(len(r) == 3 for r in removals[0])
    out = bench.run_cell(cells[0], method, env)
    draws = out["extra"]["draws"]
    assert len(draws) == FAST["random_draws"]
    assert out["delta-loss"] == pytest.approx(np.mean([d["delta-loss"] for d in draws]))


# -- summary ----------------------------------------------------------------------------------------------------
def test_summarize_mean_and_standard_error():
    rows = []
    vals = {"a": [1.0, 2.0, 3.0, 6.0], "b": [0.5, 0.5]}
    for m, vs in vals.items():
        for j, v in enumerate(vs):
            rows.append({"benchmark": "leave-k-out", "method": m, "group": {"K": 5, "K_frac": 0.05},
                         "metrics": {"delta-loss": v, "delta-gen-mse": 2 * v, "delta-gen-sim": 1 - v / 10}})
    rows.append({"benchmark": "customized-model", "method": "a", "group": {"split": "x"}, "metrics": {"ap": 1.0}})
    long = LeaveKOutBenchmark.summarize(rows, numeric=True)
    a = long[(long.method == "a") & (long.metric == "delta-loss")].iloc[0]
    assert a["mean"] == pytest.approx(3.0) and a["n"] == 4
    assert a["se"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
    b = long[(long.method == "b") & (long.metric == "delta-gen-mse")].iloc[0]
    assert b["mean"] == pytest.approx(1.0) and b["se"] == 0
    table = LeaveKOutBenchmark.summarize(rows)
    assert list(table.index) == ["a", "b"]
    assert ("delta-loss", 5) in table.columns and ("delta-gen-sim", 5) in table.columns
    assert table.loc["a", ("delta-loss", 5)].startswith("3 ± ")


# -- end to end -------------------------------------------------------------------------------------------------
def _sets(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            out += [f"leave-k-out.{k}.{kk}={json.dumps(vv)}" for kk, vv in v.items()]
        else:
            out.append(f"leave-k-out.{k}={json.dumps(v)}")
    return out


def test_end_to_end_tiny_run_random_and_pixel(tmp_path, session_cache):
    from genattr.harness.results import read_rows
    from genattr.harness.run import build_spec, run

    spec = build_spec(["leave-k-out"], ["random", "pixel"], scale="tiny", sets=_sets(FAST), out=str(tmp_path / "run"),
                      quiet=True, cache_root=str(session_cache.root), device="cpu")
    summary = run(spec)
    rows = read_rows(tmp_path / "run")
    assert summary.cells_run == len(rows) == 2 * 1 * 2
    for r in rows:
        assert set(r["metrics"]) == {"delta-loss", "delta-gen-mse", "delta-gen-sim"}
        assert all(v is not None and np.isfinite(v) for v in r["metrics"].values())
        assert r["group"]["K"] == 3
        assert r["higher_is_better"] == {"delta-loss": True, "delta-gen-mse": True, "delta-gen-sim": False}
        assert 0 <= r["metrics"]["delta-gen-mse"] <= 1 and -1 <= r["metrics"]["delta-gen-sim"] <= 1 + 1e-6
    rnd = [r for r in rows if r["method"] == "random"]
    assert all(len(r["extra"]["draws"]) == FAST["random_draws"] for r in rnd)
    table = LeaveKOutBenchmark.summarize(rows)
    assert set(table.index) == {"random", "pixel"}
    # a re-run skips every finished cell
    again = run(build_spec(["leave-k-out"], ["random", "pixel"], scale="tiny", sets=_sets(FAST),
                           out=str(tmp_path / "run"), quiet=True, cache_root=str(session_cache.root), device="cpu"))
    assert again.cells_run == 0 and again.cells_skipped == 4


def _fake_coco(root, split, n, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    words = ["a", "red", "blue", "cat", "dog", "on", "the", "table", "grass", "sitting", "small", "big"]
    images, anns = [], []
    for k in range(n):
        iid = 1000 * (seed + 1) + k
        name = f"{iid:012d}.jpg"
        arr = (rng.random((12, 10, 3)) * 255).astype(np.uint8)
        arr[:, : 5 + k % 5] = [200, 30 * (k % 8), 40]
        Image.fromarray(arr).save(root / split / name)
        images.append({"id": iid, "file_name": name})
        for c in range(5):
            anns.append({"id": iid * 10 + c, "image_id": iid,
                         "caption": " ".join(rng.choice(words, size=5).tolist())})
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": anns}))


def test_mscoco_path_end_to_end(tmp_path, session_cache):
    from genattr import get_method

    root = tmp_path / "coco"
    _fake_coco(root, "train2017", 12, 0)
    _fake_coco(root, "val2017", 3, 1)
    arch = {"block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 16,
            "attention_head_dim": 8, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "text_layers": 1,
            "text_heads": 2, "text_intermediate": 32}
    b = LeaveKOutBenchmark("paper", dataset_config={"root": str(root), "resolution": 8}, model="tiny-t2i",
                           model_config=arch, train_config={"steps": 4, "batch_size": 4, "lr": 1e-3},
                           n=None, k=[0.2], num_queries=2, random_draws=1, query_steps=3, guidance_scale=None,
                           encoder="pixels:8")
    env = RunEnv(cache=session_cache, seed=0, scale="paper")
    prov = b.setup(env)
    st = b._setup(env)
    assert len(st.train) == 12 and set(st.train.ids) == {str(1000 + k) for k in range(12)}
    assert [q.meta["source_id"] for q in st.queries] == ["2000", "2001"]  # val2017 captions
    assert prov["k"] == [{"K": 2, "K_frac": 2 / 12}]
    cells = b.cells(["pixel", "random"])
    assert len(cells) == 2 * 1 * 2
    for c in cells:
        out = b.run_cell(c, get_method(c.method), env)
        assert all(np.isfinite(out[m]) for m in ("delta-loss", "delta-gen-mse", "delta-gen-sim"))


def test_mscoco_needs_root():
    b = LeaveKOutBenchmark("paper")
    with pytest.raises(UserError, match="root"):
        b._datasets(0)


def test_shapes_queries_come_from_held_out_scenes(session_cache):
    b = LeaveKOutBenchmark("tiny", dataset="shapes", **FAST)
    env = RunEnv(cache=session_cache, seed=0, scale="tiny")
    st = b._setup(env)
    assert len(st.train) == FAST["n"] and st.train.channels == 3
    n = FAST["n"]
    # the tiny recipe holds colour–shape pairs out of training: the queries are scenes of those combinations
    assert [q.meta["source_id"] for q in st.queries] == [f"shapes-heldout-{n + j:05d}"
                                                         for j in range(FAST["num_queries"])]
    assert all(q.meta["source_id"] not in set(st.train.ids) for q in st.queries)
