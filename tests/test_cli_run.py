"""``genattr run`` / ``leaderboard`` / ``attribute`` from the command line: resume after a kill, user mistakes,
lazy imports, single-image attribution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import test_runner_fakes as fakes
from genattr.cli import main
from genattr.harness import results

TESTS = os.path.dirname(os.path.abspath(fakes.__file__))


def _env(tmp_path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [TESTS, env.get("PYTHONPATH", "")] if p)
    env["GENATTR_CACHE"] = str(tmp_path / "cache")
    env.pop("FAKE_SLEEP", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _genattr(*args) -> list[str]:
    return [sys.executable, "-c", fakes.BOOT, *map(str, args)]


RUN = ("run", "fake-bench", "fake-split", "-m", "fake-good,fake-bad", "--scale", "tiny", "--device", "cpu",
       "--quiet")


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    fakes.install()
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "computed.jsonl"))
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    try:
        yield tmp_path / "computed.jsonl"
    finally:
        fakes.uninstall()


# -- resume ---------------------------------------------------------------------------------------------------
def test_killed_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(tmp_path):
    out, log = tmp_path / "interrupted", tmp_path / "computed.jsonl"
    proc = subprocess.Popen(_genattr(*RUN, "--out", out, "--no-leaderboard"),
                            env=_env(tmp_path, FAKE_LOG=log, FAKE_SLEEP=0.25),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(results.read_rows(out)) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no rows appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = {r["cell_id"] for r in results.read_rows(out) if r["benchmark"] == "fake-bench"}
    n_before = len(results.read_rows(out))
    assert 3 <= n_before < 24, "the run was not interrupted mid-way"
    computed_before = len(fakes.read_log(log))
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # killed: never marked complete

    resumed = subprocess.run(_genattr(*RUN, "--out", out), env=_env(tmp_path, FAKE_LOG=log),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{24 - n_before} cells run, {n_before} already finished" in resumed.stderr
    rows = results.read_rows(out)
    assert len(rows) == 24 and len({(r["benchmark"], r["cell_id"]) for r in rows}) == 24
    recomputed = [e for e in fakes.read_log(log)[computed_before:] if e["event"] == "cell"]
    assert len(recomputed) == 24 - n_before
    assert not {e["cell"] for e in recomputed if e["benchmark"] == "fake-bench"} & finished

    straight = tmp_path / "straight"
    clean = subprocess.run(_genattr(*RUN, "--out", straight), env=_env(tmp_path), capture_output=True, text=True,
                           timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert resumed.stdout == clean.stdout and "## fake-bench" in clean.stdout  # the printed leaderboards
    from genattr.harness import leaderboard

    a, b = (json.loads(leaderboard.render([d], "json"))["benchmarks"] for d in (out, straight))
    assert a == b and len(a) == 2


def test_sigterm_stops_like_ctrl_c_and_keeps_finished_rows(tmp_path):
    out = tmp_path / "terminated"
    proc = subprocess.Popen(_genattr("run", "fake-bench", "-m", "fake-good", "--scale", "tiny", "--device", "cpu",
                                     "--quiet", "--out", out), env=_env(tmp_path, FAKE_SLEEP=0.5),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not results.read_rows(out):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    # click reports an interrupt as "aborted" (cli.py's "interrupted" message is what it means)
    assert err.strip().splitlines()[-1] in ("genattr: aborted", "genattr: interrupted; finished work is kept, "
                                            "re-run the same command to resume")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["invocations"][-1]["cells_run"] == len(results.read_rows(out)) >= 1


# -- user mistakes: one line on stderr, exit 2 ----------------------------------------------------------------
@pytest.fixture
def finished_run(fake_plugins, tmp_path):
    out = tmp_path / "done"
    assert main([*RUN, "--out", str(out), "--no-leaderboard"]) == 0
    return out


def _mistakes(tmp_path, done):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "unknown benchmark": ["run", "fake-bnch", "--out", tmp_path / "x"],
        "unknown method": ["run", "fake-bench", "-m", "fake-god", "--out", tmp_path / "x"],
        "negative method seed": ["run", "fake-bench", "-m", "fake-good", "--method-seed", "-1", "--out", tmp_path / "x"],
        "bad --set": ["run", "fake-bench", "-m", "fake-good", "--set", "n_queries", "--out", tmp_path / "x"],
        "bad --set target": ["run", "fake-bench", "-m", "fake-good", "--set", "nobody.x=1"],
        "bad --set key": ["run", "fake-bench", "-m", "fake-good", "--set", "wrong_key=1", "--out", tmp_path / "x"],
        "bad scale": ["run", "fake-bench", "--scale", "huge"],
        "missing config": ["run", "fake-bench", "--config", tmp_path / "nope.toml"],
        "unwritable --out": ["run", "fake-bench", "-m", "fake-good", "--out", blocker / "sub"],
        "other config in --out": ["run", "fake-bench", "-m", "fake-good", "--seed", "3", "--out", done],
        "missing directory": ["leaderboard", tmp_path / "missing"],
        "no results": ["leaderboard", empty],
        "no directory": ["leaderboard"],
        "bad format": ["leaderboard", done, "--format", "pdf"],
        "unwritable leaderboard --out": ["leaderboard", done, "--out", blocker / "sub" / "board.md"],
        "attribute without query": ["attribute", "--dataset", "fake-data", "--method", "fake-pixel", "--out",
                                    tmp_path / "a"],
        "attribute missing model": ["attribute", "--model", tmp_path / "no-model", "--dataset", "fake-data",
                                    "--prompt", "x", "--method", "fake-pixel", "--out", tmp_path / "a"],
        "attribute unknown dataset": ["attribute", "--model", "fake-t2i", "--dataset", "fake-dta", "--prompt", "x",
                                      "--method", "fake-pixel", "--out", tmp_path / "a"],
        "attribute missing image": ["attribute", "--dataset", "fake-data", "--image", tmp_path / "no.png",
                                    "--method", "fake-pixel", "--out", tmp_path / "a"],
    }


def test_every_user_mistake_prints_one_line_and_exits_2(finished_run, tmp_path, capsys):
    capsys.readouterr()
    for what, argv in _mistakes(tmp_path, finished_run).items():
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        assert code == 2, (what, code, captured.err)
        assert len(lines) == 1, (what, captured.err)
        assert "error" in lines[0] and "Traceback" not in captured.err, (what, lines)
        assert captured.out == "", (what, captured.out)
    assert len(results.read_rows(finished_run)) == 24  # the refused run did not touch the directory


def test_user_mistake_in_a_real_process(tmp_path):
    p = subprocess.run(_genattr("run", "fake-bench", "-m", "fake-good", "--set", "fake-good.bias", "--out",
                                tmp_path / "x"), env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["genattr: error: bad --set 'fake-good.bias': expected key=value or "
                                             "NAME.key=value"]


def test_help_imports_no_heavy_library(tmp_path):
    code = ("import sys; from genattr.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['leaderboard', '--help'], ['attribute', '--help']):\n"
            "    assert main(argv) == 0\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'pandas', 'matplotlib', 'ray')"
            " if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--executor" in p.stdout and "--top-k" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "[]"


# -- attribute ------------------------------------------------------------------------------------------------
def test_attribute_generated_query_and_image_file(fake_plugins, tmp_path, capsys):
    out = tmp_path / "attr"
    # a registered adapter name builds a fresh, untrained model: refused unless asked for
    assert main(["attribute", "--model", "fake-t2i", "--dataset", "fake-data", "--prompt", "square 5",
                 "--method", "fake-pixel", "--out", str(out), "--device", "cpu", "-q"]) == 2
    assert "untrained" in capsys.readouterr().err
    assert main(["attribute", "--model", "fake-t2i", "--dataset", "fake-data", "--prompt", "square 5", "--seed",
                 "5", "--method", "fake-pixel", "--top-k", "3", "--out", str(out), "--device", "cpu", "-q",
                 "--allow-untrained"]) == 0
    doc = json.loads((out / "ranking.json").read_text())
    assert [r["rank"] for r in doc["ranking"]] == [1, 2, 3]
    assert doc["ranking"][0]["id"] == "item05"  # the fake model reproduces item seed % 12
    scores = [r["score"] for r in doc["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert doc["query"] == {"prompt": "square 5", "seed": 5, "steps": 50}
    assert doc["dataset"]["size"] == 12 and doc["method"]["name"] == "fake-pixel"
    csv_lines = (out / "ranking.csv").read_text().strip().splitlines()
    assert csv_lines[0] == "rank,index,id,score,caption" and csv_lines[1].startswith("1,5,item05,")
    assert len(csv_lines) == 4
    for png in ("grid.png", "query.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["rank", "score", "id", "caption"] and "item05" in printed[1]
    assert len({line.index("item") for line in printed[1:]}) == 1  # aligned columns

    # the same training image as a file: it ranks itself first (no model needed for a model-free method)
    from PIL import Image

    import numpy as np

    img = fakes.fake_dataset().images([7])[0, 0].numpy()
    Image.fromarray(((img + 1) * 127.5).round().astype(np.uint8), mode="L").save(tmp_path / "q.png")
    out2 = tmp_path / "attr2"
    assert main(["attribute", "--image", str(tmp_path / "q.png"), "--dataset", "fake-data", "--method",
                 "fake-pixel", "--out", str(out2), "--device", "cpu", "-q"]) == 0
    doc2 = json.loads((out2 / "ranking.json").read_text())
    assert doc2["ranking"][0]["id"] == "item07" and doc2["ranking"][0]["score"] == pytest.approx(0.0, abs=1e-6)
    assert len(doc2["ranking"]) == 10


def test_attribute_loads_a_saved_tiny_t2i_directory(fake_plugins, tmp_path):
    tiny = pytest.importorskip("genattr.plugins.models.tiny_t2i")
    model = tiny.TinyT2I.for_dataset(fakes.fake_dataset())
    model.save(str(tmp_path / "model"))
    out = tmp_path / "attr"
    assert main(["attribute", "--model", str(tmp_path / "model"), "--dataset", "fake-data", "--prompt", "square 3",
                 "--seed", "1", "--steps", "2", "--method", "fake-pixel", "--top-k", "4", "--out", str(out),
                 "--device", "cpu", "-q"]) == 0
    doc = json.loads((out / "ranking.json").read_text())
    assert doc["model"]["name"] == "tiny-t2i" and doc["model"]["fingerprint"] == model.fingerprint
    assert len(doc["ranking"]) == 4 and len({r["id"] for r in doc["ranking"]}) == 4


def test_attribute_from_a_run_uses_its_model_and_training_set(tmp_path, capsys):
    """`genattr attribute --run DIR` finds the run's θ0 and training set through the cache, no hand search."""
    run_dir = tmp_path / "run"
    assert main(["run", "leave-k-out", "-m", "random", "--scale", "tiny", "--set", "leave-k-out.num_queries=1",
                 "--set", "leave-k-out.k=[2]", "--out", str(run_dir), "-q", "--no-leaderboard", "--device",
                 "cpu"]) == 0
    run_doc = json.loads((run_dir / "run.json").read_text())
    base_fp = run_doc["benchmarks"]["leave-k-out"]["provenance"]["models"]["base"]
    out = tmp_path / "attr"
    capsys.readouterr()
    assert main(["attribute", "--run", str(run_dir), "--method", "pixel", "--prompt", "the digit 3", "--steps", "5",
                 "--top-k", "5", "--out", str(out), "--device", "cpu", "-q"]) == 0
    doc = json.loads((out / "ranking.json").read_text())
    assert doc["model"]["fingerprint"] == base_fp and doc["source"]["benchmark"] == "leave-k-out"
    assert doc["dataset"]["size"] == run_doc["benchmarks"]["leave-k-out"]["provenance"]["n"]
    assert len(doc["ranking"]) == 5
    # a mismatching dataset is warned about; --run and --model together are refused
    assert main(["attribute", "--run", str(run_dir), "--dataset", "shapes", "--dataset-set", "n=20", "--method",
                 "pixel", "--prompt", "x", "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert "is not the training set" in capsys.readouterr().err
    assert main(["attribute", "--run", str(run_dir), "--model", "tiny-t2i", "--method", "pixel", "--prompt", "x",
                 "--out", str(out)]) == 2
