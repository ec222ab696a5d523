"""genattr: a plugin-based benchmark harness for data attribution in text-to-image diffusion models.

Public API: :data:`hookimpl` (decorate your plugin's hook functions), :func:`load_plugins`, and the accessors
``get_method``, ``get_model``, ``get_metric``, ``get_dataset``, ``get_benchmark``, ``get_executor``, each taking a
registered name and the component's configuration as keyword arguments.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .harness.hookspecs import hookimpl  # noqa: E402
from .harness.manager import load_plugins  # noqa: E402


def _entry(kind: str, name: str):
    from .harness.manager import registry

    return registry(kind).get(name)


def _create(kind: str, name: str, config: dict):
    entry = _entry(kind, name)
    obj = entry.create(**config)
    for attr, value in (("plugin", entry.plugin), ("registered_name", entry.name)):
        try:
            setattr(obj, attr, value)
        except (AttributeError, TypeError):  # pragma: no cover - slotted or frozen objects
            pass
    return obj


def get_method(name: str, **config):
    """An attribution method instance (``AttributionMethod``)."""
    return _create("methods", name, config)


def get_model(name: str, **config):
    """A model adapter instance (``T2IModel``)."""
    return _create("models", name, config)


def get_metric(name: str, **config):
    """A metric instance (``Metric``)."""
    return _create("metrics", name, config)


def get_dataset(name: str, **config):
    """A dataset instance (``Dataset``)."""
    return _create("datasets", name, config)


def get_benchmark(name: str, **config):
    """A benchmark instance (``Benchmark``)."""
    return _create("benchmarks", name, config)


def get_executor(name: str, **config):
    """An executor instance (``Executor``)."""
    return _create("executors", name, config)


__all__ = [
    "__version__", "hookimpl", "load_plugins", "get_method", "get_model", "get_metric", "get_dataset",
    "get_benchmark", "get_executor",
]
