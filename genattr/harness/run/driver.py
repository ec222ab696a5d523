"""The driver of ``genattr run``: validate everything, resolve every configuration, enumerate cells, skip the finished
ones, fan groups of cells out through an executor and append every finished cell to the results store.

Order of work (nothing is created on disk until every check has passed): the device; every benchmark's
configuration (its constructor validates types and ranges); every method's configuration for every benchmark —
a fresh instance per (benchmark, method), resolved with ``resolve_config(scale, benchmark.preset_hint)`` (plus
``model=benchmark.preset_model`` when it takes one, :func:`~genattr.harness.api.resolve_method_config`) when the
method has it, so ``run.json`` and every row hold the values the cells use (for example unlearning's ``alpha``);
the executor; the cells. Only then is the run directory created, locked and ``run.json`` written.

Resume: a cell is finished when ``DIR/results.jsonl`` holds a row with the same ``(config_hash, cell_id)``;
``config_hash`` covers the benchmark (name, version, resolved config, seed) and the method (name, version, resolved
config for that benchmark). A run whose configuration differs from what ``DIR`` already holds for the same benchmark
and method is refused with a one-line error (choose another ``--out``): rows of two configurations never mix in one
directory. Adding benchmarks or methods to an existing directory is allowed.

Groups: unfinished cells sharing (benchmark, method, ``Cell.batch``) travel as one task; an in-process executor
(``local``) writes each row as soon as its cell is finished, so an interrupted group keeps what it finished.

Concurrency: a run holds an exclusive lock on ``DIR/.lock`` while it works; a second ``genattr run`` on the same
directory refuses with one line instead of computing the same cells twice.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping

from ..cache import hash_json
from ..errors import EnvironmentFault, PluginFault, UserError, did_you_mean, disk_full
from ..results import (
    SCHEMA_VERSION,
    ResultsWriter,
    benchmark_config_hash,
    check_writable,
    clean_json,
    config_hash,
    json_problem,
    read_rows,
    read_run,
    utc_now,
    write_run,
)
from .config import RunSpec
from .provenance import artefact_fingerprints, environment, plugin_list, resolve_device
from .worker import _WORKER_MEMO, _memo_key, checkpoint, run_task, runtime_plugins

LOCK_FILE = ".lock"
#: Where a run appends the traceback of a plugin's fault (its one-line error points here).
ERRORS_FILE = "errors.log"


# -- components ----------------------------------------------------------------------------------------------------
def _factory_signature(kind: str, name: str):
    from ..manager import registry

    factory = registry(kind + "s").get(name).factory
    target = factory.resolve() if hasattr(factory, "resolve") else factory
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins, C extensions: nothing to check
        return None


def _option_problem(kind: str, name: str, config: Mapping) -> str | None:
    """Why ``config`` cannot be passed to the component's factory (an unknown option), in the project's words."""
    sig = _factory_signature(kind, name)
    if sig is None:
        return None
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None  # the component validates its own options
    known = [p for p, v in params.items() if v.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                          inspect.Parameter.POSITIONAL_OR_KEYWORD) and p != "self"]
    for key in config:
        if key not in known:
            options = f"its options: {', '.join(known)}" if known else "it takes no options"
            return f"{kind} {name!r} has no option {key!r}{did_you_mean(str(key), known)} ({options})"
    return None


def takes_seed(name: str, config: Mapping, seed: int) -> bool:
    """Whether method ``name`` takes a ``seed`` option: from its factory's signature, or — for a factory taking
    ``**options`` that validates them itself — by building it with ``seed`` added (a configuration that fails
    without the seed as well counts as taking it: the run then reports that configuration's own error)."""
    sig = _factory_signature("method", name)
    if sig is None:
        return False
    params = sig.parameters
    if "seed" in params:
        return True
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return False
    try:
        create("method", name, {**config, "seed": seed})
        return True
    except UserError:
        try:
            create("method", name, config)
        except UserError:
            return True
        return False


def create(kind: str, name: str, config: Mapping):
    """A component built from ``(name, config)``: an unknown option or a value the component rejects is a
    one-line :class:`UserError`."""
    import genattr

    getter = {"benchmark": genattr.get_benchmark, "method": genattr.get_method,
              "executor": genattr.get_executor}[kind]
    problem = _option_problem(kind, name, config)
    if problem:
        raise UserError(problem)
    try:
        return getter(name, **copy.deepcopy(dict(config)))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad configuration for {kind} {name!r}: {str(exc).strip().splitlines()[0]}") from None


def metric_info(bench) -> dict[str, dict]:
    """``{column: {"display", "higher_is_better", "metric", "unit"}}`` of a benchmark: its ``metric_info`` when it
    has one, else built from ``metrics`` ({name: bool}, {name: {"higher_is_better": bool}} or a list of names)."""
    declared = getattr(bench, "metric_info", None) or {}
    metrics = getattr(bench, "metrics", {}) or {}
    out: dict[str, dict] = {}
    names = list(metrics) if isinstance(metrics, (Mapping, list, tuple)) else []
    for k in names:
        v = metrics[k] if isinstance(metrics, Mapping) else None
        if isinstance(v, bool) or v is None:
            hib = v
        elif isinstance(v, Mapping):
            hib = v.get("higher_is_better")
            hib = bool(hib) if hib is not None else None
        else:
            hib = getattr(v, "higher_is_better", None)
        info = {"display": str(k), "higher_is_better": hib, "metric": None, "unit": None}
        info.update({a: b for a, b in dict(declared.get(k, {})).items() if b is not None or a not in info})
        out[str(k)] = info
    for k, v in declared.items():
        out.setdefault(str(k), {"display": str(k), "higher_is_better": None, "metric": None, "unit": None,
                                **dict(v)})
    return out


def json_config(owner: str, config) -> dict:
    """``config`` as recorded (:func:`clean_json`), after checking it holds JSON values only: a set, an object or a
    non-string key is a one-line :class:`UserError` naming ``owner`` and the key, never a ``str()`` whose hash
    changes from run to run."""
    problem = json_problem(config or {})
    if problem:
        raise UserError(f"{owner}: the configuration holds a value that is not JSON, at {problem}; use a list, "
                        "a table, a string, a number or a boolean")
    return clean_json(config or {})


def resolve_method(method, scale: str, hint: str | None, name: str | None = None, model: str | None = None) -> dict:
    """The method's configuration for a benchmark: ``resolve_config(scale, hint)`` (with ``model`` when it takes one)
    when it has one, else ``config`` — JSON values only (:func:`json_config`)."""
    from genattr.harness.api import resolve_method_config

    if callable(getattr(method, "resolve_config", None)):
        cfg = resolve_method_config(method, scale, hint, model)
        if cfg is not None and getattr(method, "config", None) is not cfg:
            try:
                method.config = cfg
            except AttributeError:  # pragma: no cover - a read-only config property
                pass
    return json_config(f"method {name or getattr(method, 'name', '?')}", getattr(method, "config", None))


@dataclass
class RunSummary:
    out: Path
    cells_total: int
    cells_skipped: int
    cells_run: int
    wall_s: float
    run: dict


class _Interrupts:
    """SIGTERM (a batch scheduler's stop), SIGINT (Ctrl-C) and SIGHUP (the terminal closed) end the run as
    ``KeyboardInterrupt`` — ``run.json`` says ``interrupted``, the exit status is 130 — but never between writing a
    row and counting it: inside :meth:`critical` the signal is held and raised when it ends."""

    def __init__(self):
        self.depth = 0
        self.pending = False

    def handler(self, signum, frame):
        if self.depth:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise KeyboardInterrupt

    def install(self):
        """Install the handlers; returns the function that restores the previous ones."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
            if sig is None:  # pragma: no cover - not POSIX
                continue
            try:
                previous[sig] = signal.signal(sig, self.handler)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                pass

        def restore():
            for sig, h in previous.items():
                signal.signal(sig, h)

        return restore


@contextlib.contextmanager
def run_lock(directory: Path):
    """An exclusive, non-blocking lock on ``DIR/.lock`` for the duration (POSIX ``flock``; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError):
                # the holder may be between taking the lock and writing its pid (an empty or partial file)
                words = os.pread(fd, 32, 0).decode(errors="replace").split()
                if words and words[0].isdigit():
                    holder = f" (pid {int(words[0])})"
            raise UserError(f"another genattr run{holder} is writing to {directory}; wait for it to finish or use "
                            "another --out") from None
        try:
            pid = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid, 0)  # then cut what an earlier, longer pid left: the file is never empty
            os.ftruncate(fd, len(pid))
        except OSError as exc:
            if disk_full(exc):
                raise EnvironmentFault(f"disk full while writing {path}; free space and re-run to resume") from None
            raise UserError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
        yield
    finally:
        os.close(fd)


