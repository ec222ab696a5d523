"""The plugin manager: one pluggy ``PluginManager("genattr")``, loaded once and lazily.

Installed plugins come from the entry-point group ``genattr``; ``GENATTR_LOAD_PLUGINS=a,b`` loads only those
(entry-point or distribution names; set but empty: none). Built-in plugins are ordinary plugin modules listed in
:func:`default_plugins` (``genattr.BUILTIN_PLUGINS``). A plugin that fails to import (any exception, ``sys.exit()`` included — only Ctrl-C
stops loading), implements a hook that does not exist or with arguments its spec lacks, or raises while registering
is reported (a warning, and the ``plugins`` command) and skipped — or aborts with ``GENATTR_STRICT_PLUGINS=1``. Two
plugins registering the same component name do not stop the others: the registry records the clash (see
:mod:`~genattr.harness.registry`). Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import os
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import KINDS, Entry, Registry

ENTRY_POINT_GROUP = "genattr"



def default_plugins() -> tuple[str, ...]:
    """The built-in plugin modules, registered exactly as third-party plugins are. The package names them
    (``genattr.BUILTIN_PLUGINS``): the host itself depends on none of them."""
    import genattr

    return tuple(genattr.BUILTIN_PLUGINS)


pm = pluggy.PluginManager("genattr")
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False


@dataclass
class PluginInfo:
    name: str
    builtin: bool
    distribution: str | None = None
    version: str | None = None
    error: str | None = None  # set when the plugin was skipped
    hooks: list[str] = field(default_factory=list)


#: Every plugin seen by :func:`load_plugins`, loaded or skipped, by name.
plugin_info: dict[str, PluginInfo] = {}


def strict() -> bool:
    return os.environ.get("GENATTR_STRICT_PLUGINS", "").strip() not in ("", "0", "false", "no")


def _genattr_version() -> str:
    from genattr import __version__

    return __version__


def _failure(exc: BaseException) -> str:
    """How a plugin failed, in one phrase: ``"ImportError: no module x"``, ``"it called sys.exit(3)"``."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})" if exc.code is not None else "it called sys.exit()"
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fatal(exc: BaseException) -> bool:
    """Exceptions that are the user's, not the plugin's: Ctrl-C (and the interpreter shutting down)."""
    return isinstance(exc, (KeyboardInterrupt, GeneratorExit))


def _report(name: str, message: str, exc: BaseException | None = None) -> None:
    info = plugin_info.setdefault(name, PluginInfo(name=name, builtin=False))
    info.error = message
    if strict():
        raise PluginError(f"plugin {name!r} failed: {message}") from exc
    warnings.warn(f"genattr: skipping plugin {name!r}: {message}", RuntimeWarning, stacklevel=3)


def _validate(name: str, plugin) -> str | None:
    """Why ``plugin`` must be rejected (a hookimpl matching no hookspec), or None."""
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            return f"implements unknown hook {caller.name!r} (no such hookspec)"
    return None


def register_plugin(plugin, name: str, *, builtin: bool = False, distribution: str | None = None,
                    version: str | None = None) -> bool:
    """Register a plugin object or module under ``name``; returns False (after reporting) when rejected."""
    with _lock:
        try:
            pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - pluggy rejects e.g. a hookimpl with arguments its spec lacks
            if pm.get_plugin(name) is plugin:
                pm.unregister(name=name)
            plugin_info[name] = PluginInfo(name, builtin, distribution, version)
            _report(name, f"cannot be registered: {_failure(exc)}", exc)
            return False
        problem = _validate(name, plugin)
        if problem:
            pm.unregister(name=name)
            plugin_info[name] = PluginInfo(name, builtin, distribution, version)
            _report(name, problem)
            return False
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        plugin_info[name] = PluginInfo(name, builtin, distribution, version, hooks=hooks)
        return True


def unregister_plugin(name: str) -> None:
    with _lock:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        plugin_info.pop(name, None)


def _selected(env: str | None, ep: metadata.EntryPoint) -> bool:
    if env is None:
        return True
    wanted = {s.strip() for s in env.split(",") if s.strip()}
    dist = ep.dist.name if ep.dist is not None else None
    return ep.name in wanted or (dist is not None and dist in wanted)


