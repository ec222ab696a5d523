"""The runner and the results store, with throwaway fake benchmarks and methods (tests/test_runner_fakes.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import test_runner_fakes as fakes
from genattr.harness import results
from genattr.harness import run as runner
from genattr.harness.errors import UserError


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    fakes.install()
    log = tmp_path / "computed.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    try:
        yield log
    finally:
        fakes.uninstall()


def _spec(tmp_path, *benchmarks, methods=("fake-good", "fake-bad"), sets=(), out="out", **kw):
    return runner.build_spec(list(benchmarks) or ["fake-bench"], list(methods), scale="tiny", sets=list(sets),
                             out=str(tmp_path / out), device="cpu", quiet=True,
                             cache_root=str(tmp_path / "cache"), **kw)


def _cells(log):
    return [e["cell"] for e in fakes.read_log(log) if e["event"] == "cell"]


# -- configuration --------------------------------------------------------------------------------------------
def test_default_suite_is_both_benchmarks_small_with_default_methods():
    spec = runner.build_spec()
    assert spec.benchmarks == list(runner.DEFAULT_BENCHMARKS) == ["customized-model", "leave-k-out"]
    assert spec.methods == list(runner.DEFAULT_METHODS) == ["unlearning", "random", "pixel"]
    assert spec.scale == "small" and spec.suite == "default"
    assert spec.out == Path("runs/default-small")
    one = runner.build_spec(["leave-k-out"], scale="tiny")
    assert one.out == Path("runs/leave-k-out-tiny") and one.suite is None


def test_methods_with_scale_presets_record_the_run_scale(fake_plugins, tmp_path):
    """A method resolving presets from the scale records (and hashes) the values its cells use, not its defaults."""
    rows = {}
    for scale in ("tiny", "small"):
        spec = runner.build_spec(["fake-bench"], ["fake-scaled"], scale=scale, out=str(tmp_path / scale),
                                 device="cpu", quiet=True, cache_root=str(tmp_path / "cache"))
        runner.run(spec)
        rows[scale] = results.read_rows(tmp_path / scale)
    for scale, bias in (("tiny", 0.5), ("small", 2.0)):
        assert {json.dumps(r["method_config"]) for r in rows[scale]} == {json.dumps({"scale": scale, "bias": bias})}
    assert not {r["config_hash"] for r in rows["tiny"]} & {r["config_hash"] for r in rows["small"]}
    run_doc = json.loads((tmp_path / "small" / "run.json").read_text())
    assert run_doc["methods"]["fake-scaled"]["configs"]["fake-bench"] == {"scale": "small", "bias": 2.0}
    # an explicit scale is kept
    spec = runner.build_spec(["fake-bench"], ["fake-scaled"], scale="small", sets=["fake-scaled.scale=tiny"],
                             out=str(tmp_path / "explicit"), device="cpu", quiet=True,
                             cache_root=str(tmp_path / "cache"))
    runner.run(spec)
    assert {r["method_config"]["bias"] for r in results.read_rows(tmp_path / "explicit")} == {0.5}


def test_methods_that_take_the_model_get_the_benchmarks_model(fake_plugins, tmp_path):
    """``resolve_config(scale, hint, model=…)`` receives the benchmark's ``preset_model`` (a value calibrated for that
    model is recorded and hashed); methods whose ``resolve_config`` has no ``model`` keyword are called as before; a
    worker resolves the same configuration and refuses another model's."""
    from genattr.harness.run import worker

    spec = runner.build_spec(["fake-model-bench", "fake-bench"], ["fake-model-aware", "fake-scaled"], scale="small",
                             out=str(tmp_path / "out"), device="cpu", quiet=True, cache_root=str(tmp_path / "cache"))
    runner.run(spec)
    got = {(r["benchmark"], r["method"]): r["method_config"] for r in results.read_rows(tmp_path / "out")}
    assert got[("fake-model-bench", "fake-model-aware")] == {"scale": "small", "bias": 6.0, "model": "fake-t2i"}
    assert got[("fake-bench", "fake-model-aware")] == {"scale": "small", "bias": 2.0, "model": None}
    assert got[("fake-model-bench", "fake-scaled")] == got[("fake-bench", "fake-scaled")] == {"scale": "small",
                                                                                              "bias": 2.0}
    task = {"env": {"scale": "small"}, "preset_hint": None, "preset_model": "fake-t2i", "method": "fake-model-aware",
            "method_args": {}, "method_config": got[("fake-model-bench", "fake-model-aware")]}
    assert worker._method_from(task).config["bias"] == 6.0
    with pytest.raises(RuntimeError, match="another configuration"):
        worker._method_from({**task, "preset_model": "another-model"})