def _check_parent_writable(out: Path) -> None:
    """Fail early (before any work) when ``out`` cannot be created, without creating anything."""
    p = out.expanduser()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and (not p.is_dir() or not os.access(p, os.W_OK | os.X_OK)):
        what = "is not a directory" if not p.is_dir() else "is not writable"
        raise UserError(f"cannot write to --out {str(out)!r}: {str(p)!r} {what}")


def _check_run_files(out: Path) -> None:
    """A one-line :class:`UserError` when ``results.jsonl``, ``run.json`` or the lock file of ``out`` exists but is
    not a regular file (a directory, a FIFO — which would block the writer forever — a socket, a device)."""
    import stat

    from ..results import RESULTS_FILE, RUN_FILE

    for name in (RESULTS_FILE, RUN_FILE, LOCK_FILE):
        p = out / name
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UserError(f"cannot read {p}: {exc.strerror or type(exc).__name__}") from None
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "not a regular file")
            raise UserError(f"{p} is {kind}; move it away (or use another --out)")


def _final_write(out: Path, run_doc: dict, failing: bool) -> None:
    """Write ``run.json`` at the end of a run. When it cannot be written the run's own error (``failing``) is the
    one reported — a full disk then says so once — otherwise the write's own: a full disk is an
    :class:`EnvironmentFault`, a removed run directory too."""
    try:
        write_run(out, run_doc)
    except OSError as exc:
        if failing:
            return
        if disk_full(exc):
            raise EnvironmentFault(f"disk full while writing {out / 'run.json'}; free space and re-run the same "
                                   "command (finished rows are kept)") from None
        raise EnvironmentFault(f"cannot write {out / 'run.json'}: {exc.strerror or type(exc).__name__} (was the "
                               "run directory removed?); re-run the same command") from None


