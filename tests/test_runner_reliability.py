"""Runner faults a user can cause end in one clear line, before any work, and leave nothing behind."""

from __future__ import annotations

import json
import os

import pytest

import genattr
import test_runner_fakes as fakes
from genattr.harness import results
from genattr.harness import run as runner
from genattr.harness.errors import UserError


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    fakes.install()
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "computed.jsonl"))
    try:
        yield tmp_path / "computed.jsonl"
    finally:
        fakes.uninstall()


def _spec(tmp_path, benchmarks=("fake-bench",), methods=("fake-good",), sets=(), device="cpu", out="out"):
    return runner.build_spec(list(benchmarks), list(methods), scale="tiny", sets=list(sets), out=str(tmp_path / out),
                             device=device, quiet=True, cache_root=str(tmp_path / "cache"))


@pytest.mark.parametrize("device, needle", [("cuda", "no CUDA GPU"), ("cuda:3", "no CUDA GPU"),
                                            ("tpu", "unknown --device 'tpu'")])
def test_unavailable_device_is_one_line_before_any_work(fake_plugins, tmp_path, device, needle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=needle):
        runner.run(_spec(tmp_path, device=device))
    assert not (tmp_path / "out").exists()
    assert not fakes.read_log(fake_plugins)  # no setup, no cell


def test_rows_record_the_device_actually_used(fake_plugins, tmp_path):
    runner.run(_spec(tmp_path, device="auto"))
    rows = results.read_rows(tmp_path / "out")
    import torch

    assert {r["worker"]["device"] for r in rows} == {"cuda" if torch.cuda.is_available() else "cpu"}


def test_bad_method_values_are_refused_before_setup(fake_plugins, tmp_path):
    """unlearning validates type and range when created: the run refuses before any benchmark setup."""
    with pytest.raises(UserError, match="alpha"):
        runner.run(_spec(tmp_path, methods=["unlearning"], sets=["unlearning.alpha=abc"]))
    with pytest.raises(UserError, match="steps"):
        runner.run(_spec(tmp_path, methods=["unlearning"], sets=["unlearning.steps=-1"]))
    assert not (tmp_path / "out").exists()
    assert not fakes.read_log(fake_plugins)


@pytest.mark.parametrize("sets, needle", [
    (["customized-model.n_object=-1"], "n_object must be a non-negative integer"),
    (["customized-model.pools=[\"mine\"]"], "pools must be"),
    (["customized-model.metrics=[\"no-such-metric\"]"], "unknown metric 'no-such-metric'"),
])
def test_bad_benchmark_values_are_refused_before_setup(tmp_path, sets, needle):
    with pytest.raises(UserError, match=needle):
        runner.run(_spec(tmp_path, benchmarks=["customized-model"], methods=["random"], sets=sets))
    assert not (tmp_path / "out").exists()


