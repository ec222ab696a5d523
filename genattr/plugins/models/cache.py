"""Trained and customized models in the content-addressed cache (DESIGN.md, Results and cache).

``load_or_train`` keys an entry on the dataset fingerprint, the model's name + version + configuration, the
training configuration, the seed and the genattr version; ``load_or_customize`` on the base model's fingerprint,
the exemplars' fingerprint, the token, the customization configuration and the seed. A second call loads instead
of training; an entry whose checksum fails (or that cannot be loaded) is recomputed.
"""

from __future__ import annotations

from typing import Any, Mapping

NS_TRAINED = "models/trained"
NS_CUSTOMIZED = "models/customized"


def _model_class(model: str):
    from genattr.harness.manager import registry

    factory = registry("models").get(model).factory
    return factory.resolve() if hasattr(factory, "resolve") else factory


def _version() -> str:
    import genattr

    return genattr.__version__


def train_key(dataset, model_config: Mapping[str, Any], train_config: Mapping[str, Any], seed: int = 0,
              model: str = "tiny-t2i") -> str:
    """The cache key of :func:`load_or_train`."""
    from genattr.harness.cache import Cache

    cls = _model_class(model)
    tc = {k: v for k, v in dict(train_config).items() if k != "progress"}
    tc["seed"] = int(seed)
    return Cache.key("trained-model", model, str(getattr(cls, "version", "0")), dict(model_config), tc,
                     dataset.fingerprint, _version())


def load_or_train(cache, dataset, model_config: Mapping[str, Any], train_config: Mapping[str, Any], seed: int = 0,
                  model: str = "tiny-t2i", progress: bool = False, device: str = "cpu"):
    """The model ``model`` built for ``dataset`` (``cls.for_dataset`` when the class has it) with
    ``model_config`` and trained with ``train_config`` (``seed`` overrides its seed) — from the cache when
    stored there, else trained and stored. On an accelerator (``device`` not ``cpu``) a missing model is trained
    there (stored under the same key, weights on the CPU) and the returned model is moved to the device."""
    cls = _model_class(model)
    key = train_key(dataset, model_config, train_config, seed, model)
    tc = {**dict(train_config), "seed": int(seed), "progress": progress}
    device = str(device or "cpu")

    def create(tmp):
        build = getattr(cls, "for_dataset", None)
        m = build(dataset, **dict(model_config)) if build is not None else cls(**dict(model_config))
        if device != "cpu" and hasattr(m, "to"):
            m = m.to(device)
        report = m.train(dataset, tc)
        if device != "cpu" and hasattr(m, "to"):
            m = m.to("cpu")
        m.save(str(tmp / "model"))
        import json

        (tmp / "train_report.json").write_text(json.dumps(
            {k: report.get(k) for k in ("seconds", "images_per_second", "steps", "batch_size")}
            | {"device": device,
               "loss_first": report["losses"][0] if report.get("losses") else None,
               "loss_last": report["losses"][-1] if report.get("losses") else None}))

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
        return m.to(device) if device != "cpu" and hasattr(m, "to") else m
    raise AssertionError("unreachable")  # pragma: no cover


def customize_key(base_model, exemplars, token: str, config: Mapping[str, Any], seed: int = 0) -> str:
    """The cache key of :func:`load_or_customize`."""
    from genattr.harness.cache import Cache

    from .common import examples_fingerprint

    cfg = {k: v for k, v in dict(config).items() if k != "progress"}
    if cfg.get("reg_dataset") is not None:
        cfg["reg_dataset"] = examples_fingerprint(cfg["reg_dataset"])
    cfg["seed"] = int(seed)
    return Cache.key("customized-model", base_model.name, base_model.version, base_model.fingerprint,
                     examples_fingerprint(exemplars), token, cfg, _version())


def load_or_customize(cache, base_model, exemplars, token: str, config: Mapping[str, Any], seed: int = 0,
                      progress: bool = False):
    """``base_model.customize(exemplars, token, config)`` (``seed`` overrides the config's), stored as a delta
    over the base model; a second call rebuilds base + delta from the cache."""
    from .common import load_delta

    key = customize_key(base_model, exemplars, token, config, seed)
    cfg = {**dict(config), "seed": int(seed), "progress": progress}

    def create(tmp):
        base_model.customize(exemplars, token, cfg).save_delta(str(tmp / "delta"))

    meta = {"base": base_model.fingerprint, "token": token, "seed": int(seed)}
    for attempt in range(2):
        path = cache.get_or_create(NS_CUSTOMIZED, key, create, meta)
        try:
            return load_delta(base_model, str(path / "delta"))
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            if attempt:
                raise
            cache.discard(NS_CUSTOMIZED, key, f"the delta does not load: {type(exc).__name__}")
    raise AssertionError("unreachable")  # pragma: no cover