def _log_fault(out: Path, exc: BaseException) -> None:
    """Append the traceback behind a :class:`PluginFault` to ``DIR/errors.log`` (the one-line error names it)."""
    import traceback

    cause = exc.__cause__ or exc
    text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    with contextlib.suppress(OSError):
        with open(out / ERRORS_FILE, "a") as f:
            f.write(f"--- {utc_now()} {exc}\n{text}\n")


# -- the run -------------------------------------------------------------------------------------------------------
def _warn_seed_collision(benchmark: str, method: str, bench_config: Mapping, method_config: Mapping) -> None:
    """A method's explicit ``seed`` that is also one of the benchmark's ``model_seeds``: without the option the
    method is seeded by the model seed, so on that model the run repeats the default draws — not a second method
    seed there. Warned (it is a legitimate run), before any cell."""
    seeds = bench_config.get("model_seeds")
    s = method_config.get("seed")
    if isinstance(seeds, list) and isinstance(s, int) and not isinstance(s, bool) and s in seeds:
        from ..progress import warn

        warn("genattr.run", f"{method}.seed={s} is one of {benchmark}'s model_seeds: on model seed {s} the method "
                            f"draws what it draws without the option (the default seed is the model seed); for a "
                            f"second method seed on every model pick a seed outside {seeds}")


