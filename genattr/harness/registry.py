"""Typed registries of components, filled by the ``register_*`` hooks.

Each entry records its factory and the plugin that registered it (plugin name, distribution name and version).
An unknown name is an error listing close matches. Two plugins registering the same name is a *clash*: the
registry records it instead of refusing to build, so everything that does not need that name keeps working
(the ``plugins`` and ``list`` commands show the clash); asking for the name is an error naming both plugins and
how to fix it.
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
        #: usable entries by name (a clashing name is not here)
        self.entries: dict[str, Entry] = {}
        #: names registered more than once: every entry that claimed the name, in registration order
        self.clashes: dict[str, list[Entry]] = {}

    def add(self, entry: Entry) -> None:
        """Add ``entry``; a name already taken becomes a clash (recorded, not raised). A nameless entry is a
        :class:`PluginError`."""
        if not isinstance(entry.name, str) or not entry.name:
            raise PluginError(f"plugin {entry.plugin!r} registered a {SINGULAR[self.kind]} without a name")
        if entry.name in self.clashes:
            self.clashes[entry.name].append(entry)
            return
        old = self.entries.pop(entry.name, None)
        if old is not None:
            self.clashes[entry.name] = [old, entry]
            return
        self.entries[entry.name] = entry

    def clash_message(self, name: str) -> str:
        """One line: which plugins registered ``name`` and how to fix it."""
        claimants = self.clashes[name]
        builtin = {e.plugin for e in claimants if e.distribution == "genattr"}
        plugins = list(dict.fromkeys(e.plugin for e in claimants))
        who = " and by ".join(f"the built-in plugin {p!r}" if p in builtin else f"plugin {p!r}" for p in plugins)
        if len(plugins) == 1:
            who += " (twice)"
        dists = list(dict.fromkeys(e.distribution or e.plugin for e in claimants if e.plugin not in builtin))
        if not dists:
            fix = "report it to genattr"
        elif builtin or len(dists) == 1:
            fix = f"fix: pip uninstall {dists[0]}"
        else:
            fix = f"fix: pip uninstall one of {', '.join(dists)}"
        return (f"{SINGULAR[self.kind]} name {name!r} is registered by {who}; {fix}, or load only the plugins you "
                f"want with GENATTR_LOAD_PLUGINS=name,...; the plugins command lists them")

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            pass
        if name in self.clashes:
            raise PluginError(self.clash_message(name))
        raise UserError(
            f"unknown {SINGULAR[self.kind]} {name!r}{did_you_mean(name, self.names())}; "
            f"see 'genattr list {self.kind}'"
        )

    def names(self) -> list[str]:
        """Every registered name, clashing ones included (asking for those is an error)."""
        return sorted({*self.entries, *self.clashes})

    def all_entries(self) -> list[Entry]:
        """Usable and clashing entries, by name then registration order."""
        out = list(self.entries.values()) + [e for es in self.clashes.values() for e in es]
        return sorted(out, key=lambda e: e.name)

    def __contains__(self, name: str) -> bool:
        return name in self.entries or name in self.clashes

    def __iter__(self):
        """The usable entries (clashing names left out), by name."""
        return iter(sorted(self.entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self.entries)
