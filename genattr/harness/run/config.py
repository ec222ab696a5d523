"""Run configuration: the :class:`RunSpec` of a ``genattr run`` and how it is built from flags, ``--set`` and a TOML file.

Configuration (lowest to highest precedence): built-in defaults, a TOML file (``--config``), ``--set`` overrides and
the command-line flags. Keys address a component by its registered name: ``NAME.key=value`` for a benchmark, a
method or the executor (``unlearning.alpha=1e-4``, ``leave-k-out.k=[1,2]``, ``ray.address="auto"``); a key without
a dot applies to every benchmark of the run (``scale`` is a flag, not a key). Dotted remainders build nested
dictionaries (``leave-k-out.train_config.steps=5`` → ``{"train_config": {"steps": 5}}``). Values are parsed as JSON
where possible and kept as strings otherwise.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError, did_you_mean

#: The default suite: what ``genattr run`` without arguments runs.
DEFAULT_SUITE = "default"
DEFAULT_BENCHMARKS: tuple[str, ...] = ("customized-model", "leave-k-out")
DEFAULT_METHODS: tuple[str, ...] = ("unlearning", "random", "pixel")
DEFAULT_SCALE = "small"
DEFAULT_EXECUTOR = "local"
RUNS_ROOT = "runs"

#: Keys of the ``[run]`` table of a TOML configuration file.
RUN_KEYS = ("benchmarks", "methods", "scale", "seed", "method_seed", "out", "executor", "device", "cell_timeout")


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
    #: ``--method-seed``: the ``seed`` option given to every method of the run that has one (an explicit
    #: ``NAME.seed`` wins); ``unseeded`` lists the methods without the option (deterministic ones: pixel, encoders).
    method_seed: int | None = None
    unseeded: list[str] = field(default_factory=list)
    #: ``--cell-timeout``: seconds a cell may run before the run stops with a one-line fault naming it (None: no
    #: limit). Not part of any configuration hash: it changes whether a cell finishes, not what it computes.
    cell_timeout: float | None = None

    def default_out(self) -> Path:
        label = self.suite or "+".join(self.benchmarks)
        suffix = "" if self.method_seed is None else f"-mseed{self.method_seed}"
        return Path(RUNS_ROOT) / f"{label}-{self.scale}{suffix}"


# -- configuration ------------------------------------------------------------------------------------------------
def parse_value(raw: str) -> Any:
    """JSON where possible (numbers, booleans, lists, objects, quoted strings), else the raw string."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    except RecursionError:
        raise UserError(f"value {raw[:20]}… nests too deeply") from None
    if _depth(value) > MAX_DEPTH:
        raise UserError(f"value {raw[:20]}… nests deeper than {MAX_DEPTH} levels")
    return value


#: The deepest nesting a configuration value may have (lists and tables inside each other).
MAX_DEPTH = 32


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


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
    from ..manager import registry

    return registry(kind).names()


def _check_names(kind: str, names: Sequence[str]) -> None:
    from ..manager import registry

    reg = registry(kind)
    for n in names:
        reg.get(n)  # UserError with did-you-mean for unknown names


def load_config_file(path: str | os.PathLike) -> dict:
    """Parse a TOML configuration file (``tomllib``: genattr needs Python ≥ 3.11); a missing or malformed file is a
    :class:`UserError`."""
    import tomllib

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} does not exist")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {str(p)!r} is not valid TOML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {str(p)!r} is not UTF-8 text (TOML files are UTF-8)") from None
    except RecursionError:
        raise UserError(f"config file {str(p)!r} nests too deeply") from None
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
    method_seed: int | None = None,
    out: str | os.PathLike | None = None,
    executor: str | None = None,
    device: str | None = None,
    quiet: bool = False,
    cache_root: str | None = None,
    argv: Sequence[str] | None = None,
    cell_timeout: float | None = None,
) -> RunSpec:
    """Resolve command-line arguments and an optional TOML file into a :class:`RunSpec` (validates every name)."""
    from ..api import SCALES

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
    if method_seed is None:
        method_seed = run_table.get("method_seed")
    if method_seed is not None and (not isinstance(method_seed, int) or isinstance(method_seed, bool)
                                    or method_seed < 0):
        raise UserError(f"method seed must be a non-negative integer, not {method_seed!r}")
    for key in ("executor", "device", "out", "scale"):
        v = run_table.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise UserError(f"config file: [run] {key} must be a string, not {v!r}")
    executor = executor or run_table.get("executor") or DEFAULT_EXECUTOR
    device = device or run_table.get("device") or "auto"
    out = out or run_table.get("out")

    if cell_timeout is None:
        cell_timeout = run_table.get("cell_timeout")
    if cell_timeout is not None and (isinstance(cell_timeout, bool) or not isinstance(cell_timeout, (int, float))
                                     or not cell_timeout > 0 or cell_timeout != cell_timeout):
        raise UserError(f"cell timeout must be a positive number of seconds, not {cell_timeout!r}")
    _check_names("benchmarks", bench_names)
    _check_names("methods", method_names)
    _check_names("executors", [executor])

    spec = RunSpec(benchmarks=bench_names, methods=method_names, scale=scale, seed=seed, executor=executor,
                   device=device, progress=not quiet, suite=suite, cache_root=cache_root,
                   argv=list(argv) if argv is not None else None,
                   cell_timeout=float(cell_timeout) if cell_timeout is not None else None)
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
    if method_seed is not None:
        _apply_method_seed(spec, method_seed)
    spec.out = Path(out).expanduser() if out else spec.default_out()
    return spec


def _apply_method_seed(spec: RunSpec, seed: int) -> None:
    """``--method-seed``: option ``seed`` on every method that takes one and was not given one explicitly. The
    models, queries and retrains stay those of the run seed; only the methods' own draws change — a second method
    seed, pooled with the first by ``genattr leaderboard DIR DIR2``."""
    from .driver import takes_seed

    spec.method_seed = seed
    for name, cfg in spec.method_configs.items():
        if "seed" in cfg:
            continue
        if takes_seed(name, cfg, seed):
            cfg["seed"] = seed
        else:
            spec.unseeded.append(name)
