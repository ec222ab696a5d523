"""The LDS benchmark and its metric (tiny scale): the subset draw, the sign on a planted case, random at chance,
subset models trained once for every method and query, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import genattr

torch = pytest.importorskip("torch")

from genattr.benchmarks.lds import (  # noqa: E402
    BOUND_ROW,
    CEILING_ROW,
    SCALES,
    LDSBenchmark,
    attenuation_bound,
    draw_subsets,
    seed_for,
)
from genattr.harness.api import Query, RunEnv  # noqa: E402
from genattr.harness.cache import Cache  # noqa: E402
from genattr.harness.errors import UserError  # noqa: E402
from genattr.plugins.metrics.lds import LDS, average_ranks, membership, spearman, subset_predictions  # noqa: E402

TINY_M = SCALES["tiny"]["subsets"]


# -- the metric -------------------------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, 9).astype(float)  # many ties
        b = rng.normal(size=9)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0  # constant: no ranking information
    with pytest.raises(ValueError):
        spearman([1.0, float("nan")], [1.0, 2.0])


def test_lds_sign_convention():
    """Helpful items (high scores) in a subset should mean a low loss: outputs that fall as g rises give LDS = +1."""
    subsets = [[0, 1], [1, 2], [0, 2], [2, 3]]
    scores = np.array([4.0, 1.0, 0.5, -2.0])
    g = subset_predictions(scores, subsets)
    assert g.tolist() == [5.0, 1.5, 4.5, -1.5]
    assert LDS()(scores, subsets, -g) == pytest.approx(1.0)
    assert LDS()(scores, subsets, g) == pytest.approx(-1.0)
    # the membership matrix and index lists agree; (R, M) outputs are averaged over the seeds first
    mask = membership(subsets, 4)
    assert mask.sum(axis=1).tolist() == [2, 2, 2, 2]
    assert LDS()(scores, mask, np.stack([-g, -g + 0.1])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        membership([[0, 4]], 4)
    with pytest.raises(ValueError):
        LDS()(scores, subsets, [1.0, 2.0])


def test_lds_of_the_head_only():
    """``top=k``: only the top k's membership and score differences count; the tail's order and scale do not."""
    rng = np.random.default_rng(3)
    n, m = 40, 12
    subsets = [rng.choice(n, size=n // 2, replace=False) for _ in range(m)]
    scores = rng.normal(size=n)
    outputs = rng.normal(size=m)
    order = np.argsort(-scores, kind="stable")
    tail = order[5:]
    shuffled = scores.copy()  # the tail re-ordered and re-scaled below the 6th score, the head untouched
    shuffled[tail] = scores[order[5]] - rng.uniform(0, 10, size=tail.size)
    shuffled[order[5]] = scores[order[5]]
    top = LDS(top=5)
    assert top(scores, subsets, outputs) == pytest.approx(top(shuffled, subsets, outputs), abs=1e-12)
    assert LDS()(scores, subsets, outputs) != pytest.approx(LDS()(shuffled, subsets, outputs), abs=1e-6)
    # the head's scores relative to the 6th are what the predictions sum
    head = top.head_only(scores)
    assert np.all(head[tail] == scores[order[5]]) and np.all(head[order[:5]] == scores[order[:5]])
    # a fraction of N, k >= N (plain LDS), the column and errors
    assert LDS(top=0.125).head_only(scores).tolist() == head.tolist()
    assert LDS(top=n)(scores, subsets, outputs) == LDS()(scores, subsets, outputs)
    assert (top.column, top.display, top.config) == ("lds@top5", "LDS (top 5)", {"top": 5})
    assert not hasattr(LDS(), "column") and LDS().config == {}
    for bad in (0, -3, 1.5, True, "5", float("nan")):
        with pytest.raises(ValueError):
            LDS(top=bad)
    with pytest.raises(UserError, match="bad options for metric 'lds'"):
        LDSBenchmark("tiny", metrics=[{"name": "lds", "top": 0}])
    b = LDSBenchmark("tiny", metrics=["lds", {"name": "lds", "top": 0.25}])
    assert set(b.metrics) == {"lds", "lds@top0.25"}


def test_metric_is_registered():
    import genattr
    from genattr.harness.manager import registry

    entry = registry("metrics").get("lds")
    assert entry.meta["kind"] == "datamodeling" and entry.meta["higher_is_better"] is True
    assert entry.meta["display"] == "LDS"
    assert isinstance(genattr.get_metric("lds"), LDS)


# -- configuration and cells ------------------------------------------------------------------------------------
def test_subsets_are_a_function_of_seed_and_index():
    a = draw_subsets(0, 40, 5, 0.5)
    assert [s.size for s in a] == [20] * 5 and all(np.all(np.diff(s) > 0) for s in a)
    assert [s.tolist() for s in draw_subsets(0, 40, 8, 0.5)[:5]] == [s.tolist() for s in a]  # a larger M keeps them
    assert a[0].tolist() != draw_subsets(1, 40, 5, 0.5)[0].tolist()
    assert len({tuple(s.tolist()) for s in a}) == 5
    assert draw_subsets(0, 41, 3, 0.25)[0].size == 10  # ⌊β·N⌋
    assert seed_for(7, 0) == 7 and seed_for(7, 1) != seed_for(7, 2)


def test_attenuation_bound():
    assert attenuation_bound(0.36) == pytest.approx(0.6)  # one seed: √ρ
    assert attenuation_bound(0.36, 3) == pytest.approx(math.sqrt(3 * 0.36 / (1 + 2 * 0.36)))  # Spearman-Brown
    assert attenuation_bound(-0.2) == 0.0 and attenuation_bound(1.0, 4) == 1.0


def test_summarize_adds_the_ceiling_rows():
    rows = []
    for q, (a, b, c) in enumerate([(0.5, 0.1, 0.3), (0.3, -0.1, 0.5), (0.4, 0.0, 0.4)]):
        for m, v in (("good", a), ("random", b)):
            rows.append({"benchmark": "lds", "method": m, "metrics": {"lds": v}, "group": {"source": "generated"},
                         "params": {"query": f"q{q:03d}", "source": "generated"},
                         "extra": {"ceiling": c, "train_seeds": 1}})
    long = LDSBenchmark.summarize(rows, numeric=True).set_index("method")
    assert long.loc["good", "mean"] == pytest.approx(0.4) and long.loc["good", "n"] == 3
    assert long.loc[CEILING_ROW, "mean"] == pytest.approx(0.4) and long.loc[CEILING_ROW, "n"] == 3  # once per query
    assert long.loc[BOUND_ROW, "mean"] == pytest.approx(math.sqrt(0.4))
    table = LDSBenchmark.summarize(rows)
    assert table.loc["good", ("lds", "generated")].startswith("0.400 ± ")


def test_config_errors():
    for bad in ({"nonsense": 1}, {"beta": 1.0}, {"beta": 0}, {"subsets": 2}, {"retrain": "both"},
                {"train_seeds": 0}, {"group": "concept"}, {"ceiling": "yes"}, {"metrics": ["delta-loss"]},
                {"n": 2, "beta": 0.4}, {"dataset": "cifar"}):
        with pytest.raises(UserError):
            LDSBenchmark("tiny", **bad)
    with pytest.raises(UserError):
        LDSBenchmark("huge")


def test_cells_per_method_and_query():
    b = LDSBenchmark("tiny", num_queries=3, num_real_queries=2)
    cells = b.cells(["random", "unlearning"])
    assert len(cells) == 2 * 5 and len({c.id for c in cells}) == 10
    c = next(c for c in cells if c.id == "unlearning/r001")
    assert c.params == {"query": "r001", "source": "real"} and c.group == {"source": "real"}
    assert {c.batch for c in cells} == {"random", "unlearning"}  # one attribute call per method
    assert json.loads(json.dumps([c.params for c in cells]))
    per_query = LDSBenchmark("tiny", group="query").cells(["random"])
    assert [c.batch for c in per_query] == [c.id for c in per_query]


def test_paper_preset_is_dtraks_lds():
    cfg = LDSBenchmark("paper").config
    assert (cfg["subsets"], cfg["beta"], cfg["train_seeds"]) == (64, 0.5, 3)
    assert cfg["retrain"] == "independent" and cfg["dataset"] == "mscoco" and cfg["ceiling"] is True


# -- a run through the CLI, counting trainings ------------------------------------------------------------------
@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A cache of this module's own, so trainings can be counted exactly."""
    return tmp_path_factory.mktemp("lds-cache")


