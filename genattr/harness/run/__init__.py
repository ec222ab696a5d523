"""The runner behind ``genattr run``, in four parts:

* :mod:`.config` — :class:`RunSpec` and :func:`build_spec` (flags, ``--set``, ``--config`` TOML);
* :mod:`.provenance` — versions, git checkout, plugins and the device recorded in ``run.json``;
* :mod:`.worker` — :func:`run_task`: rebuild a benchmark and a method from ``(name, config)`` and run a group of
  cells (module-level, so executors can ship it);
* :mod:`.driver` — :func:`run`: validate, resolve configurations, enumerate and group cells, skip finished ones, fan
  out through an executor, append rows, record provenance.
"""

from .config import (
    DEFAULT_BENCHMARKS,
    DEFAULT_EXECUTOR,
    DEFAULT_METHODS,
    DEFAULT_SCALE,
    DEFAULT_SUITE,
    RUN_KEYS,
    RUNS_ROOT,
    RunSpec,
    build_spec,
    load_config_file,
    parse_assignment,
    parse_value,
)
from .driver import RunSummary, create, metric_info, resolve_method, run
from .provenance import RECORDED_PACKAGES, environment, git_info, package_versions, plugin_list, resolve_device
from .worker import run_task, runtime_plugins

__all__ = [
    "DEFAULT_BENCHMARKS", "DEFAULT_EXECUTOR", "DEFAULT_METHODS", "DEFAULT_SCALE", "DEFAULT_SUITE", "RUN_KEYS",
    "RUNS_ROOT", "RunSpec", "build_spec", "load_config_file", "parse_assignment", "parse_value", "RunSummary",
    "create", "metric_info", "resolve_method", "run", "RECORDED_PACKAGES", "environment", "git_info",
    "package_versions", "plugin_list", "resolve_device", "run_task", "runtime_plugins",
]
