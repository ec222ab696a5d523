"""Per-scale presets shared by the built-in methods whose defaults follow the scale (the TRAK family, DataInf).

A method built on :class:`ScalePresets` declares ``PRESETS`` (``{scale: {option: value}}``) and ``COMMON`` (options
shared by every scale); every such method also takes ``seed`` (:meth:`ScalePresets.seed_for`).
``Method(scale=None, **overrides)``: the configuration is ``COMMON``, then the preset of the scale, then the explicit
overrides, plus ``"scale"``. Without an explicit ``scale`` the method follows the run:
:meth:`ScalePresets.resolve_config` (the protocol method the runner calls once per benchmark before the first cell,
see ``AttributionMethod`` in :mod:`genattr.harness.api`) adopts the run's scale, so the recorded and hashed
configuration is the one the cells use. Used directly (no runner), the method resolves from ``ctx.scale`` on first
use.
"""

from __future__ import annotations

from typing import Any

from genattr.harness.errors import UserError


def check_seed(method: str, value: Any) -> None:
    """Option ``seed`` must be an integer or null (a one-line :class:`UserError` otherwise)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{method}: option 'seed' must be an integer or null, got {value!r}")


def method_seed(ctx, value: Any) -> int:
    """The seed a method draws with: its option ``seed`` when given, else the run's ``ctx.seed`` (with a benchmark's
    ``model_seeds``, the model seed)."""
    return int(ctx.seed if value is None else value)


class ScalePresets:
    """Mixin: ``PRESETS`` per scale, ``COMMON`` options, explicit overrides; ``config`` always fully resolved."""

    name = "method"
    PRESETS: dict = {}
    COMMON: dict = {}
    #: Options added after a method's results were published, with their defaults: they enter the configuration
    #: only when given, so the configuration of a run that does not use one — and every cache entry, config hash and
    #: result keyed on it — is what it was before the option existed. Read them with :meth:`option`.
    OPTIONAL: dict = {}

    #: Value specifications of options (:mod:`genattr.presets`); boolean defaults are checked without one.
    SPECS: dict = {}

    def _init_presets(self, scale: str | None, overrides: dict[str, Any]) -> None:
        from genattr.presets import check_names

        check_names(self.name, overrides, set(self.COMMON) | set(self.OPTIONAL)
                    | {k for p in self.PRESETS.values() for k in p} | {"seed"})
        check_seed(self.name, overrides.get("seed"))
        self._explicit_scale = scale is not None
        # a null seed is the run's seed: the same configuration (and hash) as leaving it out
        self._overrides = {k: v for k, v in overrides.items() if not (k == "seed" and v is None)}
        self.config = self._resolve(scale or "tiny")

    def _resolve(self, scale: str) -> dict:
        """``COMMON`` + ``PRESETS[scale]`` + overrides, names and values checked (:func:`genattr.presets.resolve`);
        subclasses validate and normalise on top."""
        from genattr.presets import resolve

        return {**resolve(self.name, scale, self._overrides, presets=self.PRESETS, common=self.COMMON,
                          optional=self.OPTIONAL, specs=self.SPECS, extra_names=("seed",)), "scale": scale}

    def seed_for(self, ctx) -> int:
        """The seed of every draw the method makes (projection, timesteps, noise, captions): option ``seed`` when
        given, else the run's (``ctx.seed``; with a benchmark's ``model_seeds`` that is the model seed). ``seed``
        varies the method's own randomness on the same models and queries — a second *method* seed — and enters the
        configuration (hash, cache keys) only when given."""
        return method_seed(ctx, self.config.get("seed"))

    def option(self, cfg: dict, key: str) -> Any:
        """``cfg[key]``, or the default of an :attr:`OPTIONAL` option that was not given."""
        return cfg[key] if key in cfg else self.OPTIONAL[key]

    def resolve_config(self, scale: str, preset_hint: str | None = None) -> dict:
        """The configuration the method will run with at ``scale`` (the preset hint of a benchmark is not used by
        these methods): adopts the scale's preset unless one was given explicitly."""
        if not self._explicit_scale and scale != self.config["scale"]:
            self.config = self._resolve(scale)
        return self.config

    def _config_for(self, ctx) -> dict:
        return self.resolve_config(ctx.scale)