@pytest.fixture(scope="module")
def counted_run(fresh_cache, tmp_path_factory):
    """``genattr run lds --scale tiny -m random -m unlearning`` on an empty cache, counting every training."""
    from genattr.cli import main
    from genattr.plugins.models import training

    mp = pytest.MonkeyPatch()
    calls: list[int] = []
    real = training.train

    def counting(model, dataset, config=None):
        calls.append(len(dataset))
        return real(model, dataset, config)

    mp.setattr(training, "train", counting)
    mp.setenv("GENATTR_CACHE", str(fresh_cache))
    out = tmp_path_factory.mktemp("lds-run") / "run"
    try:
        code = main(["run", "lds", "--scale", "tiny", "-m", "random", "-m", "unlearning", "--out", str(out), "-q",
                     "--no-leaderboard", "--device", "cpu"])
        first = list(calls)
        calls.clear()
        # another method on the same directory: nothing is trained again
        code2 = main(["run", "lds", "--scale", "tiny", "-m", "pixel", "--out", str(out), "-q", "--no-leaderboard",
                      "--device", "cpu"])
        second = list(calls)
        calls.clear()
        # the first command again: every cell is finished, nothing runs
        code3 = main(["run", "lds", "--scale", "tiny", "-m", "random", "-m", "unlearning", "--out", str(out), "-q",
                      "--no-leaderboard", "--device", "cpu"])
        third = list(calls)
    finally:
        mp.undo()
    return {"codes": (code, code2, code3), "trainings": (first, second, third), "out": out}


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_cli_run_writes_lds_rows(counted_run):
    assert counted_run["codes"] == (0, 0, 0)
    rows = _rows(counted_run["out"])
    q = SCALES["tiny"]["num_queries"]
    assert sorted({r["method"] for r in rows}) == ["pixel", "random", "unlearning"]
    assert len(rows) == 3 * q  # the third command added nothing
    for r in rows:
        v = r["metrics"]["lds"]
        assert v is not None and -1.0 <= v <= 1.0
        ex = r["extra"]
        assert len(ex["predictions"]) == len(ex["outputs"]) == TINY_M
        assert spearman(ex["predictions"], -np.asarray(ex["outputs"])) == pytest.approx(v)  # from the row alone
        assert r["params"]["source"] == "generated" and r["group"] == {"source": "generated"}
    # every method saw the same outputs for the same query (the subset models are shared)
    by_q: dict = {}
    for r in rows:
        by_q.setdefault(r["params"]["query"], []).append(r["extra"]["outputs"])
    assert all(all(o == outs[0] for o in outs) for outs in by_q.values())
    doc = json.loads((counted_run["out"] / "run.json").read_text())
    prov = doc["benchmarks"]["lds"]["provenance"]
    assert prov["M"] == TINY_M and prov["retrain"] == "independent" and prov["beta"] == 0.5
    assert len(prov["subsets"]) == TINY_M and all(len(s["sha256"]) == 64 for s in prov["subsets"])
    assert prov["ceiling"] is None and prov["subset_models"]["models"] == TINY_M
    info = doc["benchmarks"]["lds"]["metric_info"]["lds"]
    assert info == {"metric": "lds", "display": "LDS", "higher_is_better": True, "unit": None}


