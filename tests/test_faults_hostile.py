"""Hostile input and a hostile machine: every probe ends in one line naming the cause and the fix (exit 2 for the
user's mistakes, 1 for faults of the environment or of a plugin), nothing finished is lost, ``run.json`` tells the
truth, no temporary file is left, and a re-run completes as an uninterrupted run does."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import test_runner_fakes as fakes
from genattr.harness import results
from genattr.harness import run as runner
from genattr.harness.errors import EnvironmentFault, PluginFault, UserError

TESTS = os.path.dirname(os.path.abspath(fakes.__file__))


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    fakes.install()
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "computed.jsonl"))
    monkeypatch.delenv("FAKE_ACTION", raising=False)
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    try:
        yield tmp_path / "computed.jsonl"
    finally:
        fakes.uninstall()


def _spec(tmp_path, out="out", methods=("fake-good",), sets=(), **kw):
    return runner.build_spec(["fake-bench"], list(methods), scale="tiny", sets=list(sets), out=str(tmp_path / out),
                             device="cpu", quiet=True, cache_root=str(tmp_path / "cache"), **kw)


def _metrics(directory):
    return {r["cell_id"]: r["metrics"] for r in results.read_rows(directory)}


def _status(directory):
    return json.loads((directory / "run.json").read_text())["status"]


def _env(tmp_path, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [TESTS, env.get("PYTHONPATH", "")] if p)
    env["GENATTR_CACHE"] = str(tmp_path / "cache")
    for k in ("FAKE_ACTION", "FAKE_SLEEP"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cli(tmp_path, *args, timeout=120, **env):
    cmd = [sys.executable, "-c", fakes.BOOT, *map(str, args)]
    return subprocess.run(cmd, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("genattr:") or "Traceback" in ln]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [ln for ln in lines if ln.startswith("genattr: error:")]
    assert len(errors) == 1, stderr[-2000:]
    return errors[0]


# -- 1. the run directory deleted during the run ------------------------------------------------------------------
def test_deleting_out_during_a_run_stops_with_one_line_and_a_rerun_completes(fake_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ACTION", "fake-good/K1/q2:rmout")
    with pytest.raises(EnvironmentFault, match="deleted or replaced during the run"):
        runner.run(_spec(tmp_path))
    assert not (tmp_path / "out").exists()  # never recreated behind the user's back (media, run.json)
    monkeypatch.delenv("FAKE_ACTION")
    again = runner.run(_spec(tmp_path))
    assert again.cells_run == 6 and _status(tmp_path / "out") == "complete"
    runner.run(_spec(tmp_path, out="straight"))
    assert _metrics(tmp_path / "out") == _metrics(tmp_path / "straight")


# -- 2. a full disk under the cache -----------------------------------------------------------------------------
def test_a_full_disk_inside_a_cache_write_is_one_line(tmp_path):
    from genattr.harness.cache import Cache

    cache = Cache(tmp_path / "cache")

    class SafetensorError(Exception):  # what safetensors raises for ENOSPC: not an OSError
        pass

    def create(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    with pytest.raises(EnvironmentFault) as err:
        cache.get_or_create("ns", "k" * 64, create)
    assert "\n" not in str(err.value) and "disk full" in str(err.value) and "GENATTR_CACHE" in str(err.value)
    assert not list((tmp_path / "cache" / ".tmp").iterdir())  # the half-written entry is gone


# -- 3. a full disk under --out ----------------------------------------------------------------------------------
def test_a_full_disk_at_the_final_run_json_is_one_line_and_rows_are_kept(fake_plugins, tmp_path, monkeypatch):
    from genattr.harness.run import driver

    real = driver.write_run
    calls = []

    def write_run(directory, doc):
        calls.append(doc["status"])
        if doc["status"] != "running":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, doc)

    monkeypatch.setattr(driver, "write_run", write_run)
    with pytest.raises(EnvironmentFault, match="disk full while writing .*run.json"):
        runner.run(_spec(tmp_path))
    assert len(results.read_rows(tmp_path / "out")) == 6  # every row kept
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".run-")]
    monkeypatch.setattr(driver, "write_run", real)
    assert runner.run(_spec(tmp_path)).cells_run == 0 and _status(tmp_path / "out") == "complete"


def test_a_full_disk_while_taking_the_lock_is_one_line(fake_plugins, tmp_path, monkeypatch):
    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(EnvironmentFault, match="disk full while writing .*\\.lock"):
        runner.run(_spec(tmp_path))


def test_a_picture_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    import torch
    from PIL import Image

    from genattr.harness.media import save_png

    def save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save)
    assert save_png(tmp_path, torch.zeros(1, 8, 8)) is None
    assert list((tmp_path / "media").iterdir()) == []


# -- 4. a configuration that is not JSON ---------------------------------------------------------------------------
def test_a_configuration_holding_a_set_is_refused_at_creation(fake_plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(fakes.FakeMethod, "__init__",
                        lambda self, bias=1.0: setattr(self, "config", {"bias": float(bias), "ids": {3, 1, 2}}))
    with pytest.raises(UserError, match=r"method fake-good: .* not JSON, at ids: a set"):
        runner.run(_spec(tmp_path))
    assert not (tmp_path / "out").exists()


# -- 7. Ray ----------------------------------------------------------------------------------------------------------
def test_ray_options_are_checked_before_any_work(fake_plugins, tmp_path):
    pytest.importorskip("ray")
    for setting, needle in [("ray.num_cpus=-1", "ray: option 'num_cpus' must be a positive integer"),
                            ("ray.max_retries=-2", "ray: option 'max_retries'"),
                            ("ray.cpus_per_task=0", "ray: option 'cpus_per_task' must be a positive number")]:
        with pytest.raises(UserError, match=needle):
            runner.run(_spec(tmp_path, executor="ray", sets=[setting]))
    assert not (tmp_path / "out").exists()


def test_an_unreachable_ray_address_fails_fast(tmp_path):
    pytest.importorskip("ray")
    import socket

    from genattr.plugins.executors import RayExecutor

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = RayExecutor(address=f"127.0.0.1:{port}", connect_timeout=2)
    t0 = time.perf_counter()
    with pytest.raises(EnvironmentFault, match="cannot reach the Ray cluster"):
        ex._probe()
    assert time.perf_counter() - t0 < 10


class _Ref:
    def __init__(self, fn, task):
        self.fn, self.task = fn, task


class _FakeRay:
    """Enough of Ray's API for the executor: tasks run at ``get``; ``crash`` names tasks whose worker dies."""

    class exceptions:
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            def __init__(self, cause):
                super().__init__("ray::run_task() (pid=1, ip=127.0.0.1)")
                self.cause = cause

            def as_instanceof_cause(self):
                return self

        class WorkerCrashedError(RayError):
            pass

    def __init__(self, crash=()):
        self.crash, self.inited, self.handlers_clobbered = set(crash), False, False

    def is_initialized(self):
        return self.inited

    def init(self, **kw):
        self.inited = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as Ray does
        self.handlers_clobbered = True

    def shutdown(self):
        self.inited = False

    def cluster_resources(self):
        return {"CPU": 2}

    def remote(self, **kw):
        ray = self

        def wrap(fn):
            class Remote:
                @staticmethod
                def remote(task):
                    return _Ref(fn, task)

            return Remote

        return wrap

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        fn, task = ref.fn, ref.task
        if task["cells"][0]["id"] in self.crash:
            raise self.exceptions.WorkerCrashedError("worker died")
        try:
            return fn(task)
        except Exception as exc:
            raise self.exceptions.RayTaskError(exc) from None

    def cancel(self, ref, force=False):
        pass


