"""Statistics behind the summaries and the leaderboard: mean ± s.e., paired bootstrap intervals, separated "best"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genattr.harness import statistics as st


def test_mean_se_known_answers():
    r = st.mean_se([1.0, 2.0, 3.0, 4.0])
    assert r["mean"] == 2.5 and r["n"] == 4
    assert r["se"] == pytest.approx(math.sqrt(5 / 3) / 2)  # sample sd sqrt(5/3), over sqrt(4)
    one = st.mean_se([7.0])
    assert one["mean"] == 7.0 and one["n"] == 1 and math.isnan(one["se"])
    none = st.mean_se([])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["se"])
    # None and NaN are not values: left out and not counted
    assert st.mean_se([1.0, None, float("nan"), 3.0]) == {"mean": 2.0, "se": 1.0, "n": 2}


def test_paired_bootstrap_constant_shift_and_no_difference():
    a = {f"q{i}": float(i) for i in range(10)}
    shifted = {k: v - 0.5 for k, v in a.items()}
    r = st.paired_bootstrap(a, shifted)
    assert r == {"diff": pytest.approx(0.5), "lo": pytest.approx(0.5), "hi": pytest.approx(0.5), "n": 10}
    same = st.paired_bootstrap(a, dict(a))
    assert same["diff"] == 0.0 and same["lo"] == 0.0 and same["hi"] == 0.0


def test_paired_bootstrap_pairs_only_shared_keys_and_ignores_missing_values():
    a = {"x": 1.0, "y": 2.0, "z": 3.0, "only-a": 100.0, "nan": float("nan")}
    b = {"x": 0.0, "y": 0.0, "z": 0.0, "only-b": -100.0, "nan": 0.0}
    r = st.paired_bootstrap(a, b)
    assert r["n"] == 3 and r["diff"] == pytest.approx(2.0)
    assert 1.0 <= r["lo"] <= r["diff"] <= r["hi"] <= 3.0
    one = st.paired_bootstrap({"x": 1.0}, {"x": 0.25})
    assert one["diff"] == 0.75 and one["n"] == 1 and math.isnan(one["lo"]) and math.isnan(one["hi"])
    empty = st.paired_bootstrap({"x": 1.0}, {"y": 1.0})
    assert empty["n"] == 0 and math.isnan(empty["diff"])


def test_paired_bootstrap_interval_matches_the_normal_approximation_and_is_deterministic():
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, size=200)
    a = {i: float(x) for i, x in enumerate(d)}
    b = {i: 0.0 for i in range(200)}
    r = st.paired_bootstrap(a, b, n_boot=20000)
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert r["diff"] == pytest.approx(d.mean())
    assert r["lo"] == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert r["hi"] == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)
    assert st.paired_bootstrap(a, b, n_boot=20000) == r  # same seed, same interval
    assert st.paired_bootstrap(a, b, n_boot=20000, seed=1) != r
    narrow = st.paired_bootstrap(a, b, n_boot=20000, level=0.5)
    assert r["lo"] < narrow["lo"] < narrow["hi"] < r["hi"]
    # the order the keys come in does not matter
    assert st.paired_bootstrap(dict(reversed(list(a.items()))), b, n_boot=20000) == r
    with pytest.raises(ValueError):
        st.paired_bootstrap(a, b, level=1.5)


def test_paired_bootstrap_percentiles_by_hand():
    """The interval is the percentile of the resampled means: reproduce it from the same index matrix."""
    a = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.2}
    b = {"a": 0.3, "b": 0.2, "c": 0.1, "d": 0.6, "e": 0.4}
    r = st.paired_bootstrap(a, b, n_boot=5000, level=0.9, seed=7)
    d = np.array([a[k] - b[k] for k in sorted(a)])
    idx = np.random.default_rng([7, 5]).integers(0, 5, size=(5000, 5), dtype=np.int32)
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.05, 0.95])
    assert (r["lo"], r["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["diff"] == pytest.approx(d.mean()) and r["n"] == 5


def _queries(values):
    return {f"q{i}": v for i, v in enumerate(values)}


def test_best_only_when_separated_from_every_other_method():
    good = _queries([0.90, 0.80, 0.85, 0.95, 0.88, 0.92])
    close = _queries([0.91, 0.79, 0.84, 0.96, 0.87, 0.93])  # within noise of good
    bad = _queries([0.10, 0.20, 0.15, 0.05, 0.12, 0.18])
    rnd = _queries([0.02, 0.05, 0.01, 0.03, 0.04, 0.02])
    sep = st.compare_methods({"good": good, "bad": bad, "random": rnd}, higher_is_better=True)
    assert sep["best"] == "good" and sep["order"] == ["good", "bad", "random"]
    m = sep["methods"]
    assert m["good"]["vs_reference"]["diff"] == pytest.approx(np.mean([0.88, 0.75, 0.84, 0.92, 0.84, 0.90]))
    assert m["good"]["vs_reference"]["lo"] > 0 and m["random"]["vs_reference"] is None
    assert m["good"]["vs_best_other"]["method"] == "bad"  # the runner-up, for the best method
    assert m["bad"]["vs_best_other"]["method"] == "good" and m["bad"]["vs_best_other"]["hi"] < 0
    assert m["good"]["n"] == 6 and m["good"]["se"] > 0
    tied = st.compare_methods({"good": good, "close": close, "random": rnd}, higher_is_better=True)
    assert tied["best"] is None  # good vs close: the interval holds 0
    # lower is better: the same numbers, the other way round
    low = st.compare_methods({"good": good, "bad": bad, "random": rnd}, higher_is_better=False)
    assert low["best"] == "random" and low["order"] == ["random", "bad", "good"]
    unknown = st.compare_methods({"good": good, "bad": bad}, higher_is_better=None)
    assert unknown["best"] is None and unknown["methods"]["good"]["vs_best_other"] is None


def test_no_best_on_too_few_pairs_or_a_single_method():
    a, b = _queries([0.9, 0.8, 0.85, 0.9]), _queries([0.1, 0.2, 0.1, 0.15])
    assert st.compare_methods({"a": a, "b": b}, True)["best"] is None  # 4 < MIN_PAIRS
    assert st.compare_methods({"a": a, "b": b}, True, min_pairs=4)["best"] == "a"
    alone = st.compare_methods({"a": a}, True)
    assert alone["best"] is None and alone["methods"]["a"]["vs_best_other"] is None
    # a method with no values is neither best nor an obstacle
    five = _queries([0.9, 0.8, 0.85, 0.9, 0.95])
    got = st.compare_methods({"a": five, "b": _queries([0.1] * 5), "empty": {}}, True)
    assert got["best"] == "a" and math.isnan(got["methods"]["empty"]["mean"])


def test_excludes_zero():
    assert st.excludes_zero({"lo": 0.1, "hi": 0.3}, True) and not st.excludes_zero({"lo": -0.1, "hi": 0.3}, True)
    assert st.excludes_zero({"lo": -0.3, "hi": -0.1}, False) and not st.excludes_zero({"lo": 0.1, "hi": 0.3}, False)
    assert not st.excludes_zero({"lo": float("nan"), "hi": float("nan")}, True)
    assert not st.excludes_zero({"lo": 0.1, "hi": 0.3}, None) and not st.excludes_zero(None)


def test_statistics_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, genattr.harness.statistics; print('torch' in sys.modules, 'pandas' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]