def test_subset_models_are_trained_once_for_every_method(counted_run):
    first, second, third = counted_run["trainings"]
    n = SCALES["tiny"]["n"] or genattr.model_recipe(SCALES["tiny"]["model"], "tiny", SCALES["tiny"]["dataset"])[
        "dataset"]["n"]  # the preset takes the model recipe's N
    half = int(n * SCALES["tiny"]["beta"])
    assert sorted(first) == sorted([n] + [half] * TINY_M)  # θ0, then one model per subset for both methods
    assert second == [] and third == []  # a third method and the resumed run train nothing


def test_resume_skips_finished_cells(counted_run):
    doc = json.loads((counted_run["out"] / "run.json").read_text())
    inv = doc["invocations"]
    q = SCALES["tiny"]["num_queries"]
    assert [i["cells_run"] for i in inv] == [2 * q, q, 0]
    assert inv[-1]["cells_skipped"] == 2 * q


def test_leaderboard_reads_the_rows(counted_run, tmp_path):
    from genattr.harness.leaderboard.model import summarise
    from genattr.harness.leaderboard.runs import load

    rows, runs = load([counted_run["out"]])
    boards = summarise(rows, runs)
    board = next(b for b in boards if b.benchmark == "lds")
    assert "lds" in board.columns and board.columns["lds"].higher_is_better is True
    assert set(board.method_names.values()) == {"random", "unlearning", "pixel"}
    table = LDSBenchmark.summarize(_rows(counted_run["out"]))
    assert ("lds", "generated") in table.columns and set(table.index) == {"random", "unlearning", "pixel"}


