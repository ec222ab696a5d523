"""The runner behind ``genattr run``: resolve a run's configuration, enumerate benchmark cells, skip the finished ones,
fan the rest out through an executor and append every finished cell to the results store.

Configuration (lowest to highest precedence): built-in defaults, a TOML file (``--config``), ``--set`` overrides and
the command-line flags. Keys address a component by its registered name: ``NAME.key=value`` for a benchmark, a
method or the executor (``unlearning.alpha=1e-4``, ``leave-k-out.ks=[1,2]``, ``ray.address="auto"``); a key without
a dot applies to every benchmark of the run (``scale`` is a flag, not a key). Dotted remainders build nested
dictionaries (``leave-k-out.train.steps=5`` → ``{"train": {"steps": 5}}``). Values are parsed as JSON where
possible and kept as strings otherwise.

Workers rebuild the benchmark and the method from ``(name, config)`` (see :func:`run_task`) and memoise them per
process, so ``Benchmark.setup`` runs once per worker process and a method's in-memory preparation is reused across
that worker's cells.

Resume: a cell is finished when ``DIR/results.jsonl`` holds a row with the same ``(config_hash, cell_id)``;
``config_hash`` covers the benchmark (name, version, resolved config, seed) and the method (name, version, resolved
config). A run whose configuration differs from what ``DIR`` already holds for the same benchmark and method is
refused with a one-line error (choose another ``--out``): rows of two configurations never mix in one directory.
Adding benchmarks or methods to an existing directory is allowed.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .cache import canonical_json, hash_json
from .errors import UserError, did_you_mean
from .results import (
    SCHEMA_VERSION,
    ResultsWriter,
    benchmark_config_hash,
    check_writable,
    clean_json,
    config_hash,
    read_rows,
    read_run,
    utc_now,
    write_run,
)

#: The default suite: what ``genattr run`` without arguments runs.
DEFAULT_SUITE = "default"
DEFAULT_BENCHMARKS: tuple[str, ...] = ("customized-model", "leave-k-out")
DEFAULT_METHODS: tuple[str, ...] = ("unlearning", "random", "pixel")
DEFAULT_SCALE = "small"
DEFAULT_EXECUTOR = "local"
RUNS_ROOT = "runs"

#: Keys of the ``[run]`` table of a TOML configuration file.
RUN_KEYS = ("benchmarks", "methods", "scale", "seed", "out", "executor", "device")

#: Libraries whose versions are recorded in run.json (read from metadata: nothing is imported).
RECORDED_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "numpy", "scikit-learn", "safetensors",
                     "pandas", "ray", "pluggy")


@dataclass
class RunSpec:
    """A fully resolved ``genattr run`` request."""

    benchmarks: list[str]
    methods: list[str]
    scale: str = DEFAULT_SCALE
    seed: int = 0
    out: Path | None = None
    executor: str = DEFAULT_EXECUTOR
    device: str = "auto"
    progress: bool = True
    suite: str | None = None
    benchmark_configs: dict[str, dict] = field(default_factory=dict)
    method_configs: dict[str, dict] = field(default_factory=dict)
    executor_config: dict = field(default_factory=dict)
    cache_root: str | None = None
    argv: list[str] | None = None

    def default_out(self) -> Path:
        label = self.suite or "+".join(self.benchmarks)
        return Path(RUNS_ROOT) / f"{label}-{self.scale}"


# -- configuration ------------------------------------------------------------------------------------------------
def parse_value(raw: str) -> Any:
    """JSON where possible (numbers, booleans, lists, objects, quoted strings), else the raw string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → ``(["a", "b"], parsed value)``; a malformed assignment is a :class:`UserError`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise UserError(f"bad --set {text!r}: expected key=value or NAME.key=value")
    return [p.strip() for p in key.split(".")], parse_value(raw.strip())


def _deep_set(target: dict, path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


def _deep_merge(target: dict, source: Mapping) -> dict:
    for k, v in source.items():
        if isinstance(v, Mapping) and isinstance(target.get(k), dict):
            _deep_merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v) if isinstance(v, (dict, list)) else v
    return target


def _names(kind: str) -> list[str]:
    from .manager import registry

    return registry(kind).names()


