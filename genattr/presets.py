"""One preset mechanism for every configurable component: defaults, then a named preset (usually the scale), then
the user's overrides — with every option name and value checked before any work.

Built-in methods and benchmarks resolve their configuration through :func:`resolve`; a plugin can do the same::

    from genattr.presets import Choice, Flag, Integer, resolve

    SCALES = {"tiny": {"steps": 5}, "small": {"steps": 50}}
    COMMON = {"flip": False, "mode": "fast"}
    SPECS = {"steps": Integer(min=1), "mode": Choice("fast", "exact")}

    cfg = resolve("my-method", scale, overrides, presets=SCALES, common=COMMON, specs=SPECS)

* an unknown option name, preset name or enum value is a one-line :class:`~genattr.UserError` with a did-you-mean
  suggestion (``unknown my-method option 'stpes' (did you mean: steps?)``);
* values are checked against ``specs``; an option whose default is a boolean is a :class:`Flag` without being
  declared (``flip=flase`` is refused instead of being read as true);
* ``merge`` names options whose table values adjust the preset's table instead of replacing it;
* the result is a fresh dict (deep copies of the presets): the caller may change it.

Checks of one value outside a full resolution: :func:`check_value`; of option names only: :func:`check_names`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Mapping

from genattr.harness.errors import UserError, did_you_mean

__all__ = ["Choice", "Flag", "Integer", "Number", "Text", "Table", "Spec", "check_names", "check_value",
           "check_values", "resolve"]


class Spec:
    """What a value must be. ``nullable``: ``None`` is allowed (the option's "not set")."""

    def __init__(self, nullable: bool = False):
        self.nullable = nullable

    def describe(self) -> str:  # pragma: no cover - overridden
        return "a value"

    def ok(self, value: Any) -> bool:  # pragma: no cover - overridden
        return True

    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` is acceptable, else the end of the error line (``must be …, got …``)."""
        if value is None and self.nullable:
            return None
        if self.ok(value):
            return None
        return f"must be {self.describe()}{' or null' if self.nullable else ''}, got {value!r}"


class Flag(Spec):
    """``true`` or ``false`` (a JSON/TOML boolean; the strings ``"true"`` / ``"flase"`` are refused)."""

    def describe(self) -> str:
        return "true or false"

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)


class Integer(Spec):
    """An integer (not a boolean) in ``[min, max]``."""

    def __init__(self, min: int | None = None, max: int | None = None, nullable: bool = False):  # noqa: A002
        super().__init__(nullable)
        self.min, self.max = min, max

    def describe(self) -> str:
        if self.min == 1 and self.max is None:
            return "a positive integer"
        if self.min == 0 and self.max is None:
            return "a non-negative integer"
        lo = "" if self.min is None else f" >= {self.min}"
        hi = "" if self.max is None else f" <= {self.max}"
        return f"an integer{lo}{' and' if lo and hi else ''}{hi}"

    def ok(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and (self.min is None or value >= self.min) and (self.max is None or value <= self.max))


class Number(Spec):
    """A finite number (not a boolean) above ``gt`` / at least ``min`` / at most ``max``."""

    def __init__(self, min: float | None = None, max: float | None = None, gt: float | None = None,  # noqa: A002
                 nullable: bool = False):
        super().__init__(nullable)
        self.min, self.max, self.gt = min, max, gt

    def describe(self) -> str:
        if self.gt == 0 and self.min is None and self.max is None:
            return "a positive number"
        if self.min == 0 and self.gt is None and self.max is None:
            return "a non-negative number"
        parts = [f"> {self.gt}" if self.gt is not None else "", f">= {self.min}" if self.min is not None else "",
                 f"<= {self.max}" if self.max is not None else ""]
        bounds = " and ".join(p for p in parts if p)
        return f"a finite number{' ' + bounds if bounds else ''}"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return ((self.gt is None or value > self.gt) and (self.min is None or value >= self.min)
                and (self.max is None or value <= self.max))


class Text(Spec):
    """A non-empty string."""

    def describe(self) -> str:
        return "a non-empty string"

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)


class Table(Spec):
    """A table of options (a dict)."""

    def describe(self) -> str:
        return "a table of options"

    def ok(self, value: Any) -> bool:
        return isinstance(value, Mapping)


class Choice(Spec):
    """One of the listed values; a near-miss string gets a did-you-mean suggestion."""

    def __init__(self, *values: Any, nullable: bool = False):
        super().__init__(nullable)
        self.values = tuple(values)

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)

    def ok(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def problem(self, value: Any) -> str | None:
        msg = super().problem(value)
        if msg and isinstance(value, str):
            msg += did_you_mean(value, [str(v) for v in self.values])
        return msg


def check_value(owner: str, key: str, value: Any, spec: Spec) -> None:
    """A one-line :class:`UserError` ``{owner}: option {key!r} must be …, got …`` unless ``value`` meets ``spec``."""
    msg = spec.problem(value)
    if msg:
        raise UserError(f"{owner}: option {key!r} {msg}")


def check_values(owner: str, cfg: Mapping[str, Any], specs: Mapping[str, Spec]) -> None:
    """:func:`check_value` for every key of ``specs`` present in ``cfg``, in the order of ``specs``."""
    for key, spec in specs.items():
        if key in cfg:
            check_value(owner, key, cfg[key], spec)


def check_names(owner: str, given: Iterable[str], known: Iterable[str], what: str = "option") -> None:
    """A one-line :class:`UserError` naming the first unknown name of ``given`` (sorted), with a did-you-mean
    suggestion and the known names."""
    known = sorted(set(known))
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"{owner}: unknown {what} {unknown[0]!r}{did_you_mean(unknown[0], known)}; known: "
                        f"{', '.join(known)}")


def flag_specs(*tables: Mapping[str, Any]) -> dict[str, Spec]:
    """A :class:`Flag` for every option whose value is a boolean in one of ``tables`` (the defaults and presets)."""
    return {k: Flag() for t in tables for k, v in t.items() if isinstance(v, bool)}


def resolve(owner: str, preset: str, overrides: Mapping[str, Any], *, presets: Mapping[str, Mapping[str, Any]],
            common: Mapping[str, Any] | None = None, optional: Mapping[str, Any] | None = None,
            specs: Mapping[str, Spec] | None = None, merge: Iterable[str] = (), what: str = "scale",
            extra_names: Iterable[str] = ()) -> dict:
    """``common``, then ``presets[preset]``, then ``overrides``: the configuration of ``owner``.

    Checked first, each as one line naming ``owner``: the preset name (``what`` says what it is, e.g. ``scale``),
    every override's name (known: the keys of ``common``, of every preset, of ``optional`` — options that enter the
    configuration only when given — and ``extra_names``), and every value of the result that ``specs`` (plus a
    :class:`Flag` for each boolean default) constrains. Keys in ``merge`` whose override and preset values are both
    tables are merged (the override's keys win) instead of replaced."""
    common = dict(common or {})
    optional = dict(optional or {})
    if preset not in presets:
        raise UserError(f"{owner}: unknown {what} {preset!r}{did_you_mean(str(preset), list(presets))}; choose from "
                        f"{', '.join(presets)}")
    known = set(common) | set(optional) | set(extra_names) | {k for p in presets.values() for k in p}
    check_names(owner, overrides, known)
    cfg = {**copy.deepcopy(common), **copy.deepcopy(dict(presets[preset]))}
    merge = set(merge)
    for key, value in overrides.items():
        if key in merge and isinstance(value, Mapping) and isinstance(cfg.get(key), Mapping):
            cfg[key] = {**cfg[key], **copy.deepcopy(dict(value))}
        else:
            cfg[key] = copy.deepcopy(value)
    all_specs = {**flag_specs(common, optional, *presets.values()), **dict(specs or {})}
    check_values(owner, cfg, all_specs)
    return cfg
