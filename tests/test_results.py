"""The results store: rows and run.json are validated when read (the line number in the message), and a failed
append (a full disk) leaves no partial row behind."""

from __future__ import annotations

import errno
import json
import os
import warnings

import pytest

import test_runner_fakes as fakes
from genattr.harness import results
from genattr.harness.errors import EnvironmentFault, UserError


def _row(**over) -> dict:
    """A row as the runner writes it."""
    row = {
        "schema_version": 1, "benchmark": "b", "benchmark_version": "1", "benchmark_config_hash": "b" * 64,
        "method": "m", "method_version": "1", "method_config": {"alpha": 0.1}, "config_hash": "c" * 64,
        "cell_id": "m/q0", "params": {"query": 0}, "group": {"K": 2}, "metrics": {"ap": 0.5, "recall@10": None},
        "higher_is_better": {"ap": True, "recall@10": True}, "seed": 0, "scale": "tiny",
        "timings": {"cell_s": 0.1, "setup_s": 0.0, "group_size": 1},
        "worker": {"executor": "local", "host": "h", "pid": 1, "device": "cpu"},
        "finished_at": "2026-01-01T00:00:00+00:00", "extra": {"ranks": [1, 2]},
    }
    row.update(over)
    return row


# -- the typed check ------------------------------------------------------------------------------------------------
def test_validate_row_accepts_the_runner_layout_and_additions():
    assert results.validate_row(_row()) == []
    assert results.validate_row(_row(extra=[1, "x", None], something_new={"a": 1})) == []  # extra and new keys
    minimal = {"config_hash": "h", "cell_id": "a", "metrics": {}}
    assert results.validate_row(minimal) == []


@pytest.mark.parametrize("change, needle", [
    ({"metrics": [1, 2]}, "'metrics' must be an object"),
    ({"metrics": {"ap": "high"}}, "'metrics' entry 'ap' must be a number or null"),
    ({"metrics": {"ap": True}}, "'metrics' entry 'ap' must be a number or null"),
    ({"cell_id": 7}, "'cell_id' must be a non-empty string"),
    ({"config_hash": None}, "'config_hash' must be a non-empty string"),
    ({"params": "K=2"}, "'params' must be an object"),
    ({"group": [2]}, "'group' must be an object"),
    ({"higher_is_better": {"ap": "yes"}}, "'higher_is_better' entry 'ap' must be true, false or null"),
    ({"seed": "0"}, "'seed' must be an integer"),
    ({"schema_version": 0}, "'schema_version' must be an integer >= 1"),
    ({"method_config": None}, "'method_config' must be an object"),
])
def test_validate_row_names_the_problem(change, needle):
    assert results.validate_row(_row(**change)) == [needle]


def test_validate_row_requires_the_resume_key_and_the_numbers():
    row = _row()
    for key in ("config_hash", "cell_id", "metrics"):
        broken = {k: v for k, v in row.items() if k != key}
        assert results.validate_row(broken) == [f"{key!r} is missing"]
    assert results.validate_row([1, 2]) == ["a row must be a JSON object, not list"]


def test_validate_run():
    assert results.validate_run({"schema_version": 1, "status": "complete", "invocations": [{"argv": []}],
                                 "benchmarks": {"b": {"version": "1"}}, "unknown": 1}) == []
    assert results.validate_run({"status": "complete"}) == ["'schema_version' is missing"]
    assert results.validate_run({"schema_version": 1, "benchmarks": {"b": 1}}) == [
        "'benchmarks' entry 'b' must be an object"]
    assert results.validate_run({"schema_version": 1, "invocations": {}}) == ["'invocations' must be a list"]


# -- reading --------------------------------------------------------------------------------------------------------
def _write_lines(directory, lines: list[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / results.RESULTS_FILE).write_bytes(b"".join(lines))


def _line(row) -> bytes:
    return (json.dumps(row) + "\n").encode()


def test_a_row_that_parses_but_is_invalid_names_file_and_line(tmp_path):
    out = tmp_path / "runs" / "x"
    _write_lines(out, [_line(_row(cell_id=f"m/q{i}")) for i in range(6)] + [_line(_row(metrics=[0.5]))])
    with pytest.raises(UserError) as err:
        results.read_rows(out)
    msg = str(err.value)
    assert msg.startswith(f"{out / results.RESULTS_FILE} line 7: 'metrics' must be an object"), msg
    assert "\n" not in msg
    _write_lines(out, [_line(_row()), _line([1, 2, 3])])
    with pytest.raises(UserError, match="line 2: a row must be a JSON object"):
        results.read_rows(out)


def test_unparseable_lines_are_skipped_as_before(tmp_path):
    """A garbage line in the middle: a warning, skipped; a truncated last line: skipped silently; an invalid row is
    never silently skipped."""
    _write_lines(tmp_path, [_line(_row(cell_id="a")), b"{garbage\n", _line(_row(cell_id="b")), b'{"config_hash": "c'])
    with pytest.warns(RuntimeWarning, match="line 2"):
        assert [r["cell_id"] for r in results.read_rows(tmp_path)] == ["a", "b"]
    _write_lines(tmp_path, [_line(_row(cell_id="a")), b'{"config_hash": "c'])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["cell_id"] for r in results.read_rows(tmp_path)] == ["a"]
    _write_lines(tmp_path, [_line(_row(cell_id="a")), _line({"cell_id": "b", "metrics": {}})])
    with pytest.raises(UserError, match="line 2: 'config_hash' is missing"):
        results.read_rows(tmp_path)