def _check_names(kind: str, names: Sequence[str]) -> None:
    from .manager import registry

    reg = registry(kind)
    for n in names:
        reg.get(n)  # UserError with did-you-mean for unknown names


def load_config_file(path: str | os.PathLike) -> dict:
    """Parse a TOML configuration file (``tomllib``); a missing or malformed file is a :class:`UserError`."""
    import tomllib

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} does not exist")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {str(p)!r} is not valid TOML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {str(p)!r}: {exc.strerror}") from None


def build_spec(
    benchmarks: Sequence[str] = (),
    methods: Sequence[str] = (),
    *,
    scale: str | None = None,
    sets: Sequence[str] = (),
    config_file: str | os.PathLike | None = None,
    seed: int | None = None,
    out: str | os.PathLike | None = None,
    executor: str | None = None,
    device: str | None = None,
    quiet: bool = False,
    cache_root: str | None = None,
    argv: Sequence[str] | None = None,
) -> RunSpec:
    """Resolve command-line arguments and an optional TOML file into a :class:`RunSpec` (validates every name)."""
    from .api import SCALES

    doc: dict = load_config_file(config_file) if config_file else {}
    run_table = doc.get("run", {})
    if not isinstance(run_table, dict):
        raise UserError("config file: [run] must be a table")
    unknown = sorted(set(run_table) - set(RUN_KEYS))
    if unknown:
        raise UserError(f"config file: unknown [run] key {unknown[0]!r}{did_you_mean(unknown[0], RUN_KEYS)}; "
                        f"known: {', '.join(RUN_KEYS)}")

    def _list(v, what):
        if isinstance(v, str):
            return [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UserError(f"config file: [run] {what} must be a list of names")
        return list(v)

    bench_names = list(benchmarks) or _list(run_table.get("benchmarks", []), "benchmarks")
    suite = None
    if not bench_names:
        bench_names, suite = list(DEFAULT_BENCHMARKS), DEFAULT_SUITE
    method_names = list(methods) or _list(run_table.get("methods", []), "methods") or list(DEFAULT_METHODS)
    bench_names = list(dict.fromkeys(bench_names))
    method_names = list(dict.fromkeys(method_names))
    scale = scale or run_table.get("scale") or DEFAULT_SCALE
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}{did_you_mean(str(scale), SCALES)}; choose from {', '.join(SCALES)}")
    if seed is None:
        seed = run_table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed must be an integer, not {seed!r}")
    executor = executor or run_table.get("executor") or DEFAULT_EXECUTOR
    device = device or run_table.get("device") or "auto"
    out = out or run_table.get("out")

    _check_names("benchmarks", bench_names)
    _check_names("methods", method_names)
    _check_names("executors", [executor])

    spec = RunSpec(benchmarks=bench_names, methods=method_names, scale=scale, seed=seed, executor=executor,
                   device=device, progress=not quiet, suite=suite, cache_root=cache_root,
                   argv=list(argv) if argv is not None else None)
    spec.benchmark_configs = {b: {} for b in bench_names}
    spec.method_configs = {m: {} for m in method_names}

    all_bench, all_methods, all_exec = set(_names("benchmarks")), set(_names("methods")), set(_names("executors"))

    def target_of(head: str, source: str, strict: bool) -> dict | None:
        if head in spec.benchmark_configs:
            return spec.benchmark_configs[head]
        if head in spec.method_configs:
            return spec.method_configs[head]
        if head == executor:
            return spec.executor_config
        if head in all_bench or head in all_methods or head in all_exec:
            if not strict:
                return None  # a config file may hold sections for components this run does not use
            kind = "benchmark" if head in all_bench else "method" if head in all_methods else "executor"
            raise UserError(f"{source}: {kind} {head!r} is not part of this run")
        known = list(spec.benchmark_configs) + list(spec.method_configs) + [executor]
        raise UserError(f"{source}: {head!r} is not a benchmark, method or executor of this run"
                        f"{did_you_mean(head, known)}; write BENCHMARK.key=value for nested benchmark keys")

    # the TOML file: top-level scalars → every benchmark; tables named after components → that component
    for key, value in doc.items():
        if key == "run":
            continue
        if isinstance(value, dict):
            target = target_of(key, f"config file [{key}]", strict=False)
            if target is not None:
                _deep_merge(target, value)
        else:
            for cfg in spec.benchmark_configs.values():
                cfg[key] = copy.deepcopy(value)
    # --set
    for text in sets:
        path, value = parse_assignment(text)
        if len(path) == 1:
            for cfg in spec.benchmark_configs.values():
                _deep_set(cfg, path, value)
            continue
        target = target_of(path[0], f"bad --set {text!r}", strict=True)
        _deep_set(target, path[1:], value)
    for cfg in spec.benchmark_configs.values():
        if "scale" in cfg:
            raise UserError("set the scale with --scale (or [run] scale), not as a benchmark key")
    spec.out = Path(out).expanduser() if out else spec.default_out()
    return spec


