"""Typed registries of components, filled by the ``register_*`` hooks.

Each entry records its factory and the plugin that registered it (plugin name, distribution name and version).
A duplicate name is an error naming both plugins; an unknown name is an error listing close matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PluginError, UserError, did_you_mean

KINDS = ("methods", "models", "metrics", "datasets", "benchmarks", "executors")
SINGULAR = {"methods": "method", "models": "model", "metrics": "metric", "datasets": "dataset",
            "benchmarks": "benchmark", "executors": "executor"}


@dataclass
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None = None
    distribution_version: str | None = None
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The component's own version: ``meta['version']`` or the factory's ``version`` attribute, else the
        distribution version."""
        v = self.meta.get("version") or getattr(self.factory, "version", None)
        return str(v or self.distribution_version or "0")

    def create(self, **config):
        return self.factory(**config)

    def to_json(self) -> dict:
        return {
            "kind": SINGULAR[self.kind],
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "distribution_version": self.distribution_version,
            **{k: v for k, v in self.meta.items() if k != "version" and _jsonable(v)},
        }


class lazy:
    """A factory named by ``"module:attribute"``, imported only when called — so listing components never imports
    torch. Declare the component's ``version`` and ``description`` in the ``register`` call alongside it."""

    def __init__(self, target: str):
        self.target = target

    def resolve(self):
        import importlib

        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


class Registry:
    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        if not isinstance(entry.name, str) or not entry.name:
            raise PluginError(f"plugin {entry.plugin!r} registered a {SINGULAR[self.kind]} without a name")
        old = self.entries.get(entry.name)
        if old is not None:
            raise PluginError(
                f"duplicate {SINGULAR[self.kind]} name {entry.name!r}: registered by plugin {old.plugin!r} "
                f"and by plugin {entry.plugin!r}"
            )
        self.entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise UserError(
                f"unknown {SINGULAR[self.kind]} {name!r}{did_you_mean(name, self.entries)}; "
                f"see 'genattr list {self.kind}'"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(sorted(self.entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self.entries)