def run(spec: RunSpec, *, executor=None, stream=None) -> RunSummary:
    """Run ``spec``: finished cells are skipped, the rest run through the executor and are appended to
    ``spec.out/results.jsonl`` as they finish; ``run.json`` is written at the start and updated at the end."""
    from genattr import __version__

    from .. import progress
    from ..manager import registry

    out = Path(spec.out or spec.default_out()).expanduser()
    started, t_start = utc_now(), time.perf_counter()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a directory")
    if out.is_dir():
        _check_run_files(out)
    previous = read_run(out) or {} if out.is_dir() else {}
    if previous and int(previous.get("schema_version", 0)) > SCHEMA_VERSION:
        raise UserError(f"{out} was written by a newer genattr (schema {previous.get('schema_version')}); "
                        "use another --out")
    _check_parent_writable(out)

    # validate before any work: executor, device, benchmark and method configurations
    if executor is None:
        executor = create("executor", spec.executor, spec.executor_config)
    in_process = bool(getattr(executor, "in_process", False))
    device = resolve_device(spec.device) if in_process else spec.device
    benches = {b: create("benchmark", b, {**spec.benchmark_configs.get(b, {}), "scale": spec.scale})
               for b in spec.benchmarks}

    def version(kind, name, obj):
        return str(getattr(obj, "version", None) or registry(kind).get(name).version)

    # a model without a capability a benchmark needs is refused now, before any training
    from ..models import require_capabilities

    for b, bench in benches.items():
        needs = getattr(bench, "required_model_capabilities", None)
        for model_name, caps in ((needs() or {}).items() if callable(needs) else ()):
            require_capabilities(model_name, caps, f"benchmark {b}")

    bench_info: dict[str, dict] = {}
    for b, bench in benches.items():
        cfg = json_config(f"benchmark {b}", getattr(bench, "config", None)
                          or {**spec.benchmark_configs.get(b, {}), "scale": spec.scale})
        v = version("benchmarks", b, bench)
        info = metric_info(bench)
        resolved = getattr(bench, "resolved_recipe", None)
        recipe = resolved() if callable(resolved) else None
        recipe = None if recipe is None else json_config(f"benchmark {b} (its model recipe)", recipe)
        bench_info[b] = {"version": v, "config": cfg,
                         "config_hash": benchmark_config_hash(b, v, cfg, spec.seed, recipe),
                         **({} if recipe is None else {"recipe": recipe}),
                         "metrics": {k: i["higher_is_better"] for k, i in info.items()}, "metric_info": info,
                         "preset_hint": getattr(bench, "preset_hint", None),
                         "preset_model": getattr(bench, "preset_model", None), "plugin": getattr(bench, "plugin", None)}
    pair: dict[tuple[str, str], dict] = {}  # (benchmark, method) -> {"method", "config", "version", "hash"}
    for b in spec.benchmarks:
        for m in spec.methods:
            method = create("method", m, spec.method_configs.get(m, {}))
            cfg = resolve_method(method, spec.scale, bench_info[b]["preset_hint"], m, bench_info[b]["preset_model"])
            v = version("methods", m, method)
            pair[(b, m)] = {"method": method, "config": cfg, "version": v, "plugin": getattr(method, "plugin", None),
                            "hash": config_hash(bench_info[b]["config_hash"], m, v, cfg)}

    # a method that needs context the benchmark never offers fails now, not after the other methods' cells
    for (b, m), p in pair.items():
        offers = getattr(benches[b], "provides_extra", None)
        needs = getattr(p["method"], "required_extra", None)
        missing = ([k for k in (needs(p["config"]) or ()) if k not in set(offers)]
                   if offers is not None and callable(needs) else [])
        if missing:
            hint = getattr(p["method"], "required_extra_hint", "")
            raise UserError(f"{m} cannot run on {b}: it needs ctx.extra[{missing[0]!r}], which {b} does not "
                            f"offer" + (f"; {hint}" if hint else ""))
        check = getattr(p["method"], "check_benchmark", None)
        if callable(check):
            check(b, bench_info[b]["config"], p["config"])
        _warn_seed_collision(b, m, bench_info[b]["config"], p["config"])

    # never mix configurations in one directory
    existing = read_rows(out) if out.is_dir() else []
    held: dict[tuple[str, str], set[str]] = {}
    for r in existing:
        held.setdefault((r.get("benchmark"), r.get("method")), set()).add(r.get("config_hash"))
    for (b, m), p in pair.items():
        hashes = held.get((b, m))
        if hashes and p["hash"] not in hashes:
            raise UserError(f"{out} already holds {b}/{m} results of another configuration; use a different "
                            f"--out (or remove that directory) to run this one")
    done = {(r.get("config_hash"), r.get("cell_id")) for r in existing}

    # cells → groups → tasks
    plugins = runtime_plugins()
    tasks: list[dict] = []
    total = skipped = 0
    for b, bench in benches.items():
        env_dict = {"seed": spec.seed, "scale": spec.scale, "device": device,
                    "progress": bool(spec.progress and in_process), "cache_root": spec.cache_root,
                    "method_configs": {m: pair[(b, m)]["config"] for m in spec.methods}, "out": str(out),
                    "cell_timeout": getattr(spec, "cell_timeout", None)}
        groups: dict[tuple[str, str], list[dict]] = {}
        seen: set[str] = set()
        for cell in bench.cells(list(spec.methods)):
            if cell.id in seen:
                raise RuntimeError(f"benchmark {b!r} enumerated cell id {cell.id!r} twice")
            seen.add(cell.id)
            if cell.method not in spec.methods:
                raise RuntimeError(f"benchmark {b!r} enumerated a cell for method {cell.method!r}, not in this run")
            total += 1
            if (pair[(b, cell.method)]["hash"], cell.id) in done:
                skipped += 1
                continue
            batch = getattr(cell, "batch", None)
            groups.setdefault((cell.method, batch if batch is not None else f"\x00{cell.id}"), []).append(
                clean_json({"id": cell.id, "method": cell.method, "params": dict(cell.params),
                            "group": dict(cell.group), "batch": batch}))
        for (m, _), cells in groups.items():
            p = pair[(b, m)]
            tasks.append({
                "benchmark": b, "benchmark_version": bench_info[b]["version"],
                "benchmark_args": {**spec.benchmark_configs.get(b, {}), "scale": spec.scale},
                "benchmark_config_hash": bench_info[b]["config_hash"],
                "higher_is_better": bench_info[b]["metrics"],
                "method": m, "method_version": p["version"], "method_args": spec.method_configs.get(m, {}),
                "method_config": p["config"], "preset_hint": bench_info[b]["preset_hint"],
                "preset_model": bench_info[b]["preset_model"], "config_hash": p["hash"],
                "cells": cells, "env": env_dict, "executor": spec.executor, "plugins": plugins,
            })
    todo = sum(len(t["cells"]) for t in tasks)

    # everything checked: now the directory
    out = check_writable(out)
    with run_lock(out):
        previous = read_run(out) or previous
        # a resumed run adds rows only on the artefacts the directory's rows were made with (checked after set-up)
        expected: dict[str, dict] = {}
        for b in benches:
            old = (previous.get("benchmarks") or {}).get(b) or {}
            if old.get("config_hash") == bench_info[b]["config_hash"] and old.get("provenance"):
                expected[b] = artefact_fingerprints(old["provenance"])
        for task in tasks:
            if task["benchmark"] in expected:
                task["expected_artefacts"] = expected[task["benchmark"]]
        return _execute(spec, out, executor, in_process, tasks, todo, total, skipped, previous, bench_info, pair,
                        benches, started, t_start, stream, __version__, progress)