# -- environment provenance ---------------------------------------------------------------------------------------
def package_versions(names: Iterable[str] = RECORDED_PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:  # importable without metadata (vendored, on PYTHONPATH)?
            module = sys.modules.get(n.replace("-", "_").replace("scikit_learn", "sklearn"))
            out[n] = getattr(module, "__version__", None) if module is not None else None
    return out


def git_info() -> dict | None:
    """Commit and dirty flag of the git checkout genattr runs from, or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    from genattr import __version__

    return {
        "genattr": __version__,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "packages": package_versions(),
        "git": git_info(),
    }


def plugin_list() -> list[dict]:
    from .manager import all_plugins

    return [{"name": p.name, "version": p.version, "distribution": p.distribution, "builtin": p.builtin,
             "skipped": p.error.splitlines()[0] if p.error else None} for p in all_plugins(True)]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu`` (imports torch); anything else unchanged."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- the worker side ----------------------------------------------------------------------------------------------
#: Per-process memo of benchmarks (set up), methods and environments, keyed by their reconstruction recipe.
_WORKER_MEMO: dict[str, Any] = {}


def _memo_key(*parts: Any) -> str:
    return canonical_json(list(parts))


def _ensure_plugins(specs: Sequence[Sequence[str]]) -> None:
    """Register, in a worker process, the plugins the driver registered at runtime (``[name, "module[:attr]"]``)."""
    if not specs:
        return
    from .manager import load_plugins, pm, register_plugin

    load_plugins()
    for name, target in specs:
        if pm.get_plugin(name) is not None:
            continue
        module, _, attr = target.partition(":")
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        register_plugin(obj, name)


def runtime_plugins() -> list[list[str]]:
    """Plugins registered in this process outside :func:`load_plugins` (tests, notebooks), as import targets
    that a worker process can register again."""
    from .manager import pm, plugin_info

    out = []
    for name, plugin in pm.list_name_plugin():
        info = plugin_info.get(name)
        if info is not None and (info.builtin or info.distribution is not None):
            continue
        if isinstance(plugin, types.ModuleType):
            out.append([name, plugin.__name__])
        elif isinstance(plugin, type) and "<locals>" not in plugin.__qualname__:
            out.append([name, f"{plugin.__module__}:{plugin.__qualname__}"])
    return out


def _env_from(task: dict):
    from .api import RunEnv
    from .cache import Cache

    e = task["env"]
    key = _memo_key("env", e)
    env = _WORKER_MEMO.get(key)
    if env is None:
        env = RunEnv(cache=Cache(e.get("cache_root")), device=resolve_device(e.get("device", "auto")),
                     seed=int(e["seed"]), scale=e["scale"], progress=bool(e.get("progress", False)),
                     method_configs=copy.deepcopy(e.get("method_configs", {})))
        _WORKER_MEMO[key] = env
    return env


def _benchmark_from(task: dict, env) -> tuple[Any, dict, float]:
    """The task's benchmark, set up once per process; returns (benchmark, provenance, setup seconds paid now)."""
    from genattr import get_benchmark

    key = _memo_key("benchmark", task["benchmark"], task["benchmark_args"], task["env"])
    hit = _WORKER_MEMO.get(key)
    if hit is not None:
        return hit[0], hit[1], 0.0
    bench = _WORKER_MEMO.pop(_memo_key("unset-benchmark", task["benchmark"], task["benchmark_args"]), None)
    if bench is None:
        bench = get_benchmark(task["benchmark"], **copy.deepcopy(task["benchmark_args"]))
    t0 = time.perf_counter()
    provenance = bench.setup(env) or {}
    setup_s = time.perf_counter() - t0
    _WORKER_MEMO[key] = (bench, clean_json(provenance))
    return bench, _WORKER_MEMO[key][1], setup_s


def _method_from(task: dict):
    from genattr import get_method

    key = _memo_key("method", task["method"], task["method_args"])
    method = _WORKER_MEMO.get(key)
    if method is None:
        method = get_method(task["method"], **copy.deepcopy(task["method_args"]))
        _WORKER_MEMO[key] = method
    return method


def _metrics(benchmark: str, out: Any) -> tuple[dict, Any]:
    if not isinstance(out, Mapping):
        raise TypeError(f"benchmark {benchmark!r}: run_cell must return a dict of metrics, got {type(out).__name__}")
    metrics: dict[str, float | None] = {}
    extra = out.get("extra")
    for k, v in out.items():
        if k == "extra":
            continue
        if v is None:
            metrics[k] = None
            continue
        try:
            metrics[k] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"benchmark {benchmark!r}: metric {k!r} is not a number ({v!r})") from None
    return metrics, extra


