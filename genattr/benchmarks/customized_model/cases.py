"""The cases of the Customized Model benchmark (a concept, its customized model, its queries) and how the built-in
miniature builds them through the registries: the base dataset (``dataset``), the concepts (``concepts``: a
registered dataset whose class offers ``concepts(split=..., ...)``), the base model (``model``, trained through the
model cache with the recipe of the dataset and scale), one customized model per concept, and the synthesized
queries (cached).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from genattr.harness.api import Query, RunEnv
from genattr.harness.errors import UserError

from .config import SPLIT_ORDER, SPLITS

#: Keys of the cached query images (bumped with the benchmark's version).
BENCHMARK_VERSION = "2"


@dataclass
class ConceptCase:
    """One test case: a concept, its customized model (or how to load it) and its queries."""

    id: str
    split: str  # object-centric | artist-style
    token: str
    exemplars: Any  # InMemoryDataset of the exemplars (captions = customization prompts)
    prompts: list[str]  # query prompts, one per query
    seeds: list[int]  # generation seeds (built-in) or None entries (AbC: the given images)
    queries: list[Query] = field(default_factory=list)
    model: Any = None  # the customized T2IModel (built-in), loaded lazily for AbC
    weights: str | None = None  # AbC: path of the delta, None when missing
    description: str = ""
    own_idx: Any = None  # pool indices (all pool) of the concept's exemplars
    verification: dict = field(default_factory=dict)
    concept: Any = None  # built-in: the concept object of the concept source (e.g. a shapes Concept)


@dataclass
class State:
    """What setup builds for one split: the cases, the ``all`` pool, the provenance (and the base model)."""

    cases: dict  # id -> ConceptCase
    pool: Any  # the "all" pool dataset
    n_base: int
    provenance: dict
    base_model: Any = None
    training_concepts: Callable[[], list] | None = None


class LazyExtra(dict):
    """``ctx.extra`` whose entries listed in ``factories`` are computed on first access (``[]``, ``get``, ``in``)
    and then kept. Iterating shows only computed entries."""

    def __init__(self, data=None, factories: Mapping[str, Callable[[], Any]] | None = None):
        super().__init__(data or {})
        self._factories = dict(factories or {})

    def __missing__(self, key):
        if key in self._factories:
            value = self._factories.pop(key)()
            self[key] = value
            return value
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or key in self._factories


class Memo:
    """A zero-argument function computed once, on first call."""

    def __init__(self, fn):
        self.fn, self.done, self.value = fn, False, None

    def __call__(self):
        if not self.done:
            self.value, self.done = self.fn(), True
        return self.value


def jsonable_config(cfg: Mapping) -> dict:
    """A configuration for the provenance: datasets (e.g. regularisation images) by name and fingerprint."""
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "fingerprint") and hasattr(v, "ids"):
            out[k] = {"dataset": getattr(v, "name", "?"), "fingerprint": v.fingerprint}
        else:
            out[k] = v
    return out


def case_json(k: ConceptCase) -> dict:
    return {"id": k.id, "split": k.split, "token": k.token, "n_exemplars": len(k.exemplars),
            "exemplar_ids": list(k.exemplars.ids), "prompts": list(k.prompts), "seeds": list(k.seeds),
            "description": k.description, "has_weights": k.model is not None or bool(k.weights),
            "verified": k.verification.get("passed")}


def synthesize(env: RunEnv, model, prompts, seeds, steps: int):
    """Generate (cached) images for ``prompts`` / ``seeds`` with ``model``; ``Q×C×H×W``."""
    from genattr.harness.cache import Cache

    key = Cache.key("customized-model/queries", BENCHMARK_VERSION, model.fingerprint,
                    list(prompts), [int(s) for s in seeds], int(steps))

    def compute():
        import torch

        with torch.no_grad():
            return {"images": model.generate(list(prompts), [int(s) for s in seeds], steps=int(steps)).float()}

    return env.cache.tensors("customized-model-queries", key, compute)["images"]


def concept_source(config: Mapping[str, Any]):
    """``(name, concepts function)``: the registered dataset whose class offers ``concepts(...)`` — the
    ``concepts`` option, else the benchmark's dataset when its class has concepts, else ``shapes``."""
    from genattr.harness.manager import registry

    def target(name):
        factory = registry("datasets").get(name).factory
        return factory.resolve() if hasattr(factory, "resolve") else factory

    names = [config["concepts"]] if config.get("concepts") else [config["dataset"], "shapes"]
    for name in names:
        fn = getattr(target(name), "concepts", None)
        if callable(fn):
            return name, fn
    raise UserError(f"customized-model: dataset {names[0]!r} offers no concepts (a concepts(...) function on its "
                    "class); set customized-model.concepts to one that does, e.g. shapes")


