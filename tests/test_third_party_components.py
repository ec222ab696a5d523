"""A third party's dataset and metrics run inside both built-in benchmarks, chosen by configuration alone.

The example plugin (examples/genattr-plugin-example, installed by CI) registers the dataset ``blobs`` and the
metrics ``precision-at-k`` (retrieval) and ``loss-ratio`` (counterfactual); the benchmarks reach them through the
registries like any built-in.
"""

from __future__ import annotations

import json
import math

import pytest

example = pytest.importorskip("genattr_plugin_example", reason="install examples/genattr-plugin-example")


@pytest.fixture
def example_plugin():
    from genattr.harness.manager import load_plugins, pm, register_plugin, unregister_plugin

    load_plugins()
    if pm.get_plugin("example") is None:
        register_plugin(example, "example")
    try:
        yield
    finally:
        unregister_plugin("example")


def test_the_example_plugin_uses_only_the_top_level_api():
    import inspect
    import re

    src = inspect.getsource(example)
    imports = re.findall(r"^\s*(?:from|import)\s+(genattr[\w.]*)", src, flags=re.M)
    assert imports and set(imports) == {"genattr"}, imports


def test_example_dataset_and_metrics_run_in_both_benchmarks(example_plugin, tmp_path, session_cache):
    from genattr.harness import results
    from genattr.harness.run import build_spec, run

    sets = [
        "customized-model.dataset=blobs",
        'customized-model.metrics=[{"name": "precision-at-k", "k": 5}, "average-precision"]',
        "customized-model.pools=[\"own\"]",
        "leave-k-out.dataset=blobs",
        "leave-k-out.n=40",
        "leave-k-out.k=[3]",
        'leave-k-out.metrics=["delta-loss", "loss-ratio"]',
    ]
    spec = build_spec(["customized-model", "leave-k-out"], ["pixel", "random"], scale="tiny", sets=sets,
                      out=str(tmp_path / "out"), device="cpu", quiet=True, cache_root=str(session_cache.root))
    summary = run(spec)
    assert summary.cells_run == summary.cells_total > 0
    rows = results.read_rows(tmp_path / "out")
    cm = [r for r in rows if r["benchmark"] == "customized-model"]
    lko = [r for r in rows if r["benchmark"] == "leave-k-out"]
    assert cm and lko
    assert all(set(r["metrics"]) == {"precision@5", "ap"} for r in cm)
    assert all(set(r["metrics"]) == {"delta-loss", "loss-ratio"} for r in lko)
    for r in rows:
        assert all(v is not None and math.isfinite(v) for v in r["metrics"].values()), r["cell_id"]
    # precision@5 ∈ {0, 0.2, …, 1}; the loss ratio is positive and ΔL has the sign of (ratio − 1)
    assert all(abs(r["metrics"]["precision@5"] * 5 - round(r["metrics"]["precision@5"] * 5)) < 1e-9 for r in cm)
    for r in lko:
        assert r["metrics"]["loss-ratio"] > 0
        assert (r["metrics"]["delta-loss"] > 0) == (r["metrics"]["loss-ratio"] > 1)
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    info = doc["benchmarks"]["customized-model"]["metric_info"]
    assert info["precision@5"] == {"display": "Precision@5", "higher_is_better": True, "metric": "precision-at-k",
                                   "unit": None}
    assert doc["benchmarks"]["leave-k-out"]["metric_info"]["loss-ratio"]["metric"] == "loss-ratio"
    prov = doc["benchmarks"]["leave-k-out"]["provenance"]
    assert list(prov["datasets"]) == ["blobs-train"] and prov["n"] == 40
    # the leave-k-out queries come from blobs the training set never saw (the dataset's heldout)
    assert all(int(q["source_id"].split("-")[1]) >= 40 for q in prov["queries"])
    assert "blobs" in doc["benchmarks"]["customized-model"]["provenance"]["datasets"]


def test_a_metric_of_the_wrong_kind_is_refused(example_plugin):
    import genattr

    with pytest.raises(genattr.UserError, match="counterfactual metric"):
        genattr.get_benchmark("customized-model", scale="tiny", metrics=["loss-ratio"])
    with pytest.raises(genattr.UserError, match="retrieval metric"):
        genattr.get_benchmark("leave-k-out", scale="tiny", metrics=["precision-at-k"])