def test_a_resumed_run_refuses_a_set_up_that_built_other_artefacts(fake_plugins, tmp_path, monkeypatch):
    """Rows added to a directory must be made with the models its rows were made with: a set-up whose model
    fingerprint differs (a model rebuilt on another machine) stops with one line before any cell, the rows already
    there untouched; the same artefacts resume as before."""
    runner.run(_spec(tmp_path, methods=("fake-good",)))
    before = (tmp_path / "out" / "results.jsonl").read_bytes()
    monkeypatch.setenv("FAKE_MODEL_FP", "e" * 64)
    with pytest.raises(UserError, match=r"models\.fake-model = eeeeeeeeeeee…, but the rows already in .* were "
                                        r"made with mmmmmmmmmmmm…") as e:
        runner.run(_spec(tmp_path, methods=("fake-good", "fake-bad")))
    assert "\n" not in str(e.value)
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == before
    assert not [c for c in _cells(fake_plugins) if c.startswith("fake-bad")]
    monkeypatch.delenv("FAKE_MODEL_FP")
    summary = runner.run(_spec(tmp_path, methods=("fake-good", "fake-bad")))
    assert summary.cells_skipped == summary.cells_total // 2 and summary.cells_run == summary.cells_total // 2
    # a new directory takes the other model; a leaderboard keeps the two apart (their queries share only names):
    # a board each, no cell of the second dropped as a duplicate of the first's
    monkeypatch.setenv("FAKE_MODEL_FP", "e" * 64)
    assert runner.run(_spec(tmp_path, methods=("fake-good",), out="fresh")).cells_run > 0
    from genattr.harness import leaderboard
    from genattr.harness.leaderboard import runs as board_runs

    rows, _ = board_runs.load([tmp_path / "out", tmp_path / "fresh"])
    fresh = [r for r in rows if r["_dir"].endswith("fresh")]
    assert fresh and {r["_artefacts"] for r in fresh} == {"trained elsewhere (fresh)"}
    assert not any("_artefacts" in r for r in rows if r["_dir"].endswith("out"))
    md = leaderboard.render([tmp_path / "out", tmp_path / "fresh"], "md")
    assert "no pack]" in md and "trained elsewhere (fresh)]" in md and "Inputs differ" in md
    assert "Inputs differ" not in leaderboard.render([tmp_path / "out"], "md")


def test_artefact_fingerprints_walk_nested_provenance():
    from genattr.harness.run.provenance import artefact_fingerprints

    prov = {"model_seeds": {"1": {"datasets": {"shapes": "a" * 64}, "models": {"base": "b" * 64},
                                  "customize": {"steps": 800}}},
            "regime": {"passes": True}, "models": {"theta0": "c" * 64}, "n": 4000}
    assert artefact_fingerprints(prov) == {"model_seeds.1.datasets.shapes": "a" * 64,
                                           "model_seeds.1.models.base": "b" * 64, "models.theta0": "c" * 64}


