"""The teacher-agreement measure: the mAP(k) metric on planted cases and the benchmark end to end at tiny scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

import genattr
from genattr.harness.errors import UserError

#: A cheap unlearning teacher (and the same options for the method that must then agree with it exactly).
CHEAP = {"steps": 2, "batch": 8, "accumulation": 1, "fisher_samples": 16, "timesteps": 2, "alpha": 1e-2}


# -- the metric ------------------------------------------------------------------------------------------------------
def test_map_k_is_one_for_the_teacher_and_near_chance_for_random():
    rng = np.random.default_rng(0)
    n, k = 200, 20
    metric = genattr.get_metric("teacher-map", k=k)
    assert metric.column == "map@20" and metric.kind == "retrieval" and metric.higher_is_better
    teacher_scores = rng.normal(size=n)
    ranking = np.argsort(-teacher_scores)
    assert metric(teacher_scores, ranking) == 1.0
    assert metric(2 * teacher_scores + 5, ranking) == 1.0  # any monotone transform of the teacher
    assert metric(-teacher_scores, ranking) < 0.1
    rand = [metric(rng.random(n), ranking) for _ in range(300)]
    assert abs(np.mean(rand) - k / n) < 0.04, np.mean(rand)
    assert metric(np.zeros(n), ranking) < k / n  # ties count against the method
    # the relevant set is the teacher's top k only: ranking those k first is enough
    partial = np.zeros(n)
    partial[ranking[:k]] = 1.0
    assert metric(partial, ranking) == 1.0
    # sklearn's average_precision_score of relevance against the method's rank order (FastGDA's compute_map_k)
    from sklearn.metrics import average_precision_score

    s = rng.normal(size=n)
    order = np.argsort(-s)
    y = np.isin(order, ranking[:k]).astype(int)
    assert metric(s, ranking) == pytest.approx(average_precision_score(y, 1.0 / (np.arange(n) + 1)))
    with pytest.raises(ValueError):
        metric(s, ranking[:5])


def test_k_fractions_become_counts_and_columns():
    from genattr.benchmarks.teacher_agreement import k_counts

    assert k_counts([0.01, 0.034, 0.1], 300) == [3, 10, 30]
    assert k_counts([0.0001, 5, 5], 300) == [1, 5]
    with pytest.raises(UserError):
        k_counts([300], 300)
    b = genattr.get_benchmark("teacher-agreement", scale="small")
    assert list(b.metrics) == ["map@3", "map@10", "map@30"] and all(b.metrics.values())
    assert b.metric_info["map@10"]["display"] == "mAP(10)" and b.metric_info["map@10"]["metric"] == "teacher-map"
    p = genattr.get_benchmark("teacher-agreement", scale="paper")
    assert p.config["k"] == [500, 1000, 4000] and p.config["num_queries"] == 110
    with pytest.raises(UserError):
        genattr.get_benchmark("teacher-agreement", scale="tiny", teacher="nope")
    with pytest.raises(UserError):
        genattr.get_benchmark("teacher-agreement", scale="tiny", kk=[1])


# -- the benchmark ---------------------------------------------------------------------------------------------------
def test_end_to_end_tiny_run(tmp_path, session_cache):
    """The teacher itself scores mAP 1 at every k; random sits near chance; every row carries the teacher."""
    from genattr.harness.results import read_rows
    from genattr.harness.run import build_spec, run

    sets = ["teacher-agreement.num_queries=3", f"teacher-agreement.teacher_options={json.dumps(CHEAP)}"]
    sets += [f"unlearning.{k}={json.dumps(v)}" for k, v in CHEAP.items()]
    spec = build_spec(["teacher-agreement"], ["random", "unlearning", "pixel"], scale="tiny", sets=sets,
                      out=str(tmp_path / "run"), quiet=True, cache_root=str(session_cache.root), device="cpu")
    summary = run(spec)
    rows = read_rows(tmp_path / "run")
    assert summary.cells_run == len(rows) == 3 * 3
    cols = ["map@6", "map@12", "map@30"]  # 5, 10, 25 % of N = 120 (the latent tiny recipe's shapes)
    for r in rows:
        assert list(r["metrics"]) == cols and all(0 <= v <= 1 for v in r["metrics"].values())
        assert r["extra"]["N"] == 120 and r["extra"]["k"] == [6, 12, 30] and len(r["extra"]["teacher_top10"]) == 10
    teacher = [r for r in rows if r["method"] == "unlearning"]
    assert all(v == 1.0 for r in teacher for v in r["metrics"].values())
    rnd = np.mean([r["metrics"]["map@12"] for r in rows if r["method"] == "random"])
    assert rnd < 0.6
    assert len({r["extra"]["teacher"] for r in rows}) == 1
    table = genattr.get_benchmark("teacher-agreement", scale="tiny").summarize(rows)
    assert list(table.columns) == cols and table.loc["unlearning", "map@12"].startswith("1.000")
    again = run(build_spec(["teacher-agreement"], ["random", "unlearning", "pixel"], scale="tiny", sets=sets,
                           out=str(tmp_path / "run"), quiet=True, cache_root=str(session_cache.root), device="cpu"))
    assert again.cells_run == 0


def test_new_methods_are_listed():
    from click.testing import CliRunner

    from genattr.cli import cli

    out = CliRunner().invoke(cli, ["list", "methods"]).output
    for name in ("das", "retrac", "distilled"):
        assert f"\n{name} " in out, out
    assert "teacher-agreement" in CliRunner().invoke(cli, ["list", "benchmarks"]).output
    assert "teacher-map" in CliRunner().invoke(cli, ["list", "metrics"]).output