def load_plugins() -> None:
    """Load built-in and installed plugins, once."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        env = os.environ.get("GENATTR_LOAD_PLUGINS")
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        if env is not None:
            names = {ep.name for ep in eps} | {ep.dist.name for ep in eps if ep.dist is not None}
            for wanted in sorted({s.strip() for s in env.split(",") if s.strip()} - names):
                from .errors import did_you_mean

                warnings.warn(f"genattr: GENATTR_LOAD_PLUGINS names {wanted!r}, which no installed plugin is"
                              f"{did_you_mean(wanted, names)}; installed: {', '.join(sorted(names)) or 'none'}",
                              RuntimeWarning, stacklevel=2)
        for ep in eps:
            if not _selected(env, ep) or pm.get_plugin(ep.name) is not None:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - any import failure is the plugin's, sys.exit() too
                if _fatal(exc):
                    raise
                plugin_info[ep.name] = PluginInfo(ep.name, False, dist, version)
                _report(ep.name, f"import failed: {_failure(exc)}", exc)
                continue
            register_plugin(module, ep.name, distribution=dist, version=version)
        for modname in default_plugins():
            if pm.get_plugin(modname) is not None:
                continue
            try:
                module = importlib.import_module(modname)
            except BaseException as exc:  # noqa: BLE001
                if _fatal(exc):
                    raise
                plugin_info[modname] = PluginInfo(modname, True, "genattr", _genattr_version())
                _report(modname, f"import failed: {_failure(exc)}\n{traceback.format_exc()}", exc)
                continue
            register_plugin(module, modname, builtin=True, distribution="genattr", version=_genattr_version())


# -- registries --------------------------------------------------------------------------------------------------
_registries: dict[tuple, Registry] = {}


def _state() -> tuple:
    return tuple(sorted(name for name, _ in pm.list_name_plugin()))


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`~genattr.harness.registry.KINDS`), rebuilt when plugins change."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}")
    load_plugins()
    with _lock:
        key = (kind, _state())
        reg = _registries.get(key)
        if reg is not None:
            return reg
        reg = Registry(kind)
        caller = getattr(pm.hook, f"register_{kind}")
        for impl in reversed(caller.get_hookimpls()):  # registration order
            info = plugin_info.get(impl.plugin_name) or PluginInfo(impl.plugin_name, False)

            def register(name, factory, description: str = "", _info=info, **meta):
                if not description:
                    doc = (getattr(factory, "__doc__", None) or "").strip()
                    description = doc.splitlines()[0] if doc else ""
                try:
                    reg.add(Entry(kind, name, factory, _info.name, _info.distribution, _info.version,
                                  description, meta))
                except PluginError as exc:  # a nameless entry: skip it, keep the plugin's others
                    _report(_info.name, str(exc), exc)

            kwargs = {a: register for a in impl.argnames if a == "register"}
            try:
                impl.function(**kwargs)
            except PluginError:
                raise
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a hook is the plugin's failure too
                if _fatal(exc):
                    raise
                _report(impl.plugin_name, f"register_{kind} raised {_failure(exc)}", exc)
        if len(_registries) > 64:
            _registries.clear()
        _registries[key] = reg
        return reg


def clashes() -> list[dict]:
    """Every component name registered by more than one plugin: ``[{"kind", "name", "plugins", "message"}]``."""
    out = []
    for kind in KINDS:
        reg = registry(kind)
        for name, entries in sorted(reg.clashes.items()):
            out.append({"kind": kind, "name": name, "plugins": list(dict.fromkeys(e.plugin for e in entries)),
                        "message": reg.clash_message(name)})
    return out


def add_commands(cli) -> None:
    """Call every plugin's ``register_commands(cli)``; one that raises is reported and skipped, not fatal."""
    load_plugins()
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        kwargs = {a: cli for a in impl.argnames if a == "cli"}
        try:
            impl.function(**kwargs)
        except PluginError:
            raise
        except BaseException as exc:  # noqa: BLE001
            if _fatal(exc):
                raise
            _report(impl.plugin_name, f"register_commands raised {_failure(exc)}", exc)


def all_plugins(include_builtin: bool = False) -> list[PluginInfo]:
    load_plugins()
    return [p for p in sorted(plugin_info.values(), key=lambda p: (p.builtin, p.name))
            if include_builtin or not p.builtin]