def test_method_seed_sets_the_seed_of_every_method_that_has_one(tmp_path):
    """``--method-seed``: option ``seed`` on each method that takes one (signature or self-validated ``**options``),
    an explicit ``NAME.seed`` wins, deterministic methods are listed, and the default directory is a new one."""
    spec = runner.build_spec(["leave-k-out"], ["unlearning", "random", "pixel", "dtrak"], scale="tiny",
                             sets=["random.seed=3"], method_seed=10)
    seeds = {m: c.get("seed") for m, c in spec.method_configs.items()}
    assert seeds == {"unlearning": 10, "random": 3, "pixel": None, "dtrak": 10}
    assert spec.unseeded == ["pixel"] and spec.method_seed == 10
    assert spec.out == Path("runs/leave-k-out-tiny-mseed10")
    assert runner.build_spec(["leave-k-out"], ["pixel"], scale="tiny").method_configs == {"pixel": {}}
    toml = tmp_path / "run.toml"
    toml.write_text("[run]\nmethod_seed = 5\n")
    assert runner.build_spec(["leave-k-out"], ["random"], scale="tiny", config_file=toml).method_configs == {
        "random": {"seed": 5}}
    for bad in (-1, True, "10"):
        with pytest.raises(UserError, match="method seed must be a non-negative integer"):
            runner.build_spec(["leave-k-out"], ["random"], scale="tiny", method_seed=bad)


def test_a_second_method_seed_changes_only_seeded_methods_and_is_recorded(fake_plugins, tmp_path):
    first = _spec(tmp_path, methods=("fake-scaled", "fake-good"), out="s0")
    second = _spec(tmp_path, methods=("fake-scaled", "fake-good"), out="s7", method_seed=7)
    assert second.unseeded == ["fake-good"]
    runner.run(first)
    runner.run(second)
    rows = {d: {(r["method"], r["cell_id"]): r for r in results.read_rows(tmp_path / d)} for d in ("s0", "s7")}
    assert rows["s0"].keys() == rows["s7"].keys()
    for (m, cell), r in rows["s7"].items():
        r0 = rows["s0"][(m, cell)]
        if m == "fake-good":  # no seed option: the same configuration and values
            assert r["config_hash"] == r0["config_hash"] and r["metrics"] == r0["metrics"]
        else:
            assert r["method_config"]["seed"] == 7 and "seed" not in r0["method_config"]
            assert r["config_hash"] != r0["config_hash"]
    assert any(r["metrics"] != rows["s0"][k]["metrics"] for k, r in rows["s7"].items() if k[0] == "fake-scaled")
    run_doc = json.loads((tmp_path / "s7" / "run.json").read_text())
    assert run_doc["seeds"]["methods"] == 7 and "methods" not in json.loads(
        (tmp_path / "s0" / "run.json").read_text())["seeds"]


def test_a_changed_model_recipe_is_a_new_configuration_not_a_resume(fake_plugins, tmp_path, monkeypatch):
    """The model recipe a benchmark resolves (``resolved_recipe``) is part of its configuration hash: after a
    recipe change the old run directory is not resumed with it, the rows of the two never pool, and run.json
    records the recipe."""
    recipe = {"train": {"steps": 800}}
    monkeypatch.setattr(fakes.FakeBench, "resolved_recipe", lambda self: recipe, raising=False)
    runner.run(_spec(tmp_path, methods=("fake-good",)))
    first = len(_cells(fake_plugins))
    runner.run(_spec(tmp_path, methods=("fake-good",)))
    assert len(_cells(fake_plugins)) == first  # the same recipe: resumed, nothing recomputed
    old_hash = {r["benchmark_config_hash"] for r in results.read_rows(tmp_path / "out")}
    recipe["train"]["steps"] = 1600
    with pytest.raises(UserError, match="results of another configuration"):
        runner.run(_spec(tmp_path, methods=("fake-good",)))  # refused before any cell
    assert len(_cells(fake_plugins)) == first
    runner.run(_spec(tmp_path, methods=("fake-good",), out="new"))
    assert len(_cells(fake_plugins)) == 2 * first  # another recipe: every cell again
    new_hash = {r["benchmark_config_hash"] for r in results.read_rows(tmp_path / "new")}
    assert len(old_hash) == len(new_hash) == 1 and old_hash != new_hash
    doc = json.loads((tmp_path / "new" / "run.json").read_text())
    assert doc["benchmarks"]["fake-bench"]["recipe"] == {"train": {"steps": 1600}}


