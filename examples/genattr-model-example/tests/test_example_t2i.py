"""Tests of the example-t2i plugin: ``pip install -e ".[test]"``, then ``python -m pytest``.

The model replaces the built-in model in the customized-model, leave-k-out, lds and teacher-agreement
benchmarks (tiny scale, cut to a few queries).

The end-to-end test runs ``genattr run`` in a subprocess, the way a user runs the plugin: through its installed
entry point, with only this plugin loaded (``GENATTR_LOAD_PLUGINS``) and any plugin error fatal
(``GENATTR_STRICT_PLUGINS``). What it trains goes to genattr's cache (``GENATTR_CACHE``, default
``~/.cache/genattr``), so a second run is faster.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

import genattr
from example_t2i import ExampleT2i

NAME = "example-t2i"


def genattr_run(out, *args):
    """``genattr run ARGS --scale tiny --out OUT`` with only this plugin loaded: (result rows, run.json)."""
    if not metadata.entry_points(group="genattr", name=NAME):
        pytest.fail(f"the entry point {NAME!r} is not installed: run `pip install -e .` in this directory first")
    env = {**os.environ, "GENATTR_LOAD_PLUGINS": NAME, "GENATTR_STRICT_PLUGINS": "1"}
    cmd = [sys.executable, "-m", "genattr", "run", *args, "--scale", "tiny", "--out", str(out), "-q",
           "--no-leaderboard"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    # run.json records the plugin and its distribution: the provenance of every number
    plugins = {p["name"]: p for p in run["plugins"]}
    assert NAME in plugins, sorted(plugins)
    assert re.sub(r"[-_.]+", "-", plugins[NAME]["distribution"] or "").lower() == re.sub(r"[-_.]+", "-", NAME).lower()
    return rows, run


#: Every built-in benchmark at its tiny scale, cut to a few queries, with this model instead of the built-in one.
BENCHMARKS = ("customized-model", "leave-k-out", "lds", "teacher-agreement")
CUT = ["--set", "leave-k-out.k=[2]", "--set", "leave-k-out.num_queries=1", "--set", "lds.num_queries=2",
       "--set", "lds.subsets=4", "--set", "teacher-agreement.num_queries=2",
       "--set", 'leave-k-out.metrics=["delta-loss"]']


def test_runs_every_benchmark(tmp_path):
    """The model takes the built-in model's place in all four benchmarks: trained from scratch (θ0 and the
    retrains of leave-K-out and LDS), customized per concept (Customized Model), ranked by an unlearning teacher
    (teacher agreement). Every row comes back finite."""
    args = [*BENCHMARKS, "-m", "random", "-m", "pixel", *CUT]
    for bench in BENCHMARKS:
        args += ["--set", f"{bench}.model={NAME}"]
    rows, run = genattr_run(tmp_path / "run", *args)
    assert {r["benchmark"] for r in rows} == set(BENCHMARKS)
    for row in rows:
        assert row["metrics"] and all(math.isfinite(v) for v in row["metrics"].values()), row
    assert run["benchmarks"]["leave-k-out"]["config"]["model"] == NAME


def test_contract_basics(tmp_path):
    """Losses per example, batch-independent generation, Stable Diffusion's K/V names, save/load, deltas."""
    import torch

    ds = genattr.InMemoryDataset("squares", "1", [f"i{k}" for k in range(6)], torch.rand(6, 3, 8, 8) * 2 - 1,
                                 [("a red square",), ("a blue circle",)] * 3)
    model = ExampleT2i.build(ds, ExampleT2i.recipe("tiny")["model"])
    model.train(ds, {"steps": 2, "batch_size": 4, "lr": 1e-3})
    noise = torch.randn(2, 3, 8, 8)
    assert model.loss(ds.images([0, 1]), ["a red square", "a blue circle"], torch.tensor([10, 500]), noise).shape == (2,)
    a = model.generate(["a red square", "a blue circle"], [1, 2], steps=3)
    assert torch.allclose(a[1], model.generate(["a blue circle"], [2], steps=3)[0], atol=1e-5)
    kv = model.parameters("cross-attn-kv")
    assert kv and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in kv)
    model.save(str(tmp_path / "m"))
    assert ExampleT2i.load(str(tmp_path / "m")).fingerprint == model.fingerprint
    custom = model.customize(ds.subset(["i0", "i1"]), "<v1>", {"steps": 2, "batch_size": 2})
    custom.save_delta(str(tmp_path / "d"))
    assert model.apply_delta(str(tmp_path / "d")).fingerprint == custom.fingerprint
    with pytest.raises(genattr.UserError, match="unknown training option"):
        model.train(ds, {"stpes": 2})