def test_ray_keeps_genattrs_signal_handlers_and_other_tasks_rows_when_a_worker_dies(fake_plugins, tmp_path,
                                                                                   monkeypatch):
    pytest.importorskip("ray")
    fake = _FakeRay(crash={"fake-good/K1/q1"})
    monkeypatch.setitem(sys.modules, "ray", fake)
    seen = {}
    real_map = None

    from genattr.plugins.executors import RayExecutor

    real_map = RayExecutor.map

    def spy(self, fn, tasks):
        for item in real_map(self, fn, tasks):
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            yield item

    monkeypatch.setattr(RayExecutor, "map", spy)
    with pytest.raises(EnvironmentFault, match="a Ray worker died running fake-bench / fake-good cells"):
        runner.run(_spec(tmp_path, executor="ray"))
    assert fake.handlers_clobbered and seen["handler"] not in (signal.SIG_DFL, None)  # genattr's, restored
    assert len(results.read_rows(tmp_path / "out")) == 5  # every other task's row is kept
    assert _status(tmp_path / "out") == "failed"


def test_ray_reports_the_tasks_own_error_not_rays_header(fake_plugins, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    with pytest.raises(PluginFault, match="fake-bench cell fake-good/K2/q0: RuntimeError: fake failure"):
        runner.run(_spec(tmp_path, executor="ray", sets=["fail_on=fake-good/K2/q0"]))


# -- 8 and 9. plugins that exit, raise or break the contract -------------------------------------------------------
@pytest.mark.parametrize("action, needle", [
    ("exit3", "a plugin called sys.exit(3)"),
    ("score-grad", "returned a tensor that requires grad"),
    ("score-nan", "returned NaN scores"),
    ("score-shape", "returned scores of shape (1, 1), expected (2, 3)"),
])
def test_a_plugin_fault_is_one_line_exit_1_and_keeps_finished_rows(fake_plugins, tmp_path, action, needle):
    out = tmp_path / "out"
    proc = _cli(tmp_path, "run", "fake-bench", "-m", "fake-good", "--scale", "tiny", "--out", out, "--quiet",
                "--no-leaderboard", FAKE_ACTION=f"fake-good/K1/q2:{action}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = _one_line(proc.stderr)
    assert needle in line and "fake-good/K1/q2" in line
    assert [r["cell_id"] for r in results.read_rows(out)] == ["fake-good/K1/q0", "fake-good/K1/q1"]
    assert _status(out) == "failed" and "Traceback" in (out / "errors.log").read_text()


def test_a_metric_that_returns_a_string_is_one_line(fake_plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(fakes.FakeBench, "run_cell", lambda self, cell, method, env: {"score": "high"})
    with pytest.raises(PluginFault, match="metric 'score' is not a number"):
        runner.run(_spec(tmp_path))


@pytest.mark.parametrize("text, needle", [
    (b"out = 7\n[run]\nout = 7\n", "[run] out must be a string"),
    (b'[run]\nexecutor = ["local"]\n', "[run] executor must be a string"),
    (b"[run]\nseed = 1\n\xff\xfe\n", "is not UTF-8 text"),
])
def test_bad_toml_is_one_line(fake_plugins, tmp_path, text, needle):
    f = tmp_path / "c.toml"
    f.write_bytes(text)
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        runner.build_spec(["fake-bench"], ["fake-good"], config_file=str(f))


def test_a_deeply_nested_set_is_one_line(fake_plugins):
    with pytest.raises(UserError, match="nests too deeply|nests deeper"):
        runner.build_spec(["fake-bench"], ["fake-good"], sets=["ks=" + "[" * 5000 + "1" + "]" * 5000])


@pytest.mark.parametrize("name", ["results.jsonl", "run.json"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_results_file_that_is_not_a_file_is_one_line(fake_plugins, tmp_path, name, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).mkdir() if kind == "directory" else os.mkfifo(out / name)
    with pytest.raises(UserError, match=f"{name} is a {'directory' if kind == 'directory' else 'FIFO'}"):
        runner.run(_spec(tmp_path))


# -- 10. SIGHUP, newer rows, a plugin that hangs, an unknown plugin name --------------------------------------------
def test_sighup_ends_the_run_as_interrupted_with_rows_kept(fake_plugins, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", fakes.BOOT, "run", "fake-bench", "-m", "fake-good", "--scale", "tiny", "--out",
           str(out), "--quiet", "--no-leaderboard"]
    proc = subprocess.Popen(cmd, env=_env(tmp_path, FAKE_SLEEP=1.0), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(results.read_rows(out)) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and _status(out) == "interrupted"
    assert len(results.read_rows(out)) >= 2


def test_a_row_of_a_newer_schema_is_refused_by_resume_and_leaderboard(fake_plugins, tmp_path):
    runner.run(_spec(tmp_path))
    path = tmp_path / "out" / results.RESULTS_FILE
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["schema_version"] = 99
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="'schema_version' is 99: written by a newer genattr"):
        runner.run(_spec(tmp_path))
    from genattr.harness import leaderboard

    with pytest.raises(UserError, match="newer genattr"):
        leaderboard.render([tmp_path / "out"], "md")


def test_cell_timeout_stops_a_hanging_plugin_with_one_line(fake_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ACTION", "fake-good/K1/q1:hang")
    t0 = time.perf_counter()
    with pytest.raises(PluginFault, match=r"fake-bench cell fake-good/K1/q1: still running after --cell-timeout 1 s"):
        runner.run(_spec(tmp_path, cell_timeout=1))
    assert time.perf_counter() - t0 < 30
    assert len(results.read_rows(tmp_path / "out")) == 1 and _status(tmp_path / "out") == "failed"
    with pytest.raises(UserError, match="cell timeout must be a positive number"):
        _spec(tmp_path, cell_timeout=0)


def test_an_unknown_plugin_name_in_genattr_load_plugins_warns(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "genattr", "list", "benchmarks"], capture_output=True, text=True,
                          env={**os.environ, "GENATTR_LOAD_PLUGINS": "nosuch"}, timeout=120)
    assert proc.returncode == 0
    assert "GENATTR_LOAD_PLUGINS names 'nosuch', which no installed plugin is" in proc.stderr


# -- the newcomer's trial -----------------------------------------------------------------------------------------
def test_leaderboard_of_a_folder_of_runs_pools_them(fake_plugins, tmp_path):
    runner.run(_spec(tmp_path, out="runs/a"))
    runner.run(_spec(tmp_path, out="runs/b", methods=("fake-bad",)))
    proc = _cli(tmp_path, "leaderboard", tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr
    assert "fake-good" in proc.stdout and "fake-bad" in proc.stdout and "pooling a, b" in proc.stderr


def test_progress_in_a_log_is_not_a_stream_of_redraws(tmp_path):
    import io

    from genattr.harness import progress

    log = io.StringIO()  # not a terminal
    progress.enable(True, log)
    try:
        inner = progress.bar(range(1000), desc="inner")
        assert list(inner) == list(range(1000)) and log.getvalue() == ""  # inner bars: nothing in a log
        outer = progress.outer(1000, "cells")
        for _ in range(1000):
            outer.update(1)
        progress.close_outer()
        assert log.getvalue().count("\r") <= 3  # first, last: not one line per update
    finally:
        progress.enable(True, None)