def test_set_routes_keys_to_benchmarks_methods_and_executor(fake_plugins, tmp_path):
    spec = _spec(tmp_path, "fake-bench", "fake-split", sets=[
        "n_queries=2",                      # bare: every benchmark
        "fake-split.ks=[3, 4]",             # one benchmark, JSON list
        "fake-good.bias=1e-4",              # a method, JSON number
        "fake-bench.deep.name=abc",         # nested key, non-JSON string kept as string
        'local.flag="x"',                   # the executor
    ])
    assert spec.benchmark_configs["fake-bench"] == {"n_queries": 2, "deep": {"name": "abc"}}
    assert spec.benchmark_configs["fake-split"] == {"n_queries": 2, "ks": [3, 4]}
    assert spec.method_configs == {"fake-good": {"bias": 1e-4}, "fake-bad": {}}
    assert spec.executor_config == {"flag": "x"}


@pytest.mark.parametrize("bad, message", [
    ("novalue", "expected key=value"),
    ("=3", "expected key=value"),
    ("fake-bench..x=1", "expected key=value"),
    ("fake-gud.bias=1", "did you mean: fake-good"),
    ("random.seed=1", "method 'random' is not part of this run"),
])
def test_bad_set_is_a_user_error(fake_plugins, tmp_path, bad, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        _spec(tmp_path, sets=[bad])


def test_unknown_names_are_user_errors(fake_plugins, tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'fake-bnch'.*did you mean: fake-bench"):
        _spec(tmp_path, "fake-bnch")
    with pytest.raises(UserError, match="unknown method 'fake-god'"):
        _spec(tmp_path, methods=["fake-god"])
    with pytest.raises(UserError, match="unknown executor"):
        _spec(tmp_path, executor="slurm")


def test_toml_config_file_and_precedence(fake_plugins, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[run]\nbenchmarks = ["fake-split"]\nmethods = ["fake-good"]\nseed = 7\nscale = "small"\n'
        'n_queries = 4\n'.replace('n_queries = 4\n', '') +
        '\n[fake-split]\nn_queries = 4\n\n[fake-good]\nbias = 3.0\n\n[unlearning]\nalpha = 1e-4\n')
    spec = runner.build_spec(config_file=str(cfg), sets=["fake-good.bias=5"], device="cpu")
    assert spec.benchmarks == ["fake-split"] and spec.methods == ["fake-good"]
    assert spec.seed == 7 and spec.scale == "small"
    assert spec.benchmark_configs == {"fake-split": {"n_queries": 4}}
    assert spec.method_configs == {"fake-good": {"bias": 5}}  # --set wins; [unlearning] is not in this run
    spec2 = runner.build_spec(["fake-bench"], ["fake-bad"], config_file=str(cfg), seed=1, scale="tiny")
    assert spec2.benchmarks == ["fake-bench"] and spec2.methods == ["fake-bad"] and spec2.seed == 1
    assert spec2.scale == "tiny"
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(UserError, match="not valid TOML"):
        runner.build_spec(config_file=str(bad))
    with pytest.raises(UserError, match="does not exist"):
        runner.build_spec(config_file=str(tmp_path / "missing.toml"))


# -- running and resuming -------------------------------------------------------------------------------------
def test_run_writes_rows_and_provenance(fake_plugins, tmp_path):
    spec = _spec(tmp_path, "fake-bench", "fake-split")
    summary = runner.run(spec)
    assert (summary.cells_total, summary.cells_run, summary.cells_skipped) == (24, 24, 0)
    rows = results.read_rows(spec.out)
    assert len(rows) == 24 and len({(r["benchmark"], r["cell_id"]) for r in rows}) == 24
    r = rows[0]
    for key in results.ResultRow.__annotations__:
        if key not in ("extra", "pack"):  # optional: extra when run_cell returns it, pack with an imported pack
            assert key in r, key
    assert r["schema_version"] == results.SCHEMA_VERSION
    assert r["method_config"] == {"bias": 1.0} and r["higher_is_better"] == {"score": True, "loss": False}
    assert set(r["metrics"]) == {"score", "loss"} and "noise" in r["extra"]
    assert r["worker"]["executor"] == "local" and r["worker"]["device"] == "cpu"
    run = json.loads((spec.out / "run.json").read_text())
    assert run["status"] == "complete" and run["schema_version"] == results.SCHEMA_VERSION
    assert run["benchmarks"]["fake-bench"]["provenance"]["datasets"] == {"fake-data": "d" * 64}
    assert run["benchmarks"]["fake-bench"]["config"]["n_queries"] == 3
    assert run["methods"]["fake-bad"]["configs"]["fake-bench"] == {"bias": 0.2}
    assert any(p["name"] == fakes.PLUGIN_NAME for p in run["plugins"])
    assert any(p["name"] == "genattr.benchmarks" and p["version"] for p in run["plugins"])
    assert run["environment"]["packages"]["torch"] and run["environment"]["python"]
    assert run["config_hash"] and run["invocations"][-1]["cells_run"] == 24
    # setup ran once per benchmark (local: one process)
    setups = [e for e in fakes.read_log(fake_plugins) if e["event"] == "setup"]
    assert sorted(e["benchmark"] for e in setups) == ["fake-bench", "fake-split"]


def test_rerun_skips_finished_cells_and_extends_with_new_methods(fake_plugins, tmp_path):
    runner.run(_spec(tmp_path, methods=["fake-good"]))
    assert len(_cells(fake_plugins)) == 6
    again = runner.run(_spec(tmp_path, methods=["fake-good"]))
    assert (again.cells_run, again.cells_skipped) == (0, 6)
    assert len(_cells(fake_plugins)) == 6  # nothing recomputed, no setup either
    assert sum(e["event"] == "setup" for e in fakes.read_log(fake_plugins)) == 1
    more = runner.run(_spec(tmp_path, methods=["fake-good", "fake-bad"]))
    assert (more.cells_run, more.cells_skipped) == (6, 6)
    assert all(c.startswith("fake-bad/") for c in _cells(fake_plugins)[6:])
    assert len(results.read_rows(tmp_path / "out")) == 12
    assert len(json.loads((tmp_path / "out" / "run.json").read_text())["invocations"]) == 3


def test_a_different_configuration_never_mixes(fake_plugins, tmp_path):
    runner.run(_spec(tmp_path))
    for change in (dict(sets=["n_queries=2"]), dict(sets=["fake-good.bias=2"]), dict(seed=1)):
        with pytest.raises(UserError, match="another configuration"):
            runner.run(_spec(tmp_path, **change))
    assert len(results.read_rows(tmp_path / "out")) == 12
    # the same change in its own directory is fine
    assert runner.run(_spec(tmp_path, sets=["n_queries=2"], out="other")).cells_run == 8


def test_failing_cell_keeps_finished_rows_and_resumes(fake_plugins, tmp_path):
    from genattr.harness.errors import PluginFault

    with pytest.raises(PluginFault, match=r"fake-bench cell fake-good/K2/q0: RuntimeError: fake failure"):
        runner.run(_spec(tmp_path, methods=["fake-good"], sets=["fail_on=fake-good/K2/q0"]))
    rows = results.read_rows(tmp_path / "out")
    assert [r["cell_id"] for r in rows] == ["fake-good/K1/q0", "fake-good/K1/q1", "fake-good/K1/q2"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"
    log = (tmp_path / "out" / "errors.log").read_text()
    assert "Traceback" in log and "fake failure" in log and "fake-good/K2/q0" in log


def test_bad_benchmark_config_is_a_user_error(fake_plugins, tmp_path):
    with pytest.raises(UserError, match="benchmark 'fake-bench' has no option 'no_such_key' \\(its options: scale"):
        runner.run(_spec(tmp_path, sets=["no_such_key=1"]))
    assert not (tmp_path / "out").exists()  # nothing created for a configuration error


def test_unknown_method_option_is_said_in_the_project_words(fake_plugins, tmp_path):
    with pytest.raises(UserError) as e:
        runner.run(_spec(tmp_path, methods=["fake-good"], sets=["fake-good.nosuchkey=1"]))
    assert str(e.value) == "method 'fake-good' has no option 'nosuchkey' (its options: bias)"
    assert "TypeError" not in str(e.value) and "__init__" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unwritable_out_is_a_user_error(fake_plugins, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to --out"):
        runner.run(_spec(tmp_path, out="file/sub"))


# -- the store ------------------------------------------------------------------------------------------------
def test_truncated_last_line_is_skipped_and_repaired(tmp_path):
    with results.ResultsWriter(tmp_path) as w:
        w.append({"config_hash": "h", "cell_id": "a", "metrics": {"x": 1.0}})
        w.append({"config_hash": "h", "cell_id": "b", "metrics": {"x": float("nan")}})
    path = tmp_path / results.RESULTS_FILE
    with open(path, "ab") as f:
        f.write(b'{"config_hash": "h", "cell_id": "c", "metr')  # a killed writer
    rows = results.read_rows(tmp_path)
    assert [r["cell_id"] for r in rows] == ["a", "b"]
    assert rows[1]["metrics"]["x"] is None  # NaN stored as null: strict JSON
    with results.ResultsWriter(tmp_path) as w:  # the next writer cuts the partial line off first
        w.append({"config_hash": "h", "cell_id": "c", "metrics": {}})
    assert [r["cell_id"] for r in results.read_rows(tmp_path)] == ["a", "b", "c"]
    assert path.read_bytes().endswith(b"}\n") and path.read_bytes().count(b"\n") == 3
    # a complete JSON object without its newline is an unfinished write too
    with open(path, "ab") as f:
        f.write(b'{"config_hash": "h", "cell_id": "d"}')
    assert [r["cell_id"] for r in results.read_rows(tmp_path)] == ["a", "b", "c"]


def test_every_row_is_one_write_with_fsync(tmp_path, monkeypatch):
    calls = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, b: calls.append(("write", bytes(b))) or real_write(fd, b))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", None)) or real_fsync(fd))
    with results.ResultsWriter(tmp_path) as w:
        w.append({"cell_id": "a", "metrics": {"x": 1}})
    assert [c[0] for c in calls] == ["write", "fsync"]
    assert calls[0][1].endswith(b"\n") and calls[0][1].count(b"\n") == 1


# -- ray ------------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_ray_executor_runs_cells_in_workers(fake_plugins, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    tests_dir = os.path.dirname(os.path.abspath(fakes.__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    # a local 2-CPU Ray instance; its workers inherit PYTHONPATH and so find the fake plugins
    spec = _spec(tmp_path, "fake-bench", executor="ray", sets=["ray.num_cpus=2"])
    try:
        summary = runner.run(spec)
    except Exception as exc:  # noqa: BLE001 - Ray's own start-up can time out on a loaded 2-core machine
        import ray

        if ray.is_initialized() or results.read_rows(spec.out):
            raise
        print(f"Ray start-up failed once ({type(exc).__name__}: {exc}); retrying")
        summary = runner.run(spec)
    rows = results.read_rows(spec.out)
    assert summary.cells_run == 12 and len(rows) == 12
    assert {r["worker"]["executor"] for r in rows} == {"ray"}
    worker_pids = {r["worker"]["pid"] for r in rows}
    assert os.getpid() not in worker_pids
    log = fakes.read_log(fake_plugins)
    setups = [e["pid"] for e in log if e["event"] == "setup"]
    assert len(setups) == len(set(setups)) >= 1  # set up once per worker process, never more
    assert worker_pids <= set(setups)
    assert sorted(e["cell"] for e in log if e["event"] == "cell") == sorted(r["cell_id"] for r in rows)
    # same rows (metrics) as a local run
    local = runner.run(_spec(tmp_path, "fake-bench", out="local"))
    assert local.cells_run == 12
    key = lambda r: (r["cell_id"], json.dumps(r["metrics"], sort_keys=True))  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, results.read_rows(tmp_path / "local")))


def test_ray_executor_is_registered_without_importing_ray():
    import subprocess
    import sys

    code = ("import sys; from genattr.harness.manager import registry; r = registry('executors'); "
            "assert 'ray' in r and 'local' in r; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ray_executor_without_ray_is_a_one_line_user_error(monkeypatch):
    import genattr

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(UserError, match=r"install genattr\[ray\]"):
        genattr.get_executor("ray")
