"""The model contract beyond :class:`~genattr.harness.api.T2IModel`, and the host services built on it.

A benchmark reaches a model only through what this module describes, so any registered model — a built-in one or a
lab's own — runs every benchmark its capabilities allow. See docs/models.md for the model author's guide.

Capabilities
------------
A model registers with ``capabilities=[...]`` (registration metadata: ``genattr list models`` shows them without
importing torch). Each names a part of the contract:

``trainable`` (:class:`TrainableModel`)
    The registered factory (a class) offers ``recipe(scale, dataset)``, ``build(dataset, config)``, ``load(path)``;
    instances offer ``train(dataset, plan)`` and ``save(path)``. Leave-K-out, LDS, teacher agreement and the
    built-in Customized Model need it.
``customizable`` (:class:`CustomizableModel`)
    Instances offer ``customize(exemplars, token, plan)`` (a new model), ``save_delta(path)`` and
    ``apply_delta(path)`` (a new model: this one with a stored delta applied; the delta's format is the model's own
    business). The Customized Model benchmark needs it.

Every model also meets :class:`~genattr.harness.api.T2IModel` (generate, per-example diffusion loss, named
parameter groups with functional access) — what the attribution methods use.

Plans
-----
A training plan is a dict: the standard keys :data:`TRAIN_PLAN_KEYS` — ``steps``, ``batch_size``, ``lr``, ``seed``
(every random draw of training, initialisation included where :meth:`TrainableModel.build` has none of its own) and
``item_weights`` (``{item id: weight}``, 1 for unnamed items; weight 0 leaves an item out while every other draw of
training stays the full set's — the coupled retraining of leave-K-out and LDS) — plus any keys of the model's own
(caption dropout, flips, schedules …), which the model validates. A customization plan likewise:
:data:`CUSTOMIZE_PLAN_KEYS` (``weights`` a parameter selection, ``reg_dataset`` regularisation images or None) plus
the model's own keys.

Host services
-------------
:func:`model_type`, :func:`model_capabilities`, :func:`require_capabilities` (a one-line refusal before any work),
:func:`model_recipe`, :func:`load_or_train` / :func:`train_key` (the trained-model cache), :func:`load_or_customize`
(the customized-model cache: deltas over a base model), :func:`load_model` (a saved model directory).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from .errors import UserError

#: The capabilities a model can register.
MODEL_CAPABILITIES = ("trainable", "customizable")

#: Standard keys of a training plan (the model adds its own).
TRAIN_PLAN_KEYS = ("steps", "batch_size", "lr", "seed", "item_weights")

#: Standard keys of a customization plan (the model adds its own).
CUSTOMIZE_PLAN_KEYS = ("steps", "batch_size", "lr", "seed", "weights", "reg_dataset")

def check_plan(owner: str, option: str, plan: Mapping[str, Any] | None) -> None:
    """Values of a plan's standard keys (given ones only): ``steps`` and ``batch_size`` positive integers, ``lr`` a
    positive finite number, ``seed`` an integer — a one-line :class:`UserError` ``{owner}: option '{option}.steps'
    must be …`` before any work; a model's own keys are the model's to check."""
    if plan is None:
        return
    if not isinstance(plan, Mapping):
        raise UserError(f"{owner}: option {option!r} must be a table of options, got {plan!r}")
    from genattr.presets import Integer, Number, check_value

    specs = {"steps": Integer(min=1), "batch_size": Integer(min=1), "lr": Number(gt=0), "seed": Integer()}
    for key, spec in specs.items():
        if key in plan:
            check_value(owner, f"{option}.{key}", plan[key], spec)


def check_model_plan(model: str, kind: str, plan: Mapping[str, Any] | None, owner: str, option: str) -> None:
    """A plan's model-own keys and values, checked before any work by the registered class's optional
    ``check_plan(kind, plan)`` (``kind`` ``"train"`` or ``"customize"``; it raises :class:`UserError`): a one-line
    ``{owner}: option '{option}': …``. A model without one checks its keys when it trains or customizes, after
    whatever ran before."""
    if not plan:
        return
    fn = getattr(model_type(model), "check_plan", None)
    if not callable(fn):
        return
    try:
        fn(kind, dict(plan))
    except UserError as exc:
        raise UserError(f"{owner}: option {option!r}: {exc}") from None


#: Parts of a recipe (:meth:`TrainableModel.recipe`).
RECIPE_PARTS = ("model", "train", "dataset", "customize")

NS_TRAINED = "models/trained"
NS_CUSTOMIZED = "models/customized"


@runtime_checkable
class TrainableModel(Protocol):
    """Capability ``trainable``.

    Class-level (the registered factory):

    * ``recipe(scale, dataset=None) -> {"model": ..., "train": ..., "dataset": ..., "customize": ...}`` — the
      model's own configuration for a benchmark scale (``tiny``, ``small``, ``paper``) and dataset name (None or an
      unknown name: the model's generic recipe). ``model`` is the ``build`` config, ``train`` a training plan,
      ``dataset`` keyword arguments the model wants its data built with (resolution, …; may be empty),
      ``customize`` a customization plan. Raise :class:`~genattr.harness.errors.UserError` for a scale it has none
      for. No benchmark knows an architecture key: this is where they live.
    * ``build(dataset, config) -> model`` — an untrained model sized for ``dataset`` (resolution, channels,
      vocabulary) from a ``model`` config.
    * ``pin_config(dataset, config) -> config`` (optional) — fix what ``build`` would derive from ``dataset`` once,
      from the full training set, so that retraining on a subset never changes the architecture.
    * ``build`` and ``pin_config`` may take a keyword ``cache`` (the host's :class:`~genattr.harness.cache.Cache`):
      the host passes it when their signature names it, for parts trained once per dataset and shared by every model
      built for it (the built-in latent miniature's VAE).
    * ``load(path) -> model`` — a directory written by ``save``.
    * ``init_seed_key`` (optional, default None) — the ``build`` config key of the initialisation seed, when the
      model has one (LDS varies it with the training seed).
    * ``check_plan(kind, plan)`` (optional) — raise :class:`~genattr.harness.errors.UserError` for a bad key or
      value of a training (``kind="train"``) or customization (``"customize"``) plan; benchmarks call it through
      :func:`check_model_plan` before any work, so a misspelt option fails before the base model trains.

    Instance-level: ``train(dataset, plan) -> report`` trains in place (report: ``losses``, ``seconds``, …) and
    ``save(path)`` writes a directory with ``genattr_model.json`` naming the registered model (``{"model": name}``),
    so :func:`load_model` can find its class.
    """

    def train(self, dataset: Any, plan: Mapping[str, Any]) -> dict: ...

    def save(self, path: str) -> None: ...


@runtime_checkable
class CustomizableModel(Protocol):
    """Capability ``customizable``.

    * ``customize(exemplars, token, plan) -> model`` — a new model taught the concept of ``exemplars`` (a Dataset
      or Examples, captions holding ``token`` or getting it prepended) under a customization plan; ``self`` is
      unchanged.
    * ``save_delta(path)`` — on a customized model: write what customization changed into the directory ``path``.
    * ``apply_delta(path) -> model`` — on a base model: a new model, this one with the delta at ``path`` applied.
    """

    def customize(self, exemplars: Any, token: str, plan: Mapping[str, Any]) -> Any: ...

    def save_delta(self, path: str) -> None: ...

    def apply_delta(self, path: str) -> Any: ...


class ModelBase:
    """Defaults for the optional members of the contract; a model may inherit them (the built-ins do) or not."""

    name = "model"
    version = "0"
    #: see :class:`TrainableModel`
    init_seed_key: str | None = None
    #: classifier-free guidance scale ``generate`` uses by default
    guidance_scale: float = 1.0

    @classmethod
    def recipe(cls, scale: str, dataset: str | None = None) -> dict:
        raise UserError(f"model {cls.name!r} has no recipe for scale {scale!r}")

    @classmethod
    def build(cls, dataset, config: Mapping[str, Any]):
        return cls(**dict(config))

    @classmethod
    def pin_config(cls, dataset, config: Mapping[str, Any]) -> dict:
        return dict(config)

    def to(self, device):
        return self


# -- the registry side ------------------------------------------------------------------------------------------------
def _entry(model: str):
    from .manager import registry

    return registry("models").get(model)


def model_type(model: str):
    """The registered factory of ``model`` (for a lazily registered class: the class)."""
    factory = _entry(model).factory
    return factory.resolve() if hasattr(factory, "resolve") else factory


def model_capabilities(model: str) -> tuple[str, ...]:
    """The capabilities ``model`` registered (read from the registration: torch is not imported)."""
    caps = _entry(model).meta.get("capabilities") or ()
    return tuple(str(c) for c in caps)


def require_capabilities(model: str, needed: Sequence[str], who: str) -> None:
    """A one-line :class:`UserError` when ``model`` lacks a capability ``who`` (a benchmark) needs."""
    have = set(model_capabilities(model))
    missing = [c for c in needed if c not in have]
    if missing:
        raise UserError(f"{who} needs a {' and '.join(missing)} model; model {model!r} registers capabilities "
                        f"[{', '.join(sorted(have)) or 'none'}] (see docs/models.md)")


def model_recipe(model: str, scale: str, dataset: str | None = None) -> dict:
    """``model``'s recipe (:meth:`TrainableModel.recipe`) with every part present (a fresh copy)."""
    import copy

    fn = getattr(model_type(model), "recipe", None)
    if not callable(fn):
        raise UserError(f"model {model!r} has no recipe(scale, dataset); give model_config and train_config, or "
                        "set recipe to null")
    r = fn(scale, dataset)
    if not isinstance(r, Mapping):
        raise UserError(f"model {model!r}: recipe({scale!r}, {dataset!r}) returned {type(r).__name__}, not a dict")
    return {part: copy.deepcopy(dict(r.get(part) or {})) for part in RECIPE_PARTS}


def _takes_cache(fn) -> bool:
    import inspect

    try:
        return "cache" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def pin_model_config(model: str, dataset, config: Mapping[str, Any], cache=None) -> dict:
    """``pin_config(dataset, config)`` of ``model``'s class (with ``cache=`` when it takes one)."""
    pin = getattr(model_type(model), "pin_config", None)
    if not callable(pin):
        return dict(config)
    return dict(pin(dataset, dict(config), cache=cache) if _takes_cache(pin) else pin(dataset, dict(config)))


def init_seed_key(model: str) -> str | None:
    return getattr(model_type(model), "init_seed_key", None)


# -- the trained-model cache ------------------------------------------------------------------------------------------
def _version() -> str:
    import genattr

    return genattr.__version__


def _plan_for_key(plan: Mapping[str, Any], seed: int) -> dict:
    tc = {k: v for k, v in dict(plan).items() if k != "progress"}
    tc["seed"] = int(seed)
    if tc.get("item_weights"):
        tc["item_weights"] = {str(k): float(v) for k, v in sorted(dict(tc["item_weights"]).items())}
    return tc


def train_key(dataset, model_config: Mapping[str, Any], plan: Mapping[str, Any], seed: int = 0,
              model: str = "tiny-t2i") -> str:
    """The cache key of :func:`load_or_train`."""
    from .cache import Cache

    cls = model_type(model)
    return Cache.key("trained-model", model, str(getattr(cls, "version", "0")), dict(model_config),
                     _plan_for_key(plan, seed), dataset.fingerprint, _version())


def is_trained(cache, dataset, model_config, plan, seed: int = 0, model: str = "tiny-t2i") -> bool:
    """Whether the cache already holds that trained model."""
    return cache.lookup(NS_TRAINED, train_key(dataset, model_config, plan, seed, model)) is not None


def load_or_train(cache, dataset, model_config: Mapping[str, Any], plan: Mapping[str, Any], seed: int = 0,
                  model: str = "tiny-t2i", progress: bool = False, device: str = "cpu"):
    """The model ``model`` built for ``dataset`` with ``model_config`` (``build``) and trained under ``plan``
    (``seed`` overrides its seed) — from the cache when stored there, else trained and stored. On an accelerator
    (``device`` not ``cpu``) a missing model is trained there (stored under the same key, weights on the CPU) and
    the returned model is moved to the device. A damaged entry is recomputed."""
    cls = model_type(model)
    for member in ("build", "load"):
        if not callable(getattr(cls, member, None)):
            raise UserError(f"model {model!r} is not trainable: its class has no {member}() (see docs/models.md)")
    key = train_key(dataset, model_config, plan, seed, model)
    tc = {**dict(plan), "seed": int(seed), "progress": progress}
    device = str(device or "cpu")

    def create(tmp):
        m = cls.build(dataset, dict(model_config), cache=cache) if _takes_cache(cls.build) else \
            cls.build(dataset, dict(model_config))
        if device != "cpu":
            m = m.to(device)
        report = m.train(dataset, tc) or {}
        if device != "cpu":
            m = m.to("cpu")
        m.save(str(tmp / "model"))
        losses = report.get("losses") or []
        (tmp / "train_report.json").write_text(json.dumps(
            {k: report.get(k) for k in ("seconds", "images_per_second", "steps", "batch_size")}
            | {"device": device, "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None}))

    meta = {"model": model, "dataset": dataset.fingerprint, "seed": int(seed)}
    for attempt in range(2):
        path = cache.get_or_create(NS_TRAINED, key, create, meta)
        try:
            m = cls.load(str(path / "model"))
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            if attempt:
                raise
            cache.discard(NS_TRAINED, key, f"the model does not load: {type(exc).__name__}")
            continue
        return m.to(device) if device != "cpu" else m
    raise AssertionError("unreachable")  # pragma: no cover


# -- the customized-model cache ---------------------------------------------------------------------------------------
def customize_key(base_model, exemplars, token: str, plan: Mapping[str, Any], seed: int = 0) -> str:
    """The cache key of :func:`load_or_customize`."""
    from .cache import Cache
    from .data import examples_fingerprint

    cfg = {k: v for k, v in dict(plan).items() if k != "progress"}
    if cfg.get("reg_dataset") is not None:
        cfg["reg_dataset"] = examples_fingerprint(cfg["reg_dataset"])
    cfg["seed"] = int(seed)
    return Cache.key("customized-model", base_model.name, base_model.version, base_model.fingerprint,
                     examples_fingerprint(exemplars), token, cfg, _version())


def load_or_customize(cache, base_model, exemplars, token: str, plan: Mapping[str, Any], seed: int = 0,
                      progress: bool = False):
    """``base_model.customize(exemplars, token, plan)`` (``seed`` overrides the plan's), stored as the model's
    delta (``save_delta``); a second call rebuilds it with ``base_model.apply_delta``."""
    for member in ("customize", "apply_delta"):
        if not callable(getattr(base_model, member, None)):
            raise UserError(f"model {getattr(base_model, 'name', '?')!r} is not customizable: it has no {member}() "
                            "(see docs/models.md)")
    key = customize_key(base_model, exemplars, token, plan, seed)
    cfg = {**dict(plan), "seed": int(seed), "progress": progress}

    def create(tmp):
        base_model.customize(exemplars, token, cfg).save_delta(str(tmp / "delta"))

    meta = {"base": base_model.fingerprint, "token": token, "seed": int(seed)}
    for attempt in range(2):
        path = cache.get_or_create(NS_CUSTOMIZED, key, create, meta)
        try:
            return base_model.apply_delta(str(path / "delta"))
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            if attempt:
                raise
            cache.discard(NS_CUSTOMIZED, key, f"the delta does not load: {type(exc).__name__}")
    raise AssertionError("unreachable")  # pragma: no cover


# -- saved models -----------------------------------------------------------------------------------------------------
def saved_model_name(path) -> str | None:
    """The registered model name a directory written by ``save`` records (``genattr_model.json``), or None."""
    from pathlib import Path

    meta = Path(path).expanduser() / "genattr_model.json"
    if not meta.is_file():
        return None
    try:
        name = json.loads(meta.read_text()).get("model")
    except (OSError, ValueError):
        raise UserError(f"{meta} is not valid JSON") from None
    return str(name) if name else None


def load_model(path, model: str | None = None, **options):
    """A saved model: the registered model named by the directory's ``genattr_model.json`` (else ``model``) loads
    it with its class's ``load(path, **options)``."""
    name = saved_model_name(path) or model
    if name is None:
        raise UserError(f"{path} holds no genattr_model.json; name the model that reads it")
    cls = model_type(name)
    loader = getattr(cls, "load", None)
    if not callable(loader):
        raise UserError(f"model {name!r} cannot load a saved directory (its class has no load())")
    return loader(str(path), **options)