def test_leave_k_out_values_are_refused_before_setup(tmp_path):
    for sets, needle in ((["leave-k-out.num_queries=0"], "num_queries must be a positive integer"),
                         (["leave-k-out.dataset=cifar"], "unknown dataset 'cifar'"),
                         (["leave-k-out.group=sometimes"], "group must be one of")):
        with pytest.raises(UserError, match=needle):
            runner.run(_spec(tmp_path, benchmarks=["leave-k-out"], methods=["random"], sets=sets))
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_the_same_directory_refuses_while_the_first_holds_it(fake_plugins, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242\n")
        f.flush()
        with pytest.raises(UserError, match="another genattr run .*is writing to"):
            runner.run(_spec(tmp_path))
    assert not (out / "results.jsonl").exists() and not fakes.read_log(fake_plugins)
    summary = runner.run(_spec(tmp_path))  # released: the run goes ahead and records its invocation
    assert summary.cells_run == summary.cells_total > 0
    doc = json.loads((out / "run.json").read_text())
    assert len(doc["invocations"]) == 1 and doc["invocations"][0]["pid"] == os.getpid()


@pytest.mark.parametrize("content", ["", "   ", "12ab\n"])
def test_the_refusal_is_one_line_while_the_holder_has_not_written_its_pid(fake_plugins, tmp_path, content):
    """The holder takes the lock before it writes its pid: an empty or partial lock file still gives the one-line
    refusal (it used to raise IndexError — a traceback — when two runs started together)."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(content)
        f.flush()
        with pytest.raises(UserError, match=r"^another genattr run is writing to"):
            runner.run(_spec(tmp_path))
    assert not (out / "results.jsonl").exists()


def test_concurrent_cli_runs_never_compute_a_cell_twice(fake_plugins, tmp_path, monkeypatch):
    """Two `genattr run` on one --out at once: one runs, the other refuses with one line; no cell twice."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(fakes.__file__), FAKE_SLEEP="1.0",
               GENATTR_CACHE=str(tmp_path / "cache"))
    args = [sys.executable, "-c", fakes.BOOT, "run", "fake-bench", "-m", "fake-good", "--scale", "tiny",
            "--out", str(tmp_path / "out"), "-q", "--no-leaderboard", "--device", "cpu"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 2], [0, 0]), outs  # [0, 0] only if the second started after the first had finished
    for p, o in zip(procs, outs):
        if p.returncode == 2:
            assert "another genattr run" in o[1] and len(o[1].strip().splitlines()) == 1
    cells = [e["cell"] for e in fakes.read_log(fake_plugins) if e["event"] == "cell"]
    assert len(cells) == len(set(cells))
    rows = results.read_rows(tmp_path / "out")
    assert len(rows) == len({r["cell_id"] for r in rows}) == 6


def test_the_python_floor_is_the_one_the_code_needs():
    """--config uses tomllib (Python 3.11+): pyproject declares that floor, and this interpreter meets it."""
    import sys
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)
    assert not any(d.startswith("platformdirs") for d in meta["project"]["dependencies"])  # nothing used it


class _HalfDone:
    """A plugin method without ``prepare``."""

    name = "half-done"

    def attribute(self, ctx, queries, candidates=None):  # pragma: no cover - never reached
        raise AssertionError


class _HalfDonePlugin:
    @genattr.hookimpl
    def register_methods(self, register):
        register("half-done", _HalfDone, version="1")


def test_incomplete_method_plugin_is_one_line_before_any_work(tmp_path, capsys):
    from genattr.cli import main

    genattr.register_plugin(_HalfDonePlugin(), "half-done-plugin")
    try:
        with pytest.raises(UserError, match=r"method 'half-done' \(plugin 'half-done-plugin'\) has no prepare\(\)"):
            genattr.get_method("half-done")
        out = tmp_path / "run"
        assert main(["run", "leave-k-out", "-m", "half-done", "--scale", "tiny", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no prepare()" in err[0]
        assert not out.exists()  # refused before the run directory was created
    finally:
        genattr.unregister_plugin("half-done-plugin")


def test_an_invocation_left_running_by_a_kill_is_marked_interrupted_by_the_next_run():
    from types import SimpleNamespace

    from genattr.harness.run.driver import _run_doc

    spec = SimpleNamespace(seed=0, scale="tiny", argv=["run"], executor="local", executor_config={})
    previous = {"invocations": [{"status": "done", "pid": 1}, {"status": "running", "pid": 2}]}
    doc, inv = _run_doc(spec, previous, {}, {}, "now", 4, 0, "0")
    assert [i["status"] for i in doc["invocations"]] == ["done", "interrupted", "running"]
    assert doc["invocations"][-1] is inv and previous["invocations"][1]["status"] == "running"  # not mutated


def test_cli_shows_genattr_python_warnings_as_one_line(capsys):
    import warnings

    from genattr import cli

    cli.main(["list", "executors"])  # installs the CLI's warning display
    capsys.readouterr()
    warnings.showwarning("genattr: runs/x/results.jsonl: skipping unreadable line 9", RuntimeWarning, "f.py", 1)
    assert capsys.readouterr().err == "genattr: warning: runs/x/results.jsonl: skipping unreadable line 9\n"
