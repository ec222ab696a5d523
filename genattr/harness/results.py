"""The results store of a run directory: ``DIR/results.jsonl`` (one JSON line per finished cell) and ``DIR/run.json``
(the provenance of everything that wrote into ``DIR``).

Appends are atomic at the line level: each row is one ``os.write`` of one complete line on a descriptor opened with
``O_APPEND``, followed by ``fsync``. A process killed mid-write can at worst leave a truncated last line; readers
skip it and the next writer cuts it off before appending, so a killed run never breaks reading or resuming. A write
that fails (a full disk) is cut back to the file's size before it and reported in one line.
``run.json`` is replaced atomically (written to a temporary file, fsync'd, renamed).

Both are validated when read (:func:`validate_row`, :func:`validate_run`: a typed check of the layouts below, written
as code): a line that parses but does not have the layout is an error naming the file and the line, never silently
half-used by the leaderboard or by resume.

Nothing here imports torch: the leaderboard reads results without models.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, TypedDict

from . import faults
from .cache import hash_json
from .errors import EnvironmentFault, UserError

#: Version of the row and run.json layouts below; bump on any incompatible change.
SCHEMA_VERSION = 1

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


class ResultRow(TypedDict, total=False):
    """One line of ``results.jsonl``: one finished benchmark cell.

    The runner writes every field but ``extra``; readers require ``config_hash``, ``cell_id`` and ``metrics`` (the
    resume key and the numbers) and check the type of every other field that is present (:func:`validate_row`).
    Keys not listed here are allowed (a later writer's additions).
    """

    # Layout version of this row (SCHEMA_VERSION).
    schema_version: int
    # Registered benchmark name and its version, e.g. "leave-k-out", "1".
    benchmark: str
    benchmark_version: str
    # sha256 of the canonical JSON of {benchmark, benchmark_version, benchmark config, seed}.
    benchmark_config_hash: str
    # Registered method name, its version and its resolved configuration (``method.config``).
    method: str
    method_version: str
    method_config: dict
    # sha256 of {benchmark_config_hash, method, method_version, method_config}: the resume key is
    # (config_hash, cell_id); rows with another config_hash are never counted as the same cell.
    config_hash: str
    # The cell: a stable id unique within the benchmark, its JSON parameters, and the leaderboard's group keys
    # (e.g. {"K": 8} or {"split": "artist-style"}).
    cell_id: str
    params: dict
    group: dict
    # {metric column: float or null (NaN/inf are stored as null)} as returned by Benchmark.run_cell.
    metrics: dict
    # {metric column: higher_is_better} (Benchmark.metrics), so the leaderboard marks the best from rows alone.
    higher_is_better: dict
    # Optional JSON the benchmark attached to the cell ("extra" of run_cell), e.g. the top-K ids.
    extra: Any
    # Optional: the hash of the imported artefact pack (genattr pack) every artefact of the benchmark's set-up came
    # from; absent when the artefacts were trained or read from another source.
    pack: str
    # The run seed and the scale the cell ran at.
    seed: int
    scale: str
    # Wall seconds: {"cell_s": running the cell, "setup_s": benchmark setup paid by this cell's worker (0 when
    # the benchmark was already set up in that process)}.
    timings: dict
    # Where it ran: {"executor": "local" | "ray" | ..., "host": hostname, "pid": worker pid, "device": "cpu" | ...}.
    worker: dict
    # UTC ISO-8601 time the row was written by the worker.
    finished_at: str


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def clean_json(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, numpy scalars/arrays as plain Python, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    tolist = getattr(obj, "tolist", None)  # numpy / torch scalars and arrays
    if callable(tolist):
        return clean_json(tolist())
    return str(obj)


def json_problem(obj: Any, path: str = "") -> str | None:
    """Where ``obj`` holds a value a configuration cannot hold — anything but dicts with string keys, lists, tuples,
    strings, numbers, booleans, None and numpy/torch scalars and arrays — as ``"key.sub[2]: a set"``, or None.
    Such a value would be recorded as its ``str()``, which for a set follows the process's hash seed: the
    configuration hash would change on every run and the run could never resume."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{path or 'the configuration'}: key {k!r} is not a string"
            got = json_problem(v, f"{path}.{k}" if path else k)
            if got:
                return got
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            got = json_problem(v, f"{path}[{i}]")
            if got:
                return got
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)) or callable(getattr(obj, "tolist", None)):
        return None
    return f"{path or 'the configuration'}: a {type(obj).__name__} ({str(obj)[:40]})"