def _run_doc(spec, previous, bench_info, pair, started, total, skipped, version) -> tuple[dict, dict]:
    run_doc = dict(previous)
    run_doc.update({"schema_version": SCHEMA_VERSION, "genattr_version": version,
                    "created_at": previous.get("created_at", started), "updated_at": started, "status": "running",
                    "seed": spec.seed, "scale": spec.scale})
    run_doc["benchmarks"] = {**previous.get("benchmarks", {})}
    for b, info in bench_info.items():
        old = run_doc["benchmarks"].get(b, {})
        run_doc["benchmarks"][b] = {**old, **info} if old.get("config_hash") == info["config_hash"] else dict(info)
    methods = {m: dict(v) for m, v in (previous.get("methods") or {}).items()}
    for (b, m), p in pair.items():
        entry = methods.setdefault(m, {})
        entry.pop("config", None)  # layout before per-benchmark configurations
        entry.update({"version": p["version"], "plugin": p["plugin"]})
        entry.setdefault("configs", {})[b] = p["config"]
        entry.setdefault("config_hashes", {})[b] = p["hash"]
    run_doc["methods"] = methods
    config = {"seed": spec.seed, "scale": spec.scale,
              "benchmarks": {b: i["config"] for b, i in run_doc["benchmarks"].items()},
              "methods": {m: i.get("configs", {}) for m, i in methods.items()}}
    run_doc["config"] = config
    run_doc["config_hash"] = hash_json(config)
    run_doc["seeds"] = {"run": spec.seed, "cells": "derive_seed(run seed, cell id) (genattr.harness.seeding)"}
    if getattr(spec, "method_seed", None) is not None:
        run_doc["seeds"]["methods"] = spec.method_seed
    run_doc["plugins"] = plugin_list()
    run_doc["environment"] = environment()
    run_doc["executor"] = {"name": spec.executor, "config": clean_json(spec.executor_config)}
    invocation = {"started_at": started, "argv": spec.argv, "executor": spec.executor, "cells_total": total,
                  "cells_skipped": skipped, "cells_run": 0, "status": "running", "pid": os.getpid()}
    # the run directory is locked by this process, so an earlier invocation still marked running was killed
    earlier = [dict(i, status="interrupted") if i.get("status") == "running" else i
               for i in previous.get("invocations", [])]
    run_doc["invocations"] = earlier + [invocation]
    return run_doc, invocation