def run_task(task: dict) -> dict:
    """Run one cell in this process: rebuild (memoised) benchmark and method from ``(name, config)``, run the cell
    and return ``{"row": ResultRow, "provenance": setup provenance}``. Module-level so executors can ship it."""
    from .api import Cell

    _ensure_plugins(task.get("plugins", ()))
    env = _env_from(task)
    bench, provenance, setup_s = _benchmark_from(task, env)
    method = _method_from(task)
    c = task["cell"]
    cell = Cell(id=c["id"], method=c["method"], params=copy.deepcopy(c["params"]), group=copy.deepcopy(c["group"]))
    t0 = time.perf_counter()
    out = bench.run_cell(cell, method, env)
    cell_s = time.perf_counter() - t0
    metrics, extra = _metrics(task["benchmark"], out)
    row = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": task["benchmark"],
        "benchmark_version": task["benchmark_version"],
        "benchmark_config_hash": task["benchmark_config_hash"],
        "method": task["method"],
        "method_version": task["method_version"],
        "method_config": task["method_config"],
        "config_hash": task["config_hash"],
        "cell_id": cell.id,
        "params": cell.params,
        "group": cell.group,
        "metrics": metrics,
        "higher_is_better": task["higher_is_better"],
        "seed": task["env"]["seed"],
        "scale": task["env"]["scale"],
        "timings": {"cell_s": round(cell_s, 6), "setup_s": round(setup_s, 6)},
        "worker": {"executor": task.get("executor"), "host": socket.gethostname(), "pid": os.getpid(),
                   "device": env.device},
        "finished_at": utc_now(),
    }
    if extra is not None:
        row["extra"] = extra
    return {"row": clean_json(row), "provenance": provenance, "setup_s": setup_s}


# -- the driver side ----------------------------------------------------------------------------------------------
def _higher_is_better(metrics: Any) -> dict[str, bool | None]:
    """Normalise ``Benchmark.metrics`` ({name: bool} or {name: {"higher_is_better": bool}} or a list of names)."""
    out: dict[str, bool | None] = {}
    if isinstance(metrics, Mapping):
        for k, v in metrics.items():
            if isinstance(v, bool):
                out[str(k)] = v
            elif isinstance(v, Mapping):
                hib = v.get("higher_is_better")
                out[str(k)] = bool(hib) if hib is not None else None
            else:
                out[str(k)] = getattr(v, "higher_is_better", None)
    elif isinstance(metrics, (list, tuple)):
        out = {str(k): None for k in metrics}
    return out


def _create(kind: str, name: str, config: dict):
    import genattr

    getter = {"benchmark": genattr.get_benchmark, "method": genattr.get_method}[kind]
    try:
        return getter(name, **copy.deepcopy(config))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad configuration for {kind} {name!r}: {str(exc).strip().splitlines()[0]}") from None


@dataclass
class RunSummary:
    out: Path
    cells_total: int
    cells_skipped: int
    cells_run: int
    wall_s: float
    run: dict


