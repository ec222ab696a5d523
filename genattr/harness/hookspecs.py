"""The hooks a genattr plugin can implement (pluggy project ``genattr``; full docs: CONTRIBUTING.md)."""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("genattr")
hookimpl = HookimplMarker("genattr")


@hookspec
def register_methods(register):
    """Register attribution methods: ``register(name, factory, description=..., **meta)``."""


@hookspec
def register_models(register):
    """Register text-to-image model adapters: ``register(name, factory, description=..., **meta)``."""


@hookspec
def register_metrics(register):
    """Register metrics: ``register(name, factory, description=..., higher_is_better=..., **meta)``."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, factory, description=..., **meta)``."""


@hookspec
def register_benchmarks(register):
    """Register benchmarks: ``register(name, factory, description=..., **meta)``."""


@hookspec
def register_executors(register):
    """Register executors that run benchmark cells: ``register(name, factory, description=..., **meta)``."""


@hookspec
def register_commands(cli):
    """Add subcommands to the ``genattr`` click group ``cli``."""