# -- the sign on a planted case ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(counted_run, fresh_cache):
    """The tiny preset's subset models (from the run above) and queries copied from training images."""
    b = LDSBenchmark("tiny")
    env = RunEnv(cache=Cache(str(fresh_cache)), seed=0, scale="tiny")
    st = b._setup(env)
    counts = st.membership.sum(axis=0)
    items = [i for i in range(len(st.train)) if 0 < counts[i] < TINY_M][:8]
    queries = []
    for i in items:
        ex = st.train.item(i)
        queries.append(Query(id=f"train-{ex.id}", image=ex.image, prompt=ex.captions[0], meta={"source": "train"}))
    outputs, info = b.subset_outputs(env, st, queries, st.subsets, 1)
    assert info["trained"] == 0  # the run's subset models, loaded
    return b, st, items, outputs[0]


def test_planted_query_holding_subsets_have_lower_loss(planted):
    """A query copied from training image i: the models trained on subsets holding i reproduce it better, and a method
    that ranks i first gets LDS > 0."""
    b, st, items, outputs = planted
    gaps, values = [], []
    for k, i in enumerate(items):
        f = outputs[:, k]
        hold = st.membership[:, i]
        gaps.append(f[hold].mean() - f[~hold].mean())
        scores = np.zeros(len(st.train))
        scores[i] = 1.0  # the fake method: the query's own source first, everything else tied below
        values.append(LDS()(scores, st.membership, f))
    assert np.mean(gaps) < 0 and sum(g < 0 for g in gaps) >= 0.75 * len(gaps), gaps
    assert np.mean(values) > 0 and sum(v > 0 for v in values) >= 0.75 * len(values), values


def test_random_lds_is_near_zero(planted):
    """Random scores: LDS ≈ 0 over many (query, draw) pairs, within what the noise allows (Spearman over M subsets
    has standard deviation 1/√(M−1) under independence)."""
    import genattr
    from genattr.harness.api import AttributionContext

    b, st, items, outputs = planted
    ctx = AttributionContext(model=None, train_set=st.train, cache=None, seed=0)
    values = []
    for salt in range(10):
        m = genattr.get_method("random", salt=str(salt))
        scores = m.attribute(ctx, [Query(id=f"train-{k}", image=None, prompt="") for k in range(len(items))])
        values += [LDS()(scores[k], st.membership, outputs[:, k]) for k in range(len(items))]
    values = np.asarray(values)
    bound = 4.0 / math.sqrt(TINY_M - 1) / math.sqrt(values.size)
    assert abs(values.mean()) < bound, (values.mean(), bound)
    assert values.min() < 0 < values.max()


# -- the ceiling ------------------------------------------------------------------------------------------------
def test_ceiling_trains_a_second_seed_once(counted_run, fresh_cache, monkeypatch):
    """``ceiling = true`` trains each subset again with training seed 1 (cached) and records, per query, the
    Spearman correlation of the two seeds' outputs."""
    from genattr.plugins.models import training

    calls = []
    real = training.train
    monkeypatch.setattr(training, "train", lambda m, d, c=None: calls.append(dict(c or {})) or real(m, d, c))
    env = RunEnv(cache=Cache(str(fresh_cache)), seed=0, scale="tiny")
    b = LDSBenchmark("tiny", subsets=3, ceiling=True)  # the first 3 subsets of the run: seed 0 is cached
    prov = b.setup(env)
    assert len(calls) == 3 and {c["seed"] for c in calls} == {seed_for(0, 1)}
    c = prov["ceiling"]
    assert c["n"] == SCALES["tiny"]["num_queries"] and c["seeds"] == [0, seed_for(0, 1)]
    assert all(-1.0 <= v <= 1.0 for v in c["per_query"].values())
    assert c["bound"] == pytest.approx(math.sqrt(max(c["mean"], 0.0)))
    assert prov["subset_models"] == {**prov["subset_models"], "models": 6, "trained": 3}
    calls.clear()
    again = LDSBenchmark("tiny", subsets=3, ceiling=True).setup(env)
    assert calls == [] and again["ceiling"]["per_query"] == c["per_query"]
    assert again["subset_models"]["outputs_cached"] == 6
