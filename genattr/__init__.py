"""genattr: a plugin-based benchmark harness for data attribution in text-to-image diffusion models.

The plugin author's API — everything a plugin needs, so that no plugin imports ``genattr.harness.*``:

* :data:`hookimpl` (decorate your hook functions), :class:`lazy` (a factory named ``"module:attribute"``, imported
  only when called), :func:`load_plugins`, and the accessors ``get_method``, ``get_model``, ``get_metric``,
  ``get_dataset``, ``get_benchmark``, ``get_executor`` (a registered name and the component's configuration as
  keyword arguments);
* the component protocols and their data: ``AttributionMethod``, ``T2IModel``, ``Dataset``, ``Metric``,
  ``Benchmark``, ``Executor``, ``Query``, ``Example``, ``AttributionContext``, ``Cell``, ``RunEnv``,
  ``PARAMETER_SELECTIONS``, ``SCALES``;
* ``UserError`` (a mistake the user can fix: one line, exit status 2) and ``ScoringError``;
* ``InMemoryDataset`` and ``ConcatDataset`` (datasets from tensors / parts), ``score`` (the one scoring path:
  prepare + attribute + checks);
* the model contract beyond ``T2IModel`` (docs/models.md): ``ModelBase`` (defaults for its optional members),
  ``TrainableModel``, ``CustomizableModel``, ``MODEL_CAPABILITIES``, ``TRAIN_PLAN_KEYS``, ``CUSTOMIZE_PLAN_KEYS``;
* host services any benchmark or method uses, whatever the model: ``model_type``, ``model_capabilities``,
  ``require_capabilities``, ``model_recipe``, ``load_or_train`` / ``load_or_customize`` (the trained- and
  customized-model cache), ``load_model`` (a saved model directory), ``query_loss`` / ``regenerate`` (the two sides
  of ΔL and ΔG), and — imported on first use — ``TeacherStore``, ``TeacherRankings``, ``rankings_from_file``,
  ``training_queries``, ``load_query_dir`` (the teacher-ranking store);
* :mod:`genattr.presets` (imported on its own): the one preset mechanism — defaults, a preset per scale and the
  user's overrides, with option names and values checked (``resolve``, ``Flag``, ``Integer``, ``Choice`` …);
* :mod:`genattr.testing` (imported on its own): helpers for plugins' unit tests — a tiny context, items as
  queries, the runner's checks of a method's scores;
* seeding helpers: ``derive_seed``, ``generator``, ``numpy_rng``, ``item_noise``, ``strided_timesteps``;
* for tests: ``register_plugin(obj, name)`` / ``unregister_plugin(name)`` (a throwaway plugin inside a test).

Importing ``genattr`` is cheap: torch and diffusers load only when a component needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The built-in plugin modules, registered exactly as third-party plugins are (the host itself names none).
BUILTIN_PLUGINS = (
    "genattr.datasets",
    "genattr.plugins.models",
    "genattr.plugins.methods",
    "genattr.plugins.metrics",
    "genattr.benchmarks",
    "genattr.plugins.executors",
    "genattr.plugins.commands",
)

from .harness.api import (  # noqa: E402
    PARAMETER_SELECTIONS,
    SCALES,
    AttributionContext,
    AttributionMethod,
    Benchmark,
    Cell,
    Dataset,
    Example,
    Executor,
    Metric,
    Query,
    RunEnv,
    T2IModel,
)
from .harness.data import ConcatDataset, InMemoryDataset  # noqa: E402
from .harness.counterfactual import query_loss, regenerate  # noqa: E402
from .harness.errors import ScoringError, UserError  # noqa: E402
from .harness.hookspecs import hookimpl  # noqa: E402
from .harness.manager import load_plugins, register_plugin, unregister_plugin  # noqa: E402
from .harness.models import (  # noqa: E402
    CUSTOMIZE_PLAN_KEYS,
    MODEL_CAPABILITIES,
    TRAIN_PLAN_KEYS,
    CustomizableModel,
    ModelBase,
    TrainableModel,
    load_model,
    load_or_customize,
    load_or_train,
    model_capabilities,
    model_recipe,
    model_type,
    require_capabilities,
)
from .harness.registry import lazy  # noqa: E402
from .harness.scoring import score  # noqa: E402
from .harness.seeding import derive_seed, generator, item_noise, numpy_rng, strided_timesteps  # noqa: E402


SINGULAR_KIND = {"methods": "method", "models": "model", "metrics": "metric", "datasets": "dataset",
                 "benchmarks": "benchmark", "executors": "executor"}


def _entry(kind: str, name: str):
    from .harness.manager import registry

    return registry(kind).get(name)


#: Methods every instance of a kind must have (checked when created, so an incomplete plugin component is one line
#: naming its plugin, not a traceback in the middle of a run).
REQUIRED_METHODS = {"methods": ("prepare", "attribute")}


def _create(kind: str, name: str, config: dict):
    entry = _entry(kind, name)
    obj = entry.create(**config)
    missing = [m for m in REQUIRED_METHODS.get(kind, ()) if not callable(getattr(obj, m, None))]
    if missing:
        from .harness.errors import UserError

        raise UserError(f"{SINGULAR_KIND.get(kind, kind)} {name!r} (plugin {entry.plugin!r}) has no "
                        f"{' and no '.join(m + '()' for m in missing)}; see CONTRIBUTING.md for the protocol")
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
    "__version__", "BUILTIN_PLUGINS", "hookimpl", "lazy", "load_plugins", "register_plugin", "unregister_plugin", "get_method", "get_model", "get_metric",
    "get_dataset", "get_benchmark", "get_executor", "PARAMETER_SELECTIONS", "SCALES", "AttributionContext",
    "AttributionMethod", "Benchmark", "Cell", "Dataset", "Example", "Executor", "Metric", "Query", "RunEnv", "T2IModel",
    "ConcatDataset", "InMemoryDataset", "ScoringError", "UserError", "score", "derive_seed", "generator",
    "item_noise", "numpy_rng", "strided_timesteps", "query_loss", "regenerate", "CUSTOMIZE_PLAN_KEYS",
    "MODEL_CAPABILITIES", "TRAIN_PLAN_KEYS", "CustomizableModel", "ModelBase", "TrainableModel", "load_model",
    "load_or_customize", "load_or_train", "model_capabilities", "model_recipe", "model_type", "require_capabilities",
    "TeacherStore", "TeacherRankings", "rankings_from_file", "training_queries", "load_query_dir",
]

_TEACHER = ("TeacherStore", "TeacherRankings", "rankings_from_file", "training_queries", "load_query_dir")


def __getattr__(name: str):
    """The teacher-ranking store is imported on first use (it imports numpy)."""
    if name in _TEACHER:
        from .harness import teacher

        return getattr(teacher, name)
    raise AttributeError(f"module 'genattr' has no attribute {name!r}")