def benchmark_config_hash(benchmark: str, version: str, config: dict, seed: int, recipe: dict | None = None) -> str:
    """The benchmark's part of every row's resume and pooling key. ``recipe``: the model recipe the benchmark's
    configuration resolves to (``resolved_recipe()``), so a model whose recipe changed between versions never pools
    or resumes with rows of the old one; None (a benchmark without one) leaves the hash as it was."""
    doc = {"benchmark": benchmark, "version": str(version), "config": config, "seed": int(seed)}
    if recipe is not None:
        doc["recipe"] = recipe
    return hash_json(doc)


def config_hash(bench_hash: str, method: str, version: str, config: dict) -> str:
    return hash_json({"benchmark": bench_hash, "method": method, "version": str(version), "config": config})


# -- validation ----------------------------------------------------------------------------------------------------
# A small typed check instead of a JSON Schema dependency. A spec maps a key to (required, check); a check returns
# None or what is wrong ("must be ..."). Unknown keys are allowed.

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _nonempty_string(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "must be an object"


def _list_of_objects(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list"
    bad = next((i for i, x in enumerate(v) if not isinstance(x, dict)), None)
    return None if bad is None else f"item {bad} must be an object"


def _schema_version(v: Any) -> str | None:
    if not (_is_int(v) and v >= 1):
        return "must be an integer >= 1"
    if v > SCHEMA_VERSION:
        return f"is {v}: written by a newer genattr (this one reads schema {SCHEMA_VERSION}); upgrade genattr"
    return None


def _integer(v: Any) -> str | None:
    return None if _is_int(v) else "must be an integer"


def _values(check_value, what: str):
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return "must be an object"
        bad = next((k for k, x in v.items() if check_value(x) is not None), None)
        return None if bad is None else f"entry {bad!r} must be {what}"

    return check


_number_or_null = _values(lambda x: None if x is None or _is_number(x) else "bad", "a number or null")
_bool_or_null = _values(lambda x: None if x is None or isinstance(x, bool) else "bad", "true, false or null")
_objects = _values(lambda x: None if isinstance(x, dict) else "bad", "an object")

#: The row layout (:class:`ResultRow`): key -> (required, check).
ROW_SPEC: dict[str, tuple[bool, Any]] = {
    "schema_version": (False, _schema_version),
    "benchmark": (False, _nonempty_string),
    "benchmark_version": (False, _string),
    "benchmark_config_hash": (False, _string),
    "method": (False, _nonempty_string),
    "method_version": (False, _string),
    "method_config": (False, _object),
    "config_hash": (True, _nonempty_string),
    "pack": (False, _nonempty_string),
    "cell_id": (True, _nonempty_string),
    "params": (False, _object),
    "group": (False, _object),
    "metrics": (True, _number_or_null),
    "higher_is_better": (False, _bool_or_null),
    "seed": (False, _integer),
    "scale": (False, _string),
    "timings": (False, _number_or_null),
    "worker": (False, _object),
    "finished_at": (False, _string),
    # "extra": anything
}

#: The run.json layout: key -> (required, check). Only ``schema_version`` is required (a run.json is written before
#: the first cell and grows as the run goes); everything the leaderboard or resume reads is type-checked.
RUN_SPEC: dict[str, tuple[bool, Any]] = {
    "schema_version": (True, _schema_version),
    "genattr_version": (False, _string),
    "created_at": (False, _string),
    "updated_at": (False, _string),
    "status": (False, _string),
    "seed": (False, _integer),
    "scale": (False, _string),
    "benchmarks": (False, _objects),
    "methods": (False, _objects),
    "config": (False, _object),
    "config_hash": (False, _string),
    "seeds": (False, _object),
    "plugins": (False, _list_of_objects),
    "environment": (False, _object),
    "executor": (False, _object),
    "invocations": (False, _list_of_objects),
    "timings": (False, _object),
}


def _validate(doc: Any, spec: dict[str, tuple[bool, Any]], what: str) -> list[str]:
    if not isinstance(doc, dict):
        return [f"{what} must be a JSON object, not {type(doc).__name__}"]
    problems = []
    for key, (required, check) in spec.items():
        if key not in doc:
            if required:
                problems.append(f"{key!r} is missing")
            continue
        why = check(doc[key])
        if why is not None:
            problems.append(f"{key!r} {why}")
    return problems


def validate_row(row: Any) -> list[str]:
    """What is wrong with a results row (empty: nothing): a required key missing or a key of the wrong type."""
    return _validate(row, ROW_SPEC, "a row")


def validate_run(doc: Any) -> list[str]:
    """What is wrong with a run.json document (empty: nothing)."""
    return _validate(doc, RUN_SPEC, "run.json")


# -- results.jsonl --------------------------------------------------------------------------------------------------
def _repair_tail(path: Path) -> None:
    """Cut a truncated last line (no trailing newline) left by a killed writer."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # find the last newline
        pos, chunk = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            i = buf.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


class ResultsWriter:
    """Appends rows to ``DIR/results.jsonl``, one complete line per ``write`` + ``fsync``."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / RESULTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, row: dict) -> None:
        """Append ``row`` as one line (one ``os.write`` + ``fsync``). A write that fails leaves the file as it was
        (cut back to its size before) and is a one-line :class:`UserError`."""
        line = (json.dumps(clean_json(row), ensure_ascii=False, allow_nan=False) + "\n").encode()
        before = self._check_linked().st_size
        try:
            if faults.armed("append"):  # the fault suite: a kill here leaves half a line behind
                half = len(line) // 2
                self._write(line[:half])
                faults.checkpoint("append")
                self._write(line[half:])
            else:
                self._write(line)
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
                os.fsync(self._fd)
            where = self.path
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise EnvironmentFault(f"disk full while writing {where}; free space and re-run to resume") from None
            raise UserError(f"cannot write {where}: {exc.strerror or type(exc).__name__}; "
                            "re-run to resume once it is fixed") from None

    def _check_linked(self) -> os.stat_result:
        """The open file's ``fstat``; an :class:`EnvironmentFault` when it is no longer ``DIR/results.jsonl`` (the
        file or its run directory was deleted or replaced during the run): rows must never go to a file nobody can
        read."""
        st = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
            same = st.st_nlink > 0 and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)
        except OSError:
            same = False
        if not same:
            raise EnvironmentFault(f"{self.path} was deleted or replaced during the run (the run directory removed?);"
                                   " the rows written to it are gone — re-run the same command to compute them again")
        return st

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # os.write on a regular file writes everything in one go; loop only for safety
            n = os.write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_rows(directory: str | os.PathLike) -> Iterator[dict]:
    """The rows of ``DIR/results.jsonl``; a truncated or unreadable line is skipped (a warning unless it is the
    unterminated last line a killed run leaves). A line that parses but is not a valid row
    (:func:`validate_row`) is a one-line :class:`UserError` naming the file and the line."""
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        last_unterminated = i == len(lines) - 1  # no newline after it
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if not last_unterminated:
                warnings.warn(f"genattr: {path}: skipping unreadable line {i + 1}", RuntimeWarning, stacklevel=2)
            continue
        if last_unterminated:
            continue  # complete JSON but never terminated: the write did not finish (no fsync'd newline)
        problems = validate_row(row)
        if problems:
            more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" \
                if len(problems) > 1 else ""
            raise UserError(f"{path} line {i + 1}: {problems[0]}{more}; fix or delete that line (the cell is "
                            "then run again)")
        yield row


def read_rows(directory: str | os.PathLike) -> list[dict]:
    return list(iter_rows(directory))


def done_keys(rows: Iterable[dict]) -> set[tuple[str, str]]:
    """The resume keys ``(config_hash, cell_id)`` of finished rows."""
    return {(r.get("config_hash"), r.get("cell_id")) for r in rows}


# -- run.json ------------------------------------------------------------------------------------------------------
def read_run(directory: str | os.PathLike) -> dict | None:
    """``DIR/run.json``, or None when there is none; an unreadable or invalid one (:func:`validate_run`) is a
    one-line :class:`UserError`."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is unreadable ({reason}); move it away to start a new run there") from None
    problems = validate_run(data)
    if problems:
        raise UserError(f"{path}: {problems[0]}; move it away to start a new run there")
    return data


def write_run(directory: str | os.PathLike, run: dict) -> None:
    """Replace ``DIR/run.json`` atomically."""
    directory = Path(directory)
    fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(clean_json(run), f, indent=2, sort_keys=False, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / RUN_FILE)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_writable(directory: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``directory`` if needed and prove it is writable, or raise a one-line :class:`UserError`."""
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot write to {what} {str(directory)!r}: {reason}") from None
    return directory