def _execute(spec, out, executor, in_process, tasks, todo, total, skipped, previous, bench_info, pair, benches,
             started, t_start, stream, version, progress) -> RunSummary:
    run_doc, invocation = _run_doc(spec, previous, bench_info, pair, started, total, skipped, version)
    write_run(out, run_doc)

    # in process: reuse the driver's (not yet set up) benchmark and resolved method instances
    if in_process:
        for b, bench in benches.items():
            args = {**spec.benchmark_configs.get(b, {}), "scale": spec.scale}
            _WORKER_MEMO[_memo_key("unset-benchmark", b, args)] = bench
        for (b, m), p in pair.items():
            key = _memo_key("method", m, spec.method_configs.get(m, {}), spec.scale, bench_info[b]["preset_hint"],
                            bench_info[b]["preset_model"])
            _WORKER_MEMO.setdefault(key, p["method"])

    ran = 0
    devices: set[str] = set()
    status = "failed"
    interrupts = _Interrupts()
    restore = interrupts.install()
    progress.enable(spec.progress, stream)
    try:
        if tasks:
            bar = progress.outer(todo, "cells")
            with ResultsWriter(out) as writer:
                def record(task: dict, rec: dict) -> None:
                    nonlocal ran
                    row = rec["row"]
                    with interrupts.critical():  # a row written is a row counted
                        writer.append(row)
                        ran += 1
                    devices.add(row["worker"].get("device"))
                    binfo = run_doc["benchmarks"][task["benchmark"]]
                    if rec.get("provenance") and not binfo.get("provenance"):
                        binfo["provenance"] = rec["provenance"]
                    if rec.get("setup_s"):
                        binfo["setup_s"] = round(binfo.get("setup_s", 0.0) + rec["setup_s"], 3)
                    bar.set_postfix_str(f"{task['benchmark']} {row['cell_id']}", refresh=False)
                    bar.update(1)
                    checkpoint("between-cells")

                fn = partial(run_task, emit=record) if in_process else run_task
                for task, result in executor.map(fn, tasks):
                    for rec in result.get("rows", ()):
                        record(task, rec)
            progress.close_outer()
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except PluginFault as exc:
        _log_fault(out, exc)
        raise
    finally:
        progress.close_outer()
        restore()
        wall = time.perf_counter() - t_start
        invocation.update({"finished_at": utc_now(), "cells_run": ran, "wall_s": round(wall, 3), "status": status})
        run_doc["status"] = status
        run_doc["updated_at"] = utc_now()
        old_devices = (previous.get("environment") or {}).get("devices") or []
        run_doc["environment"]["devices"] = sorted({d for d in devices if d} | set(old_devices))
        run_doc["timings"] = {"wall_s": round(sum(i.get("wall_s", 0.0) or 0.0 for i in run_doc["invocations"]), 3),
                              "setup_s": {b: i.get("setup_s") for b, i in run_doc["benchmarks"].items()}}
        _final_write(out, run_doc, failing=sys.exc_info()[0] is not None)
        if in_process:
            _WORKER_MEMO.clear()  # free models and data held by this run's benchmarks
    return RunSummary(out=out, cells_total=total, cells_skipped=skipped, cells_run=ran,
                      wall_s=time.perf_counter() - t_start, run=run_doc)
