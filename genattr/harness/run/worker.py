"""The worker side of a run: rebuild a benchmark and a method from ``(name, config)``, run a task's cells, return rows.

A task is one group of cells that share a benchmark, a method and a ``batch`` key (see ``Cell`` in
:mod:`genattr.harness.api`). :func:`run_task` is module-level so executors can ship it (Ray pickles the function
reference; the task itself is plain JSON). Benchmarks and methods are memoised per process, keyed by their
reconstruction recipe, so ``Benchmark.setup`` runs once per worker process and a method's in-memory preparation is
reused across that worker's cells.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import socket
import time
import types
from typing import Any, Callable, Mapping, Sequence

from ..cache import canonical_json
from ..results import SCHEMA_VERSION, clean_json, utc_now
from .provenance import check_same_artefacts

#: Per-process memo of benchmarks (set up), methods and environments, keyed by their reconstruction recipe.
_WORKER_MEMO: dict[str, Any] = {}


def _memo_key(*parts: Any) -> str:
    return canonical_json(list(parts))


def checkpoint(name: str) -> None:
    """A named point of the run where the fault-injection suite may stop the process (``GENATTR_FAULT``)."""
    from ..faults import checkpoint as _checkpoint

    _checkpoint(name)


def _ensure_plugins(specs: Sequence[Sequence[str]]) -> None:
    """Register, in a worker process, the plugins the driver registered at runtime (``[name, "module[:attr]"]``)."""
    if not specs:
        return
    from ..manager import load_plugins, pm, register_plugin

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
    from ..manager import plugin_info, pm

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
    from ..api import RunEnv
    from ..cache import Cache
    from .provenance import resolve_device

    e = task["env"]
    key = _memo_key("env", e)
    env = _WORKER_MEMO.get(key)
    if env is None:
        env = RunEnv(cache=Cache(e.get("cache_root")), device=resolve_device(e.get("device", "auto")),
                     seed=int(e["seed"]), scale=e["scale"], progress=bool(e.get("progress", False)),
                     method_configs=copy.deepcopy(e.get("method_configs", {})), out=e.get("out"))
        _WORKER_MEMO[key] = env
    return env


def _benchmark_from(task: dict, env) -> tuple[Any, dict, float]:
    """The task's benchmark, set up once per process; returns (benchmark, provenance, setup seconds paid now)."""
    from genattr import get_benchmark

    from .. import progress

    key = _memo_key("benchmark", task["benchmark"], task["benchmark_args"], task["env"])
    hit = _WORKER_MEMO.get(key)
    if hit is not None:
        return hit[0], hit[1], 0.0
    bench = _WORKER_MEMO.pop(_memo_key("unset-benchmark", task["benchmark"], task["benchmark_args"]), None)
    if bench is None:
        bench = get_benchmark(task["benchmark"], **copy.deepcopy(task["benchmark_args"]))
    from ..cache import recording
    from ..packs import pack_of

    t0 = time.perf_counter()
    with progress.stage(f"setup {task['benchmark']}"), recording() as touched:
        provenance = bench.setup(env) or {}
    setup_s = time.perf_counter() - t0
    pack = pack_of(touched, env.cache)  # every artefact the set-up read came from one imported pack
    if pack is not None:
        provenance = {**provenance, "pack": pack}
    checkpoint("setup")
    _WORKER_MEMO[key] = (bench, clean_json(provenance))
    return bench, _WORKER_MEMO[key][1], setup_s


def _method_from(task: dict):
    """The task's method, configured for its benchmark exactly as the driver resolved it."""
    from genattr import get_method

    from genattr.harness.api import resolve_method_config

    scale, hint, model = task["env"]["scale"], task.get("preset_hint"), task.get("preset_model")
    key = _memo_key("method", task["method"], task["method_args"], scale, hint, model)
    method = _WORKER_MEMO.get(key)
    if method is None:
        method = get_method(task["method"], **copy.deepcopy(task["method_args"]))
        resolve_method_config(method, scale, hint, model)
        got = clean_json(getattr(method, "config", None) or {})
        if "method_config" in task and got != task["method_config"]:
            raise RuntimeError(f"method {task['method']!r} resolved another configuration in the worker than in the "
                               f"driver ({canonical_json(got)[:200]} vs {canonical_json(task['method_config'])[:200]})")
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


def _cells(task: dict) -> list:
    from ..api import Cell

    return [Cell(id=c["id"], method=c["method"], params=copy.deepcopy(c["params"]), group=copy.deepcopy(c["group"]),
                 batch=c.get("batch")) for c in task["cells"]]


def _outputs(bench, cells: list, method, env):
    """``(cell, metrics)`` for every cell: ``run_cells`` for a group when the benchmark has it, else one by one."""
    many = getattr(bench, "run_cells", None)
    if callable(many) and len(cells) > 1:
        yield from many(cells, method, env)
        return
    for cell in cells:
        yield cell, bench.run_cell(cell, method, env)