def test_run_json_is_validated_when_read(tmp_path):
    (tmp_path / results.RUN_FILE).write_text(json.dumps({"schema_version": 1, "invocations": "many"}))
    with pytest.raises(UserError) as err:
        results.read_run(tmp_path)
    assert str(tmp_path / results.RUN_FILE) in str(err.value) and "'invocations' must be a list" in str(err.value)
    (tmp_path / results.RUN_FILE).write_text("[1, 2]")
    with pytest.raises(UserError, match="must be a JSON object"):
        results.read_run(tmp_path)


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    fakes.install()
    monkeypatch.delenv("FAKE_LOG", raising=False)
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    try:
        yield
    finally:
        fakes.uninstall()


def _spec(tmp_path, **kw):
    from genattr.harness import run as runner

    return runner.build_spec(["fake-bench"], ["fake-good", "fake-bad"], scale="tiny", out=str(tmp_path / "out"),
                             device="cpu", quiet=True, cache_root=str(tmp_path / "cache"), **kw)


def test_every_row_and_run_json_the_runner_writes_is_valid(fake_plugins, tmp_path):
    from genattr.harness import run as runner

    runner.run(_spec(tmp_path))
    raw = (tmp_path / "out" / results.RESULTS_FILE).read_text().splitlines()
    assert raw and all(results.validate_row(json.loads(line)) == [] for line in raw)
    assert any("extra" in json.loads(line) for line in raw)
    assert results.validate_run(json.loads((tmp_path / "out" / results.RUN_FILE).read_text())) == []
    assert len(results.read_rows(tmp_path / "out")) == len(raw)


def test_resume_refuses_an_invalid_row_with_its_line(fake_plugins, tmp_path):
    from genattr.harness import run as runner

    runner.run(_spec(tmp_path))
    path = tmp_path / "out" / results.RESULTS_FILE
    lines = path.read_text().splitlines(keepends=True)
    bad = json.loads(lines[2])
    bad["metrics"] = "0.5"
    lines[2] = json.dumps(bad) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(UserError, match=r"results\.jsonl line 3: 'metrics' must be an object"):
        runner.run(_spec(tmp_path))


# -- a full disk ----------------------------------------------------------------------------------------------------
def test_full_disk_while_appending_leaves_no_partial_row(tmp_path, monkeypatch):
    out = tmp_path / "runs" / "x"
    with results.ResultsWriter(out) as w:
        w.append(_row(cell_id="a"))
    before = (out / results.RESULTS_FILE).read_bytes()
    real_write = os.write
    calls = []

    def write(fd, data):  # the disk fills up mid-line: a short write, then ENOSPC
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with results.ResultsWriter(out) as w:
        monkeypatch.setattr(os, "write", write)
        with pytest.raises(EnvironmentFault) as err:  # the machine's fault: exit status 1, not 2
            w.append(_row(cell_id="b"))
        monkeypatch.setattr(os, "write", real_write)
        assert str(err.value) == (f"disk full while writing {out / results.RESULTS_FILE}; free space and re-run to "
                                  "resume")
        assert (out / results.RESULTS_FILE).read_bytes() == before  # cut back: no partial row
        w.append(_row(cell_id="c"))  # space freed: the same writer goes on
    assert [r["cell_id"] for r in results.read_rows(out)] == ["a", "c"]


def test_full_disk_at_fsync(tmp_path, monkeypatch):
    with results.ResultsWriter(tmp_path) as w:
        w.append(_row(cell_id="a"))
        before = (tmp_path / results.RESULTS_FILE).read_bytes()
        real_fsync = os.fsync
        state = {"n": 0}

        def fsync(fd):
            state["n"] += 1
            if state["n"] == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(EnvironmentFault, match="disk full while writing"):
            w.append(_row(cell_id="b"))
    assert (tmp_path / results.RESULTS_FILE).read_bytes() == before
