"""Fault injection at ``tiny`` scale: real ``genattr run`` processes killed with SIGKILL at the run's checkpoints
(``GENATTR_FAULT``, genattr/harness/faults.py), every kind of cache artefact damaged, a read-only cache. After each
fault, re-running the same command must give the rows an uninterrupted run gives.

One uninterrupted run of the two commands below fills a cache (module fixture); every test works on its own copy
of that cache and its own ``--out``, so the tests are independent and each pays only a warm re-run. Most of a
tiny run's time is importing torch and diffusers, so the CI tests start few processes (about ten in all); the
``slow`` ones repeat the same checks one fault per run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genattr.harness import faults
from genattr.harness.cache import MANIFEST, Cache
from genattr.harness.results import RESULTS_FILE, read_rows

#: Both benchmarks with the cheap baselines; kills land in either benchmark.
RUN_A = ["run", "customized-model", "leave-k-out", "-m", "random", "-m", "pixel", "--scale", "tiny",
         "--set", "customized-model.n_object=1", "--set", "customized-model.n_style=1",
         "--set", "customized-model.queries_per_concept=1",
         "--set", "leave-k-out.k=[2]", "--set", "leave-k-out.num_queries=1", "--no-leaderboard"]
#: The methods with cache artefacts of their own (Fisher, θ0 losses, TRAK features and kernel, DataInf gradients) on
#: one customized concept.
RUN_B = ["run", "customized-model", "-m", "unlearning", "-m", "trak", "-m", "datainf", "--scale", "tiny",
         "--set", "customized-model.n_object=1", "--set", "customized-model.n_style=0",
         "--set", "customized-model.queries_per_concept=1", "--no-leaderboard"]

TIMEOUT = 600


def _genattr(args, cache: Path, out: Path, fault: str | None = None, quiet: bool = True):
    env = dict(os.environ)
    env["GENATTR_CACHE"] = str(cache)
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "genattr", *args, "--out", str(out)] + (["-q"] if quiet else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _ok(r) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}"


def _key(row) -> tuple:
    return row["benchmark"], row["cell_id"]


def _result(out: Path) -> dict:
    """What a row must reproduce: everything but timings, worker, pids, times (and ``extra``, which holds timings)."""
    rows = read_rows(out)
    keys = [_key(r) for r in rows]
    assert len(keys) == len(set(keys)), f"a cell was written twice: {sorted(keys)}"
    return {_key(r): {k: r.get(k) for k in ("config_hash", "method", "params", "group", "metrics")} for r in rows}


def entries(cache_root: Path) -> dict[str, list[Path]]:
    """Every entry of a cache, by namespace (``ROOT/<namespace>/<key[:2]>/<key>/``), found by walking it."""
    out: dict[str, list[Path]] = {}
    for man in sorted(cache_root.rglob(MANIFEST)):
        entry = man.parent
        rel = entry.relative_to(cache_root)
        if any(part.startswith(".") for part in rel.parts):  # .tmp, .trash-*
            continue
        out.setdefault(rel.parent.parent.as_posix(), []).append(entry)
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run of RUN_A and RUN_B on an empty cache: the reference rows and a filled cache."""
    root = tmp_path_factory.mktemp("faults")
    cache = root / "cache"
    ref = {}
    for name, args in (("a", RUN_A), ("b", RUN_B)):
        r = _genattr(args, cache, root / name)
        _ok(r)
        ref[name] = _result(root / name)
        assert ref[name], f"run {name} wrote no rows"
    return {"cache": cache, "rows": ref, "entries": entries(cache)}