def _row(task: dict, cell, out, cell_s: float, setup_s: float, env, group_size: int) -> dict:
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
        "timings": {"cell_s": round(cell_s, 6), "setup_s": round(setup_s, 6), "group_size": group_size},
        "worker": {"executor": task.get("executor"), "host": socket.gethostname(), "pid": os.getpid(),
                   "device": env.device},
        "finished_at": utc_now(),
    }
    if extra is not None:
        row["extra"] = extra
    return clean_json(row)


def _with_pack(row: dict, provenance: dict) -> dict:
    """``row`` with ``pack``: the hash of the imported pack its benchmark's artefacts came from, when they did."""
    pack = (provenance or {}).get("pack")
    return {**row, "pack": pack} if pack else row


class CellTimeout(BaseException):
    """Raised in the worker's main thread when a cell outlives ``--cell-timeout`` (a ``BaseException``, so a plugin's
    ``except Exception`` does not swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise :class:`CellTimeout` after ``seconds`` (``SIGALRM``; only in a process's main thread on POSIX — where
    that is not available the limit is not enforced)."""
    import signal
    import threading

    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise CellTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def plugin_code(where: str):
    """Run plugin code (a benchmark's setup, a method's construction, a cell): its exceptions become one line —
    a :class:`PluginFault` naming ``where`` (the traceback kept as its cause for ``errors.log``), or an
    :class:`EnvironmentFault` for a full disk. A :class:`UserError`, a fault already named and an interrupt pass
    unchanged; a plugin calling ``sys.exit`` is a fault, never a silent exit."""
    from ..errors import EnvironmentFault, PluginFault, UserError, disk_full

    try:
        yield
    except (UserError, EnvironmentFault, PluginFault, KeyboardInterrupt):
        raise
    except SystemExit as exc:
        raise PluginFault(f"{where}: a plugin called sys.exit({exc.code!r}); the traceback is in the run's "
                          "errors.log") from exc
    except CellTimeout as exc:
        raise PluginFault(f"{where}: still running after --cell-timeout {exc.args[0]:g} s; stopped (finished rows "
                          "are kept; raise the limit or fix the plugin, then re-run)") from None
    except Exception as exc:  # noqa: BLE001 - every plugin failure is reported the same way
        if disk_full(exc):
            raise EnvironmentFault(f"disk full ({where}); free space and re-run the same command to resume") from None
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        raise PluginFault(f"{where}: {type(exc).__name__}{': ' + first if first else ''} (traceback in the run's "
                          "errors.log)") from exc


def run_task(task: dict, emit: Callable[[dict, dict], None] | None = None) -> dict:
    """Run one task (a group of cells) in this process and return ``{"rows": [...], "provenance", "setup_s"}``.

    ``emit(task, record)``, when given (executors that run in the driver's process), receives each cell's
    ``{"row", "provenance", "setup_s"}`` as soon as the cell is finished, and the returned ``rows`` is then empty:
    an interrupted group keeps every row it finished. ``cell_s`` of a row is the time since the previous cell of
    the group finished (the first cell of a group carries the group's shared scoring)."""
    _ensure_plugins(task.get("plugins", ()))
    env = _env_from(task)
    b, m = task["benchmark"], task["method"]
    with plugin_code(f"setting up benchmark {b}"):
        bench, provenance, setup_s = _benchmark_from(task, env)
    check_same_artefacts(b, task.get("expected_artefacts"), provenance, task["env"]["out"])
    with plugin_code(f"creating method {m} for {b}"):
        method = _method_from(task)
    cells = _cells(task)
    wanted = {c.id for c in cells}
    records = []
    t_prev = time.perf_counter()
    outputs = _outputs(bench, cells, method, env)
    where = f"{b} cell {cells[0].id if cells else '?'}"
    timeout = task["env"].get("cell_timeout")
    while True:
        with plugin_code(where):
            try:
                with deadline(timeout):
                    cell, out = next(outputs)
            except StopIteration:
                break
            if cell.id not in wanted:
                raise RuntimeError(f"benchmark {b!r}: run_cells returned cell {cell.id!r}, not in the group")
            wanted.discard(cell.id)
            now = time.perf_counter()
            checkpoint("in-cell")
            row = _with_pack(_row(task, cell, out, now - t_prev, setup_s, env, len(cells)), provenance)
        rec = {"row": row, "provenance": provenance, "setup_s": setup_s}
        setup_s = 0.0
        t_prev = now
        if emit is not None:
            emit(task, rec)
        else:
            records.append(rec)
        pending = [c.id for c in cells if c.id in wanted]
        where = f"{b} cell {pending[0] if pending else cell.id}"
    if wanted:
        with plugin_code(f"{b}"):
            raise RuntimeError(f"benchmark {b!r}: run_cells did not return cells {sorted(wanted)[:3]}")
    return {"rows": records, "provenance": provenance}