def _make_executor(spec: RunSpec):
    import genattr

    try:
        return genattr.get_executor(spec.executor, **copy.deepcopy(spec.executor_config))
    except TypeError as exc:
        raise UserError(f"bad configuration for executor {spec.executor!r}: {exc}") from None


def _sigterm_as_interrupt():
    """While cells run, SIGTERM (a batch scheduler's stop) ends the run like Ctrl-C: finished rows are kept and
    run.json says "interrupted". Returns the function that restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


def run(spec: RunSpec, *, executor=None, stream=None) -> RunSummary:
    """Run ``spec``: finished cells are skipped, the rest run through the executor and are appended to
    ``spec.out/results.jsonl`` as they finish; ``run.json`` is written at the start and updated at the end."""
    from genattr import __version__

    out = check_writable(spec.out or spec.default_out())
    started, t_start = utc_now(), time.perf_counter()
    previous = read_run(out) or {}
    if previous and int(previous.get("schema_version", 0)) > SCHEMA_VERSION:
        raise UserError(f"{out} was written by a newer genattr (schema {previous.get('schema_version')}); "
                        "use another --out")

    # components on the driver: resolved configs, versions, metrics, cells
    benches = {b: _create("benchmark", b, {**spec.benchmark_configs.get(b, {}), "scale": spec.scale})
               for b in spec.benchmarks}
    methods = {m: _create("method", m, spec.method_configs.get(m, {})) for m in spec.methods}
    for method in methods.values():
        # methods with scale presets resolve them now, so the recorded (and hashed) config is what the cells use
        if callable(getattr(method, "resolve_scale", None)):
            method.resolve_scale(spec.scale)
    from .manager import registry

    def version(kind, name, obj):
        return str(getattr(obj, "version", None) or registry(kind).get(name).version)

    bench_info: dict[str, dict] = {}
    for b, bench in benches.items():
        cfg = clean_json(getattr(bench, "config", None) or {**spec.benchmark_configs.get(b, {}), "scale": spec.scale})
        v = version("benchmarks", b, bench)
        bench_info[b] = {"version": v, "config": cfg, "config_hash": benchmark_config_hash(b, v, cfg, spec.seed),
                         "metrics": _higher_is_better(getattr(bench, "metrics", {})),
                         "plugin": getattr(bench, "plugin", None)}
    method_info: dict[str, dict] = {}
    for m, method in methods.items():
        cfg = clean_json(getattr(method, "config", None) or spec.method_configs.get(m, {}))
        method_info[m] = {"version": version("methods", m, method), "config": cfg,
                          "plugin": getattr(method, "plugin", None)}

    def pair_hash(b, m):
        return config_hash(bench_info[b]["config_hash"], m, method_info[m]["version"], method_info[m]["config"])

    # never mix configurations in one directory
    existing = read_rows(out)
    held: dict[tuple[str, str], set[str]] = {}
    for r in existing:
        held.setdefault((r.get("benchmark"), r.get("method")), set()).add(r.get("config_hash"))
    for b in spec.benchmarks:
        for m in spec.methods:
            hashes = held.get((b, m))
            if hashes and pair_hash(b, m) not in hashes:
                raise UserError(f"{out} already holds {b}/{m} results of another configuration; use a different "
                                f"--out (or remove that directory) to run this one")
    done = {(r.get("config_hash"), r.get("cell_id")) for r in existing}

    # cells → tasks
    plugins = runtime_plugins()
    env_dict = {"seed": spec.seed, "scale": spec.scale, "device": spec.device,
                "progress": bool(spec.progress and spec.executor == "local"), "cache_root": spec.cache_root,
                "method_configs": {m: method_info[m]["config"] for m in spec.methods}}
    tasks: list[dict] = []
    total = skipped = 0
    for b, bench in benches.items():
        cells = bench.cells(list(spec.methods))
        seen: set[str] = set()
        for cell in cells:
            if cell.id in seen:
                raise RuntimeError(f"benchmark {b!r} enumerated cell id {cell.id!r} twice")
            seen.add(cell.id)
            if cell.method not in methods:
                raise RuntimeError(f"benchmark {b!r} enumerated a cell for method {cell.method!r}, not in this run")
            total += 1
            h = pair_hash(b, cell.method)
            if (h, cell.id) in done:
                skipped += 1
                continue
            tasks.append({
                "benchmark": b, "benchmark_version": bench_info[b]["version"],
                "benchmark_args": {**spec.benchmark_configs.get(b, {}), "scale": spec.scale},
                "benchmark_config_hash": bench_info[b]["config_hash"],
                "higher_is_better": bench_info[b]["metrics"],
                "method": cell.method, "method_version": method_info[cell.method]["version"],
                "method_args": spec.method_configs.get(cell.method, {}),
                "method_config": method_info[cell.method]["config"],
                "config_hash": h,
                "cell": clean_json({"id": cell.id, "method": cell.method, "params": dict(cell.params),
                                    "group": dict(cell.group)}),
                "env": env_dict, "executor": spec.executor, "plugins": plugins,
            })

    # run.json: merge with what the directory already holds
    run_doc = dict(previous)
    run_doc.update({"schema_version": SCHEMA_VERSION, "genattr_version": __version__,
                    "created_at": previous.get("created_at", started), "updated_at": started, "status": "running",
                    "seed": spec.seed, "scale": spec.scale})
    run_doc["benchmarks"] = {**previous.get("benchmarks", {})}
    for b, info in bench_info.items():
        old = run_doc["benchmarks"].get(b, {})
        run_doc["benchmarks"][b] = {**old, **info} if old.get("config_hash") == info["config_hash"] else info
    run_doc["methods"] = {**previous.get("methods", {}), **method_info}
    config = {"seed": spec.seed, "scale": spec.scale,
              "benchmarks": {b: i["config"] for b, i in run_doc["benchmarks"].items()},
              "methods": {m: i["config"] for m, i in run_doc["methods"].items()}}
    run_doc["config"] = config
    run_doc["config_hash"] = hash_json(config)
    run_doc["seeds"] = {"run": spec.seed, "cells": "derive_seed(run seed, cell id) (genattr.harness.seeding)"}
    run_doc["plugins"] = plugin_list()
    run_doc["environment"] = environment()
    run_doc["executor"] = {"name": spec.executor, "config": clean_json(spec.executor_config)}
    invocation = {"started_at": started, "argv": spec.argv, "executor": spec.executor, "cells_total": total,
                  "cells_skipped": skipped, "cells_run": 0, "status": "running"}
    invocations = list(previous.get("invocations", [])) + [invocation]
    run_doc["invocations"] = invocations
    write_run(out, run_doc)

    # local: reuse the driver's (not yet set up) instances in the worker memo
    if spec.executor == "local":
        for b, bench in benches.items():
            args = {**spec.benchmark_configs.get(b, {}), "scale": spec.scale}
            _WORKER_MEMO[_memo_key("unset-benchmark", b, args)] = bench
        for m, method in methods.items():
            _WORKER_MEMO.setdefault(_memo_key("method", m, spec.method_configs.get(m, {})), method)

    from tqdm.auto import tqdm

    ran = 0
    devices: set[str] = set()
    status = "failed"
    restore = _sigterm_as_interrupt()
    try:
        if tasks:
            ex = executor if executor is not None else _make_executor(spec)
            with ResultsWriter(out) as writer, tqdm(total=len(tasks), disable=not spec.progress, unit="cell",
                                                    desc="cells", file=stream or sys.stderr,
                                                    dynamic_ncols=True) as bar:
                for task, result in ex.map(run_task, tasks):
                    row = result["row"]
                    writer.append(row)
                    ran += 1
                    devices.add(row["worker"].get("device"))
                    binfo = run_doc["benchmarks"][task["benchmark"]]
                    if result.get("provenance") and not binfo.get("provenance"):
                        binfo["provenance"] = result["provenance"]
                    if result.get("setup_s"):
                        binfo["setup_s"] = round(binfo.get("setup_s", 0.0) + result["setup_s"], 3)
                    bar.set_postfix_str(f"{task['benchmark']} {task['cell']['id']}", refresh=False)
                    bar.update(1)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        restore()
        wall = time.perf_counter() - t_start
        invocation.update({"finished_at": utc_now(), "cells_run": ran, "wall_s": round(wall, 3), "status": status})
        run_doc["status"] = status
        run_doc["updated_at"] = utc_now()
        old_devices = (previous.get("environment") or {}).get("devices") or []
        run_doc["environment"]["devices"] = sorted({d for d in devices if d} | set(old_devices))
        run_doc["timings"] = {"wall_s": round(sum(i.get("wall_s", 0.0) or 0.0 for i in invocations), 3),
                              "setup_s": {b: i.get("setup_s") for b, i in run_doc["benchmarks"].items()}}
        write_run(out, run_doc)
        if spec.executor == "local":
            _WORKER_MEMO.clear()  # free models and data held by this run's benchmarks
    return RunSummary(out=out, cells_total=total, cells_skipped=skipped, cells_run=ran,
                      wall_s=time.perf_counter() - t_start, run=run_doc)


# -- single-query attribution (``genattr attribute``) ------------------------------------------------------------
def _assignments(items: Sequence[str], what: str) -> dict:
    cfg: dict = {}
    for text in items:
        path, value = parse_assignment(text)
        _deep_set(cfg, path, value)
    return cfg


def load_model(spec: str, config: Mapping | None = None):
    """A model adapter from ``spec``: a directory saved by a genattr adapter (``genattr_model.json`` names the
    registered adapter, loaded with its ``load``), a diffusers pipeline directory (``model_index.json``), a
    registered model name (built with ``config``), or a hub id (``org/name``, through the diffusers adapter)."""
    from .manager import registry

    p = Path(spec).expanduser()
    models = registry("models")
    if p.is_dir():
        meta_file = p / "genattr_model.json"
        if meta_file.is_file():
            try:
                name = json.loads(meta_file.read_text()).get("model")
            except (OSError, ValueError):
                raise UserError(f"--model {spec!r}: unreadable genattr_model.json") from None
            if name in models:
                factory = models.get(name).factory
                cls = factory.resolve() if hasattr(factory, "resolve") else factory
            elif name == "tiny-t2i":
                from genattr.plugins.models.tiny_t2i import TinyT2I as cls
            else:
                raise UserError(f"--model {spec!r} was saved by model adapter {name!r}, which is not installed")
            return cls.load(str(p))
        if (p / "model_index.json").is_file():
            return _diffusers_model(str(p))
        raise UserError(f"--model {spec!r} is neither a saved genattr model (genattr_model.json) nor a diffusers "
                        "pipeline (model_index.json)")
    if spec in models:
        import genattr

        return genattr.get_model(spec, **dict(config or {}))
    if "/" in spec and not p.exists() and not spec.startswith((".", "/", "~")):
        return _diffusers_model(spec)
    raise UserError(f"--model {spec!r}: no such directory, registered model or hub id")


def _diffusers_model(path_or_id: str):
    try:
        from genattr.plugins.models.diffusers_adapter import DiffusersT2I
    except ImportError as exc:
        raise UserError(f"cannot load diffusers pipeline {path_or_id!r}: {exc}") from None
    return DiffusersT2I(path_or_id)


def _read_image(path: str, resolution: int | None, channels: int | None):
    """An image file as a ``C×H×W`` float tensor in [-1, 1] at ``resolution`` with ``channels``."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--image {path!r} does not exist")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"--image {path!r} is not a readable image: {exc}") from None
    img = img.convert("L" if channels == 1 else "RGB")
    if resolution:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _to_display(image):
    import numpy as np

    a = image.detach().float().cpu().clamp(-1, 1).add(1).div(2).numpy()
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a[:3], (1, 2, 0)), None