def _cache_copy(baseline, tmp_path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(baseline["cache"], cache, symlinks=True)
    return cache


# -- the fault hook itself ------------------------------------------------------------------------------------------
def test_checkpoint_parses_its_variable(monkeypatch):
    faults.reset()
    for value in ("", "kill", "kill:", "kill:x:notanumber", "stop:append", "kill:other"):
        monkeypatch.setenv(faults.ENV, value)
        assert not faults.armed("append")
        faults.checkpoint("append")  # never kills
    monkeypatch.setenv(faults.ENV, "kill:append:3")
    assert faults.armed("append") and not faults.armed("setup")
    faults.checkpoint("setup")


@pytest.mark.parametrize("spec, survived", [("kill:here", 0), ("kill:here:3", 2)])
def test_checkpoint_kills_on_the_nth_visit(spec, survived, tmp_path):
    code = ("import sys; from genattr.harness import faults\n"
            "for i in range(5):\n"
            "    faults.checkpoint('elsewhere'); faults.checkpoint('here'); print(i, flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, faults.ENV: spec}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert r.stdout.split() == [str(i) for i in range(survived)]


def test_kill_in_append_leaves_half_a_line_that_resume_cuts_off(tmp_path):
    code = ("import sys; from genattr.harness.results import ResultsWriter\n"
            "with ResultsWriter(sys.argv[1]) as w:\n"
            "    for i in range(3):\n"
            "        w.append({'config_hash': 'h', 'cell_id': f'c{i}', 'metrics': {'x': i}})\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, faults.ENV: "kill:append:2"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    data = (tmp_path / RESULTS_FILE).read_bytes()
    assert data.count(b"\n") == 1 and not data.endswith(b"\n")  # row 1 and half of row 2
    assert [row["cell_id"] for row in read_rows(tmp_path)] == ["c0"]


# -- kill -9 at each checkpoint of a real run ------------------------------------------------------------------------
#: RUN_A runs 4 customized-model cells, then 2 leave-k-out cells; each benchmark is set up once per process.
#: One chain of kills, each resuming the previous one (every process pays the torch/diffusers import, so fewer
#: processes keep the suite short): (checkpoint, visit in that process, rows finished after the kill).
CHAIN = [
    ("between-cells", 2, 2),  # 2 customized-model rows written, the 3rd cell not started
    ("append", 1, 2),  # half of the 3rd row written
    ("setup", 2, 4),  # the rest of customized-model written, leave-k-out set up, none of its cells started
    ("in-cell", 1, 4),  # the first leave-k-out cell scored, its row not written
]


def _not_reached(checkpoint: str, visit: int) -> str:
    return (f"checkpoint({checkpoint!r}) was not reached {visit} time(s): the run finished normally; the runner "
            f"must call genattr.harness.faults.checkpoint({checkpoint!r})")


def _killed(r, checkpoint: str, visit: int) -> None:
    if r.returncode == 0:
        pytest.skip(_not_reached(checkpoint, visit))
    assert r.returncode == -signal.SIGKILL, f"kill:{checkpoint}:{visit}: exit {r.returncode}\n{r.stderr[-3000:]}"


def _finished(out: Path) -> dict:
    return _result(out) if (out / RESULTS_FILE).exists() else {}


def test_kills_at_every_checkpoint_then_resume_gives_the_same_rows(baseline, tmp_path):
    cache, out = _cache_copy(baseline, tmp_path), tmp_path / "out"
    reference = baseline["rows"]["a"]
    for checkpoint, visit, rows_after in CHAIN:
        _killed(_genattr(RUN_A, cache, out, fault=f"kill:{checkpoint}:{visit}"), checkpoint, visit)
        got = _finished(out)
        assert len(got) == rows_after, f"after kill:{checkpoint}:{visit}: {len(got)} rows, expected {rows_after}"
        assert all(reference[k] == v for k, v in got.items()), f"after kill:{checkpoint}:{visit}: other rows"
        if checkpoint == "append":
            assert not (out / RESULTS_FILE).read_bytes().endswith(b"\n"), "the kill in append leaves half a line"
    resumed = _genattr(RUN_A, cache, out)
    _ok(resumed)
    assert f"{CHAIN[-1][2]} already finished" in resumed.stderr, resumed.stderr[-2000:]
    assert _result(out) == reference
    assert (out / RESULTS_FILE).read_bytes().endswith(b"\n")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and len(run["invocations"]) == len(CHAIN) + 1  # killed invocations kept
    assert run["invocations"][-1]["status"] == "complete"


#: One kill per run, each resumed from scratch (the chain above covers every checkpoint in CI).
KILLS = [("setup", 1), ("setup", 2), ("between-cells", 3), ("in-cell", 5), ("append", 4), ("append", 6)]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint, visit", KILLS, ids=[f"{c}-{n}" for c, n in KILLS])
def test_kill_at_checkpoint_then_resume_gives_the_same_rows(baseline, tmp_path, checkpoint, visit):
    cache, out = _cache_copy(baseline, tmp_path), tmp_path / "out"
    _killed(_genattr(RUN_A, cache, out, fault=f"kill:{checkpoint}:{visit}"), checkpoint, visit)
    if checkpoint == "append":
        assert not (out / RESULTS_FILE).read_bytes().endswith(b"\n"), "the kill in append leaves half a line"
    before = len(_finished(out))
    assert before < len(baseline["rows"]["a"])
    resumed = _genattr(RUN_A, cache, out)
    _ok(resumed)
    assert f"{before} already finished" in resumed.stderr, resumed.stderr[-2000:]
    assert _result(out) == baseline["rows"]["a"]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and len(run["invocations"]) == 2  # the killed invocation is kept
    assert run["invocations"][-1]["status"] == "complete"


# -- damaged cache artefacts -----------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(max(16, min(path.stat().st_size, 4096))))


def _biggest_file(entry: Path) -> Path:
    files = [f for f in entry.rglob("*") if f.is_file() and f.name != MANIFEST]
    return max(files, key=lambda f: f.stat().st_size) if files else entry / MANIFEST


DAMAGE = {
    "missing manifest": lambda e: (e / MANIFEST).unlink(),
    "truncated manifest": lambda e: _truncate(e / MANIFEST),
    "garbage manifest": lambda e: _garbage(e / MANIFEST),
    "truncated file": lambda e: _truncate(_biggest_file(e)),
    "garbage file": lambda e: _garbage(_biggest_file(e)),
}
MODES = sorted(DAMAGE)


def _damage_all(cache: Path, mode_of) -> dict[Path, str]:
    damaged = {}
    for i, (ns, items) in enumerate(sorted(entries(cache).items())):
        for j, entry in enumerate(items):
            mode = mode_of(i, j)
            DAMAGE[mode](entry)
            damaged[entry] = mode
    return damaged


def _check_recomputed(baseline, cache: Path, tmp_path: Path, damaged: dict[Path, str]) -> None:
    warned = ""
    for name, args in (("a", RUN_A), ("b", RUN_B)):
        r = _genattr(args, cache, tmp_path / name, quiet=False)
        _ok(r)
        warned += r.stderr
        assert _result(tmp_path / name) == baseline["rows"][name], f"run {name} after damage: other rows"
    lines = [ln for ln in warned.splitlines() if "is unusable" in ln and "moved aside" in ln]
    for entry, mode in damaged.items():
        ns = entry.relative_to(cache).parent.parent.as_posix()
        assert Cache.problem(entry) is None, f"{ns} ({mode}) was not recomputed"
        mine = [ln for ln in lines if f"{ns}/{entry.name[:12]}" in ln]
        assert len(mine) == 1, f"{ns} ({mode}): expected one warning, got {mine}"
    assert len(lines) == len(damaged)
    assert not [p for p in cache.rglob(".trash-*")]


def test_every_cache_artefact_kind_damaged_is_recomputed_with_a_warning(baseline, tmp_path):
    """Every entry of every kind the two runs create damaged (the kinds of damage rotate over the entries), then
    both runs again: the same rows, one warning per entry, every entry whole again."""
    kinds = set(baseline["entries"])
    expected = {"models/trained", "models/customized", "customized-model-queries", "leave-k-out/queries",
                "unlearning/fisher", "unlearning/theta0-losses"}
    assert expected <= kinds, f"the tiny runs no longer create {sorted(expected - kinds)}"
    assert any("gradients" in k or "features" in k for k in kinds), f"no gradient or feature store in {sorted(kinds)}"
    cache = _cache_copy(baseline, tmp_path)
    damaged = _damage_all(cache, lambda i, j: MODES[(i + j) % len(MODES)])
    assert {m for m in damaged.values()} == set(MODES)
    _check_recomputed(baseline, cache, tmp_path, damaged)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_every_cache_artefact_kind_with_each_damage(baseline, tmp_path, mode):
    """Every kind with every kind of damage (the rotation above covers each kind with one)."""
    cache = _cache_copy(baseline, tmp_path)
    _check_recomputed(baseline, cache, tmp_path, _damage_all(cache, lambda i, j: mode))


# -- a cache that cannot be written -----------------------------------------------------------------------------------
#: Runs genattr with every directory creation and rename under GENATTR_CACHE failing as on a read-only file
#: system: root ignores directory permissions, so chmod alone cannot make a cache read-only for it.
READ_ONLY_BOOT = """
import errno, os, sys
root = os.path.abspath(os.environ["GENATTR_CACHE"])
def _under(p):
    return os.path.abspath(os.fspath(p)).startswith(root)
def _guard(real):
    def f(src, *a, **k):
        if _under(src) or (a and isinstance(a[0], (str, os.PathLike)) and _under(a[0])):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(src))
        return real(src, *a, **k)
    return f
os.mkdir, os.rename, os.replace = _guard(os.mkdir), _guard(os.rename), _guard(os.replace)
from genattr.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_read_only_cache_is_one_line_naming_genattr_cache(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    env = {**os.environ, "GENATTR_CACHE": str(cache)}
    env.pop(faults.ENV, None)
    args = [*RUN_A, "--out", str(out), "-q"]
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if root:
        cmd = [sys.executable, "-c", READ_ONLY_BOOT, *args]
    else:
        cache.chmod(0o555)
        cmd = [sys.executable, "-m", "genattr", *args]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        cache.chmod(0o755)
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "GENATTR_CACHE" in lines[0] and str(cache) in lines[0], lines[0]
    assert ("Read-only file system" if root else "Permission denied") in lines[0]
    assert not list(cache.iterdir())
