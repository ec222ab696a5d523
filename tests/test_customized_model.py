"""The Customized Model benchmark (genattr.benchmarks.customized_model): cells, pools, verification, and a tiny
end-to-end run on the built-in miniature."""

from __future__ import annotations

import numpy as np
import pytest

import genattr
from genattr.benchmarks.customized_model import (
    ConceptCase, CustomizedModelBenchmark, LazyExtra, metric_columns, score_pools, verify_cases,
)
from genattr.harness.errors import UserError


def test_registered_and_columns():
    b = genattr.get_benchmark("customized-model", scale="tiny")
    assert isinstance(b, CustomizedModelBenchmark)
    assert b.name == "customized-model" and b.version == "2"
    assert b.metrics == {c: True for c in metric_columns(["own", "all"])}
    assert {"recall@10", "recall@5", "recall@100", "ap", "recall@10/all", "ap/all"} <= set(b.metrics)
    only_own = CustomizedModelBenchmark(scale="tiny", pools=["own"])
    assert set(only_own.metrics) == {"recall@10", "recall@5", "recall@100", "ap"}


def test_config_errors():
    with pytest.raises(UserError):
        CustomizedModelBenchmark(scale="huge")
    with pytest.raises(UserError, match="did you mean"):
        CustomizedModelBenchmark(scale="tiny", n_objects=3)
    with pytest.raises(UserError, match="data_root"):
        CustomizedModelBenchmark(scale="paper")
    with pytest.raises(UserError):
        CustomizedModelBenchmark(scale="tiny", pools=["mine"])
    with pytest.raises(UserError):
        CustomizedModelBenchmark(scale="tiny", verify="maybe")


def test_cells_enumeration_is_stable():
    b1 = CustomizedModelBenchmark(scale="tiny")
    b2 = CustomizedModelBenchmark(scale="tiny")
    cells = b1.cells(["random", "pixel"])
    assert [c.id for c in cells] == [c.id for c in b2.cells(["random", "pixel"])]
    cfg = b1.config
    n_concepts = cfg["n_object"] + cfg["n_style"]
    assert len(cells) == 2 * n_concepts * cfg["queries_per_concept"]
    assert len({c.id for c in cells}) == len(cells)
    assert {c.group["split"] for c in cells} == {"object-centric", "artist-style"}
    for c in cells:
        m, concept, q = c.id.split("/")
        assert m == c.method and concept == c.params["concept"] and q == f"q{c.params['query']:02d}"
        assert c.group == {"split": c.params["split"]}
        assert ("-object-" in concept) == (c.params["split"] == "object-centric")
    # object-centric first, then artist-style, per method
    splits = [c.params["split"] for c in cells if c.method == "random"]
    assert splits == sorted(splits, key=["object-centric", "artist-style"].index)
    # more queries → a superset of ids
    more = CustomizedModelBenchmark(scale="tiny", queries_per_concept=3).cells(["random"])
    assert {c.id for c in cells if c.method == "random"} < {c.id for c in more}