class BuiltinData:
    """Builds the built-in (no ``data_root``) cases of one benchmark configuration; the base dataset and model are
    built once per (cache, seed)."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self._base: dict = {}

    def seed(self, env: RunEnv, *keys) -> int:
        from genattr.harness.seeding import derive_seed

        return derive_seed(int(env.seed), "customized-model", int(self.config["seed_offset"]), *keys)

    def recipe(self) -> dict:
        """The model recipe of the dataset at the scale, with the configuration's overrides."""
        from genattr.harness.models import check_model_plan, model_recipe

        c = self.config
        r = model_recipe(c["model"], c["scale"], c["dataset"])
        check_model_plan(c["model"], "train", c["train_config"], "customized-model", "train_config")
        check_model_plan(c["model"], "customize", c["customize"], "customized-model", "customize")
        return {"model": {**r["model"], **dict(c["model_config"] or {})},
                "train": {**r["train"], **dict(c["train_config"] or {})},
                "dataset": {**r["dataset"], **dict(c["dataset_config"] or {})},
                "customize": r["customize"]}

    def concepts(self, split: str = "test", resolution: int | None = None, channels: int | None = None):
        """The concepts of ``split`` from the concept source, rendered at ``resolution`` (the base dataset's)."""
        c = self.config
        name, make = concept_source(c)
        if resolution is None:
            resolution = self.recipe()["dataset"].get("resolution", 16)
        if split == "test":
            n_object, n_style = c["n_object"], c["n_style"]
        else:
            n_object, n_style = c["n_train_object"], c["n_train_style"]
        nq = int(c["queries_per_concept"] if split == "test" else c["train_queries_per_concept"])
        concepts = make(split=split, n_object=n_object, n_style=n_style,
                        exemplars_per_style=tuple(c["exemplars_per_style"]), resolution=int(resolution),
                        seed=int(c["seed_offset"]), n_queries=max(nq, 1))
        if channels is not None:
            for k in concepts:
                if k.exemplars.channels != channels:
                    raise UserError(f"customized-model: the concepts of {name!r} have {k.exemplars.channels} "
                                    f"channels, the dataset {c['dataset']!r} {channels}; choose matching ones")
        return concepts

    def base(self, env: RunEnv):
        """(base dataset, base model): the registered dataset and model, trained through the model cache."""
        key = (str(env.cache.root), int(env.seed))
        if key not in self._base:
            import genattr
            from genattr.harness import progress
            from genattr.harness.models import load_or_train, pin_model_config

            c = self.config
            r = self.recipe()
            try:
                dataset = genattr.get_dataset(c["dataset"], **r["dataset"])
            except (TypeError, ValueError) as exc:
                raise UserError(f"customized-model: bad configuration for dataset {c['dataset']!r}: "
                                f"{str(exc).splitlines()[0]}") from None
            if len(dataset) == 0:
                raise UserError(f"customized-model: dataset {c['dataset']!r} has no items; the base model needs a "
                                "training set")
            # pinned as the counterfactual benchmarks pin θ0 (pin_config: the vocabulary, the VAE trained once), so
            # with the same model, recipe, data and seed the base model is their θ0 — one cache entry, and its regime
            # check (:meth:`regime`) is judged on the same samples
            config = pin_model_config(c["model"], dataset, r["model"], cache=env.cache)
            with progress.stage(f"setup customized-model: training the base model ({c['dataset']})"):
                model = load_or_train(env.cache, dataset, config, r["train"], seed=int(env.seed),
                                      model=c["model"], progress=env.progress)
            self._base[key] = (dataset, model)
        return self._base[key]

    def customize_config(self, reg_dataset=None) -> dict:
        """The recipe's customization plan + the ``customize`` overrides; the regularisation images are the base
        training set (Custom Diffusion regularises with real images of similar captions), unless
        ``customize={"reg_dataset": None}`` or ``reg_weight`` 0."""
        cfg = {**self.recipe()["customize"], **dict(self.config["customize"] or {})}
        if "reg_dataset" not in dict(self.config["customize"] or {}):
            cfg["reg_dataset"] = reg_dataset
        return cfg

    def cases(self, concepts, base_model, env: RunEnv, n_queries: int, role: str,
              reg_dataset=None) -> list[ConceptCase]:
        """One case per concept: the customized model (model cache) and its synthesized queries (cached)."""
        from genattr.harness import progress
        from genattr.harness.models import load_or_customize

        cust_cfg = self.customize_config(reg_dataset)
        out = []
        for concept in concepts:
            with progress.stage(f"setup customized-model: customizing {concept.id}"):
                model = load_or_customize(env.cache, base_model, concept.exemplars, concept.token, cust_cfg,
                                          seed=int(env.seed), progress=env.progress)
            prompts = [concept.query_prompts[q % len(concept.query_prompts)] for q in range(n_queries)]
            seeds = [self.seed(env, role, concept.id, q) % (2 ** 31) for q in range(n_queries)]
            case = ConceptCase(id=concept.id, split=SPLITS[concept.kind], token=concept.token,
                               exemplars=concept.exemplars, prompts=prompts, seeds=seeds, model=model,
                               description=getattr(concept, "description", ""), concept=concept)
            with progress.stage(f"setup customized-model: queries of {concept.id}"):
                images = synthesize(env, model, prompts, seeds, int(self.config["sample_steps"]))
            case.queries = [
                Query(id=f"{concept.id}/q{q:02d}", image=images[q], prompt=prompts[q],
                      meta={"concept": concept.id, "split": case.split, "seed": seeds[q], "query": q})
                for q in range(n_queries)
            ]
            out.append(case)
        return out

    def build(self, env: RunEnv, split: str, load: Callable[[RunEnv, str], State]) -> State:
        """The :class:`State` of ``split`` (``load(env, "train")`` gives the training concepts lazily)."""
        from .pools import assemble_pool, base_pool
        from .verification import act_on_verification, verify_cases

        t0 = time.perf_counter()
        c = self.config
        dataset, base_model = self.base(env)
        concepts = self.concepts(split, resolution=dataset.resolution, channels=dataset.channels)
        n_queries = int(c["queries_per_concept"] if split == "test" else c["train_queries_per_concept"])
        cases = self.cases(concepts, base_model, env, n_queries, "query" if split == "test" else "train",
                           reg_dataset=dataset)
        base = base_pool(dataset, c["pool_size"], self.seed(env, "pool"))
        pool, n_base = assemble_pool(base, cases)
        verification = {}
        if c["verify"] != "off":
            verification = verify_cases(cases, env, base_model=base_model, steps=int(c["sample_steps"]))
            if split == "test":
                act_on_verification(verification, c["verify"])
        provenance = {
            "source": "built-in",
            "concept_split": split,
            "datasets": {dataset.name: dataset.fingerprint, "pool": pool.fingerprint},
            "models": {"base": base_model.fingerprint, **{k.id: k.model.fingerprint for k in cases}},
            "customize": jsonable_config(self.customize_config(dataset)),
            "concepts": [case_json(k) for k in cases],
            "sizes": {"pool_base": n_base, "pool_all": len(pool),
                      "pool_own": {k.id: n_base + len(k.own_idx) for k in cases},
                      "concepts": {s: sum(k.split == s for k in cases) for s in SPLIT_ORDER},
                      "queries": sum(len(k.queries) for k in cases)},
            "verification": verification,
            "setup_s": round(time.perf_counter() - t0, 2),
        }
        state = State(cases={k.id: k for k in cases}, pool=pool, n_base=n_base, provenance=provenance,
                      base_model=base_model)
        if split == "test":
            state.training_concepts = Memo(lambda: training_concepts(load(env, "train")))
            provenance["regime"] = self.regime(env, dataset, base_model)
            provenance["setup_s"] = round(time.perf_counter() - t0, 2)
        return state

    def regime(self, env: RunEnv, dataset, base_model) -> dict:
        """The base model's regime check (:func:`genattr.benchmarks._counterfactual.check_base_model`): the
        customized models memorise their exemplars by design (their check is the concept verification), but the base
        model they start from must generalise as a counterfactual θ0 must. Sampled as the counterfactual benchmarks
        sample at this scale, so a base model that is also their θ0 (the same model, recipe, data and seed) is judged
        on the same samples, found in the cache."""
        from .._counterfactual import THETA0, check_base_model

        preset = THETA0.get(self.config["scale"], {})
        return check_base_model(env, base_model, dataset, "customized-model", self.config["scale"],
                                int(preset.get("query_steps", 50)), preset.get("guidance_scale"))


def training_concepts(state: State) -> list[dict]:
    """Training concepts for methods that learn: ``[{"id", "kind", "exemplars": E×C×H×W,
    "synthesized": S×C×H×W}]`` in [-1, 1], each synthesized by the concept's own customized model."""
    import torch

    return [{"id": k.id, "kind": "object" if k.split == "object-centric" else "style",
             "exemplars": k.exemplars.images(), "synthesized": torch.stack([q.image.float() for q in k.queries])}
            for k in state.cases.values()]