def _grid_png(path: Path, query, ranking: list[dict], dataset) -> None:
    import math as _math

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [("query", query.image)] + [
        (f"#{r['rank']} {r['id']}\n{r['score']:.4g}", dataset.item(r["index"]).image) for r in ranking]
    cols = min(6, len(panels))
    rows = _math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image) in zip(axes.flat, panels):
        arr, cmap = _to_display(image)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{query.prompt!s}"[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attribute(*, model_spec: str | None, dataset: str, method: str, out: str, model_sets: Sequence[str] = (),
              dataset_sets: Sequence[str] = (), method_sets: Sequence[str] = (), prompt: str | None = None,
              seed: int = 0, image: str | None = None, steps: int = 50, top_k: int = 10, scale: str = "small",
              device: str = "auto", progress: bool = True, cache_root: str | None = None) -> dict:
    """Rank the training items of ``dataset`` for one query (generated from ``prompt``/``seed`` by the model, or
    read from ``image``) with ``method``; write ``ranking.csv``, ``ranking.json``, ``query.png`` and ``grid.png``
    into ``out``. Returns the JSON document written to ``ranking.json`` plus the file paths."""
    import csv

    import genattr

    from .api import AttributionContext, Query
    from .cache import Cache

    if image is None and not prompt:
        raise UserError("give --prompt (with --seed) to generate the query, or --image PATH")
    out_dir = check_writable(out)
    method_cfg = _assignments(method_sets, "--set")
    dataset_cfg = _assignments(dataset_sets, "--dataset-set")
    model_cfg = _assignments(model_sets, "--model-set")
    try:
        train_set = genattr.get_dataset(dataset, **dataset_cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad configuration for dataset {dataset!r}: {str(exc).splitlines()[0]}") from None
    m = _create("method", method, method_cfg)
    model = load_model(model_spec, model_cfg) if model_spec else None
    if model is None and (image is None or getattr(m, "needs_model", True)):
        raise UserError(f"--model is required ({'to generate the query' if image is None else method + ' needs it'})")
    dev = resolve_device(device)
    if model is not None and hasattr(model, "to"):
        try:
            model.to(dev)
        except Exception:  # noqa: BLE001 - adapters without device moves keep their own
            pass
    if image is not None:
        res = getattr(model, "resolution", None) or getattr(train_set, "resolution", None)
        ch = getattr(model, "channels", None) or getattr(train_set, "channels", None)
        img = _read_image(image, res, ch)
        query = Query(id="query", image=img, prompt=prompt or "", meta={"image": str(image)})
    else:
        img = model.generate([prompt], [int(seed)], steps=steps)[0]
        query = Query(id="query", image=img.detach().cpu(), prompt=prompt, meta={"seed": int(seed), "steps": steps})
    ctx = AttributionContext(model=model, train_set=train_set, cache=Cache(cache_root), device=dev, seed=int(seed),
                             scale=scale, progress=progress)
    t0 = time.perf_counter()
    m.prepare(ctx)
    import numpy as np

    scores = np.asarray(m.attribute(ctx, [query]), dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (1, len(train_set)):
        raise RuntimeError(f"method {method!r} returned scores of shape {scores.shape}, expected (1, {len(train_set)})")
    wall = time.perf_counter() - t0
    s = scores[0]
    order = np.argsort(-s, kind="stable")[:top_k]
    ids = train_set.ids
    ranking = []
    for rank, idx in enumerate(order, start=1):
        caps = train_set.captions(int(idx)) if hasattr(train_set, "captions") else ()
        ranking.append({"rank": rank, "index": int(idx), "id": ids[int(idx)], "score": float(s[idx]),
                        "caption": caps[0] if caps else ""})
    doc = {
        "schema_version": SCHEMA_VERSION,
        "query": {"prompt": query.prompt, **query.meta},
        "model": {"spec": model_spec, "name": getattr(model, "name", None), "version": getattr(model, "version", None),
                  "fingerprint": getattr(model, "fingerprint", None) if model is not None else None},
        "dataset": {"name": dataset, "config": dataset_cfg, "size": len(train_set),
                    "fingerprint": getattr(train_set, "fingerprint", None)},
        "method": {"name": method, "version": str(getattr(m, "version", "")),
                   "config": clean_json(getattr(m, "config", {}))},
        "device": dev, "attribution_s": round(wall, 3), "finished_at": utc_now(),
        "ranking": ranking,
    }
    files = {"csv": out_dir / "ranking.csv", "json": out_dir / "ranking.json", "grid": out_dir / "grid.png",
             "query": out_dir / "query.png"}
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["rank", "index", "id", "score", "caption"])
        w.writeheader()
        w.writerows(ranking)
    files["json"].write_text(json.dumps(clean_json(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    arr, cmap = _to_display(query.image)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.imsave(files["query"], arr, cmap=cmap, vmin=0, vmax=1)
    _grid_png(files["grid"], query, ranking, train_set)
    return {**doc, "files": {k: str(v) for k, v in files.items()}}