def test_score_pools_own_and_all():
    # base items 0..5, concept A exemplars 6,7, concept B exemplar 8
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.0, 0.4, 0.8, 0.35, 0.95])
    row, extra = score_pools(scores, 6, [6, 7], ["own", "all"])
    # own pool: base + A → order 0.9(b1), 0.8(A), 0.4, 0.35(A) … → ranks 2, 4
    assert extra["ranks_own"] == [2, 4] and extra["pool_size_own"] == 8
    assert row["ap"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert row["recall@5"] == 1.0 and row["recall@10"] == 1.0
    # all pool: B's exemplar (0.95) is a distractor on top → ranks 3, 5
    assert extra["ranks_all"] == [3, 5] and extra["pool_size_all"] == 9
    assert row["ap/all"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    # restricting the pool never worsens the ranks of the positives
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.normal(size=40)
        r, e = score_pools(s, 30, [31, 35, 36], ["own", "all"])
        assert all(a <= b for a, b in zip(e["ranks_own"], e["ranks_all"]))
        assert r["ap"] >= r["ap/all"] - 1e-12


def test_lazy_extra_computes_once_on_demand():
    calls = []

    def make():
        calls.append(1)
        return [1, 2, 3]

    extra = LazyExtra({"a": 1}, {"training_concepts": make})
    assert "training_concepts" in extra and not calls
    assert extra.get("training_concepts") == [1, 2, 3]
    assert extra["training_concepts"] == [1, 2, 3] and len(calls) == 1
    assert extra.get("missing") is None and extra["a"] == 1
    with pytest.raises(KeyError):
        extra["missing"]


def _cases_from_renderings(swap: bool):
    """Cases whose 'queries' are perfect renderings of their prompts' scenes (or another concept's, when swapped)."""
    from genattr.datasets.shapes import make_concepts
    from genattr.harness.api import Query

    concepts = make_concepts("test", n_object=2, n_style=2, exemplars_per_style=(3, 4), resolution=16, n_queries=3)
    cases = []
    for k, c in enumerate(concepts):
        same_kind = [o for o in concepts if o.kind == c.kind]
        src = same_kind[(same_kind.index(c) + 1) % len(same_kind)] if swap else c
        imgs = [src.render(spec, 16) for spec in c.query_specs]
        case = ConceptCase(id=c.id, split="object-centric" if c.kind == "object" else "artist-style",
                           token=c.token, exemplars=c.exemplars, prompts=c.query_prompts, seeds=[0, 1, 2],
                           concept=c)
        case.queries = [Query(id=f"{c.id}/q{i}", image=im, prompt=p) for i, (im, p) in
                        enumerate(zip(imgs, c.query_prompts))]
        cases.append(case)
    return cases


def test_verification_passes_faithful_and_fails_swapped_concepts(session_cache):
    from genattr.harness.api import RunEnv

    env = RunEnv(cache=session_cache)
    good = verify_cases(_cases_from_renderings(swap=False), env)
    assert good["passed"] and not good["failed"]
    for fig in good["concepts"].values():
        assert fig["render"]["nearest_own"] == 1.0
    bad = verify_cases(_cases_from_renderings(swap=True), env)
    assert not bad["passed"]
    assert len(bad["failed"]) == 4
    for fig in bad["concepts"].values():
        assert fig["render"]["nearest_own"] == 0.0


def test_verification_failure_names_each_concept_and_why():
    """The failure line names every failed concept with its figures, and tells a model that copies its exemplar
    (nearest its own exemplars above chance, render check at or below chance) from one that learnt nothing."""
    from genattr.benchmarks.customized_model.verification import act_on_verification
    from genattr.harness.errors import UserError

    copies = {"chance": 1 / 3, "pixel": {"nearest_own": 0.88}, "style": {"nearest_own": 0.25},
              "render": {"nearest_own": 0.12, "chance": 0.25}, "passed": False}
    nothing = {"chance": 1 / 3, "pixel": {"nearest_own": 0.25}, "style": {"nearest_own": 0.12},
               "render": {"nearest_own": 0.0, "chance": 0.25}, "passed": False}
    no_scene = {"chance": 0.5, "pixel": {"nearest_own": 0.5}, "style": {"nearest_own": 0.25}, "passed": False}
    ver = {"failed": ["ring", "blank", "abc"], "concepts": {"ring": copies, "blank": nothing, "abc": no_scene}}
    with pytest.raises(UserError) as err:
        act_on_verification(ver, "error")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("customized-model: 3 customized model(s) fail")
    ring, blank, abc = (msg.split(f"{c}: ")[1].split(";")[0] for c in ("ring", "blank", "abc"))
    assert "0.12 of its queries" in ring and "chance 0.25" in ring and "pixel 0.88" in ring
    assert "not the prompt's composition" in ring
    assert "0.00 of its queries" in blank and "composition" not in blank
    assert "nearest-concept share pixel 0.50, style 0.25 (chance 0.50)" in abc
    act_on_verification({"failed": [], "concepts": {}}, "error")  # nothing failed: silent


# ---------------------------------------------------------------------------------------------------------------
# tiny end to end (base model and customized models come from the session cache after the first build)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(session_cache):
    from genattr.harness.api import RunEnv

    bench = CustomizedModelBenchmark(scale="tiny")
    env = RunEnv(cache=session_cache, scale="tiny", seed=0)
    provenance = bench.setup(env)
    return bench, env, provenance


def test_tiny_setup_provenance(tiny):
    bench, env, prov = tiny
    cfg = bench.config
    assert prov["source"] == "built-in"
    assert len(prov["models"]) == 1 + cfg["n_object"] + cfg["n_style"]
    assert len(set(prov["models"].values())) == len(prov["models"])  # every customized model differs from the base
    assert prov["sizes"]["concepts"] == {"object-centric": cfg["n_object"], "artist-style": cfg["n_style"]}
    n_ex = sum(c["n_exemplars"] for c in prov["concepts"])
    assert prov["sizes"]["pool_all"] == prov["sizes"]["pool_base"] + n_ex
    ver = prov["verification"]
    assert set(ver["concepts"]) == {c["id"] for c in prov["concepts"]}
    for fig in ver["concepts"].values():
        assert {"pixel", "style", "render", "passed", "lift_over_base"} <= set(fig)
    state = bench._load(env)
    for case in state.cases.values():
        assert len(case.queries) == cfg["queries_per_concept"]
        for q in case.queries:
            assert q.image.shape == state.pool.item(0).image.shape
            assert case.token in q.prompt
        # exemplars sit in the pool with their customization captions (token included)
        for i in case.own_idx:
            assert all(case.token in c for c in state.pool.captions(i))


def test_pool_carries_its_base_name_so_features_picks_the_builtin_encoder(tiny):
    bench, env, _ = tiny
    state = bench._load(env)
    assert state.pool.name == "shapes+customized-model-pool"
    method = genattr.get_method("features")
    ctx = bench.context(next(iter(state.cases)), method, env)
    assert method.encoder_spec(ctx) == "builtin:shapes"


def test_tiny_queries_are_cached_and_deterministic(tiny):
    import torch

    bench, env, _ = tiny
    again = CustomizedModelBenchmark(scale="tiny")
    s1, s2 = bench._load(env), again._load(env)
    assert s1.pool.fingerprint == s2.pool.fingerprint
    for cid, case in s1.cases.items():
        for q1, q2 in zip(case.queries, s2.cases[cid].queries):
            assert q1.id == q2.id and q1.prompt == q2.prompt and torch.equal(q1.image, q2.image)


def _available(name):
    from genattr.harness.manager import registry

    try:
        registry("methods").get(name).factory.resolve()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("method_name", [
    "random", "pixel", pytest.param("unlearning", marks=pytest.mark.slow),  # ≈ 1 min on 2 shared cores
])
def test_tiny_end_to_end_rows(tiny, method_name):
    if not _available(method_name):
        pytest.skip(f"method {method_name} is not importable yet")
    bench, env, _ = tiny
    # unlearning: a cheap configuration (the point is the plumbing, not the ranking) on one query per concept
    cheap = dict(steps=1, batch=8, accumulation=1, timesteps=2, fisher_samples=16, fisher_batch=8)
    method = genattr.get_method(method_name, **(cheap if method_name == "unlearning" else {}))
    cells = [c for c in bench.cells([method_name]) if method_name != "unlearning" or c.params["query"] == 0]
    rows = [bench.run_cell(c, method, env) for c in cells]
    assert len(rows) == len(cells) > 0
    for c, r in zip(cells, rows):
        for col in bench.metrics:
            assert 0.0 <= r[col] <= 1.0
        assert r["ap"] >= r["ap/all"] - 1e-12
        assert r["extra"]["concept"] == c.params["concept"]
        assert len(r["extra"]["ranks_own"]) == len(r["extra"]["ranks_all"]) >= 1
    summary = bench.summarize([{"method": method_name, "group": c.group, "metrics": r} for c, r in zip(cells, rows)])
    assert set(summary[method_name]) == {"object-centric", "artist-style"}
    per_concept = 1 if method_name == "unlearning" else bench.config["queries_per_concept"]
    assert summary[method_name]["artist-style"]["recall@10"]["n"] == bench.config["n_style"] * per_concept


@pytest.mark.slow  # customizes the training concepts too
def test_training_concepts_are_lazy_and_disjoint_from_test(tiny):
    bench, env, prov = tiny
    method = genattr.get_method("random")
    case_id = prov["concepts"][0]["id"]
    ctx = bench.context(case_id, method, env)
    assert ctx.model is None  # model-free method
    assert ctx.train_set.fingerprint == bench._load(env).pool.fingerprint
    assert "training_concepts" in ctx.extra and "training_concepts" not in dict.keys(ctx.extra)
    tc = ctx.extra["training_concepts"]
    test_ids = {c["id"] for c in prov["concepts"]}
    assert tc and not ({t["id"] for t in tc} & test_ids)
    for t in tc:
        assert t["id"].startswith("train-")
        assert t["exemplars"].ndim == 4 and t["synthesized"].ndim == 4
        assert t["synthesized"].shape[0] == bench.config["train_queries_per_concept"]
        assert float(t["synthesized"].abs().max()) <= 1.0


def test_unlearning_gets_the_benchmark_preset(tiny):
    """The paper used other unlearning values for its Customized Model protocol than for MSCOCO; the benchmark
    makes the method pick its own preset (an explicit preset still wins)."""
    bench, env, prov = tiny
    m = genattr.get_method("unlearning")
    ctx = bench.context(prov["concepts"][0]["id"], m, env)
    assert bench.preset_hint == "customized" and ctx.extra["preset_hint"] == "customized"
    assert m.resolve_config(ctx.scale, bench.preset_hint)["preset"] == "customized-tiny"
    assert m._resolve_from(ctx)["preset"] == "customized-tiny"
    assert genattr.get_method("unlearning", preset="tiny").resolve_config("tiny", "customized")["preset"] == "tiny"
    # the model the benchmark scores with reaches the method too (values calibrated for it, none at tiny)
    assert ctx.extra["preset_model"] == bench.preset_model == bench.config["model"]
    assert m._resolve_from(ctx) == m.resolve_config(ctx.scale, bench.preset_hint, bench.preset_model)


def test_unlearning_takes_values_calibrated_for_the_model():
    """``customized-small`` on the latent miniature (model ``diffusers``) takes the α its own training concepts chose;
    on ``tiny-t2i``, where the preset was calibrated, and on the counterfactual presets nothing changes; explicit
    options and an explicit preset win."""
    from genattr.plugins.methods.unlearning.config import ALPHA_CUSTOMIZED_LATENT, ALPHA_CUSTOMIZED_SMALL, PRESETS

    def alpha(model, hint="customized", **options):
        return genattr.get_method("unlearning", **options).resolve_config("small", hint, model=model)["alpha"]

    assert alpha("diffusers") == ALPHA_CUSTOMIZED_LATENT != ALPHA_CUSTOMIZED_SMALL
    assert alpha("tiny-t2i") == alpha(None) == ALPHA_CUSTOMIZED_SMALL
    assert alpha("diffusers", hint=None) == PRESETS["small"]["alpha"]
    assert alpha("diffusers", alpha=0.02) == 0.02
    assert alpha("diffusers", preset="customized-small") == ALPHA_CUSTOMIZED_SMALL
    cfg = genattr.get_method("unlearning").resolve_config("small", "customized", model="diffusers")
    assert cfg == genattr.get_method("unlearning", alpha=ALPHA_CUSTOMIZED_LATENT).resolve_config("small", "customized")


@pytest.mark.slow  # customizes the training concepts
def test_calibrate_on_a_pool_sample_equals_direct_scoring(tiny):
    from genattr.benchmarks.customized_model import _calibration_rng, calibrate
    from genattr.plugins.metrics.retrieval import average_precision

    bench, env, _ = tiny
    res = calibrate(bench, env, "pixel", [{}], pool_sample=15, queries_per_concept=1)
    state = bench._load(env, "train")
    base = np.sort(_calibration_rng(env.seed).choice(state.n_base, 15, replace=False))
    method = genattr.get_method("pixel")
    expected = []
    for case in state.cases.values():
        full = np.asarray(method.attribute(bench.context(case.id, method, env, "train"), [case.queries[0]]))[0]
        idx = np.concatenate([base, case.own_idx])
        expected.append(average_precision(full[idx], np.arange(15, idx.size)))
    got = [v for vs in res["table"][0]["values"].values() for v in vs]
    assert sorted(got) == pytest.approx(sorted(expected))
    assert res["table"][0]["mean"] == pytest.approx(float(np.mean(expected)))
