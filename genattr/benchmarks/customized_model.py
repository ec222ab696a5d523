"""The Customized Model benchmark (AbC; Wang et al., ICCV 2023), the first protocol of the unlearning paper.

A test case is a model customized from a base text-to-image model on a few **exemplar** images of a new concept
(token ``<v*>``). Queries are images that customized model synthesizes; an attribution method ranks a retrieval
pool that contains the exemplars, and the exemplars are the positives. Metrics per query: Recall@5/10/100 and AP
(mean over queries = mAP), summarised per split — ``object-centric`` and ``artist-style`` — as mean ± standard
error over queries.

Two data sources:

* **built-in miniature** (``scale`` ``tiny`` / ``small``, no ``data_root``): a base ``tiny-t2i`` trained on the
  built-in ``shapes`` dataset (``genattr.plugins.models.recipes.recipe("shapes", scale)``, from the model cache);
  test concepts from ``genattr.datasets.shapes.make_concepts(split="test")`` — object-centric (one exemplar: a
  novel glyph object) and artist-style (several exemplars: a novel rendering style over ordinary scenes); each
  customized with its ``<v*>`` token (``recipe_customize(scale)``); queries synthesized from each concept's prompt
  templates. Training concepts (``make_concepts(split="train")``), customized the same way, are offered to methods
  that learn as ``ctx.extra["training_concepts"]`` (built lazily, on first access); test concepts are never shown.
* **the public AbC layout** (``data_root=...``, scale ``paper``): ``dataset/json/test_*.json`` through
  ``genattr.datasets.abc``; queries are the benchmark's synthesized images, the pool a LAION subset; customized
  models are Custom-Diffusion deltas over Stable Diffusion v1.4 in ``weights_dir`` (loaded with
  ``genattr.plugins.models.diffusers_adapter.load_delta``). Models without weights are listed in the provenance
  and their cells are not enumerated for methods with ``needs_model=True`` (model-free methods still run).

Pools. AbC ranks the base set plus the customized model's **own** exemplars: that is the headline variant (metric
columns ``recall@10``, ``recall@5``, ``recall@100``, ``ap``). The harder variant ranks the pool with **all** test
concepts' exemplars (other concepts' exemplars are distractors; columns with the suffix ``/all``). Both come from
one attribution: the method sees the ``all`` pool as its training set (``ctx.train_set``) and the ``own`` scores
are the same score vector restricted to the base items plus the concept's exemplars. For methods whose scores of
one item depend on which other items are in the pool (a Fisher estimated over the pool, N in a Newton step) this
is an approximation of running on the smaller pool; the difference is a handful of items out of hundreds.
Exemplars are scored with the captions they were customized with (including ``<v*>``).

Verification. Before any measurement, ``setup`` checks that every customized model reproduces its concept. The
built-in concepts know the scene behind each query prompt: the *render* check draws that scene as every concept of
the split would show it and as plain base data, and counts a query for its concept when its own rendering is the
nearest (pixel MSE); a concept passes when more of its queries land on it than chance (1 / (concepts + 1)). Also
recorded (and used as the verdict where no scenes are known): the concept (of the split) whose exemplars each query
is most similar to, in flattened pixels (cosine, max over a horizontal flip) and in a layout-free style descriptor
(the Gram matrix of 3×3 pixel patches, plus channel means), against chance 1 / concepts; and the similarity lift
of the customized samples over the base model's samples for the same prompts without ``<v*>``. Figures and verdicts go to the
provenance and to every row's ``extra``; a failure is a loud warning (``verify="error"`` raises instead,
``verify="off"`` skips the check).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from genattr.harness.api import SCALES, AttributionContext, Cell, Query, RunEnv
from genattr.harness.errors import UserError

log = logging.getLogger(__name__)

SPLITS = {"object": "object-centric", "style": "artist-style"}
SPLIT_ORDER = ("object-centric", "artist-style")

#: Recall cut-offs reported (10 is the headline, AbC also reports 5 and 100).
RECALL_KS = (10, 5, 100)

#: The metric columns of a row: the ``own`` pool (headline) and the ``all`` pool (suffix ``/all``).
METRIC_COLUMNS = tuple(f"recall@{k}" for k in RECALL_KS) + ("ap",)
POOLS = ("own", "all")

#: Per-scale defaults (every key can be overridden in the config).
#:
#: * ``n_object`` / ``n_style`` — test concepts per split; ``exemplars_per_style`` — (min, max) exemplars of a style
#:   concept (objects have one); ``queries_per_concept``; ``sample_steps`` — DDPM steps when synthesizing queries;
#:   ``pool_size`` — base training items in the pool (a seeded subset of the base model's training set, as AbC's
#:   LAION subset is a subset of Stable Diffusion's training data; ``None`` = all of it);
#:   ``n_train_object`` / ``n_train_style`` / ``train_queries_per_concept`` — the training concepts for methods that
#:   learn.
#: * ``paper`` (the public AbC data; ``data_root`` required): ``models_per_split`` customized models per split
#:   (20 models × 20 queries in the unlearning paper: 10 object-centric + 10 artist-style), ``queries_per_model``,
#:   ``pool_size`` = 100,000 LAION images, ``resolution`` 512.
SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        n_object=2, n_style=2, exemplars_per_style=(3, 4), queries_per_concept=2, sample_steps=20, pool_size=None,
        n_train_object=2, n_train_style=2, train_queries_per_concept=2,
    ),
    "small": dict(
        n_object=3, n_style=3, exemplars_per_style=(4, 8), queries_per_concept=4, sample_steps=50, pool_size=None,
        n_train_object=3, n_train_style=3, train_queries_per_concept=4,
    ),
    "paper": dict(
        models_per_split=10, queries_per_model=20, pool_size=100_000, resolution=512, sample_steps=50,
        abc_subsets={"object-centric": ["observed_imagenet", "unobserved_imagenet"],
                     "artist-style": ["bamfg", "artchive"]},
    ),
}

COMMON_DEFAULTS: dict[str, Any] = dict(
    data_root=None,  # folder holding dataset/ (the public AbC layout); None: the built-in miniature
    weights_dir=None,  # Custom-Diffusion deltas, one per customized model (AbC data only)
    base_model="CompVis/stable-diffusion-v1-4",  # path or hub id of the base model of the deltas (AbC data only)
    pools=["own", "all"],  # pool variants reported ("own" is the headline)
    verify="warn",  # warn | error | off
    customize=None,  # overrides of recipe_customize(scale) (built-in data only)
    seed_offset=0,  # mixed into every seed of the benchmark's data (concepts, queries); models use the run seed
)

VERIFY_MODES = ("warn", "error", "off")


def resolve_config(config: Mapping[str, Any]) -> dict:
    cfg = dict(config)
    scale = cfg.pop("scale", None) or "tiny"
    if scale not in SCALES:
        raise UserError(f"customized-model: unknown scale {scale!r}; scales: {', '.join(SCALES)}")
    known = set(COMMON_DEFAULTS) | set().union(*(set(d) for d in SCALE_DEFAULTS.values()))
    unknown = sorted(set(cfg) - known)
    if unknown:
        from genattr.harness.errors import did_you_mean

        raise UserError(f"customized-model: unknown option {unknown[0]!r}{did_you_mean(unknown[0], known)}")
    out = {"scale": scale, **COMMON_DEFAULTS, **SCALE_DEFAULTS[scale], **cfg}
    if isinstance(out.get("exemplars_per_style"), list):
        out["exemplars_per_style"] = tuple(out["exemplars_per_style"])
    if out["verify"] not in VERIFY_MODES:
        raise UserError(f"customized-model: verify must be one of {', '.join(VERIFY_MODES)}, got {out['verify']!r}")
    pools = list(out["pools"])
    if not pools or any(p not in POOLS for p in pools):
        raise UserError(f"customized-model: pools must be a non-empty subset of {list(POOLS)}, got {pools!r}")
    out["pools"] = [p for p in POOLS if p in pools]
    if scale == "paper" and not out["data_root"]:
        raise UserError("customized-model: scale 'paper' needs data_root=<folder holding dataset/> "
                        "(the public AbC benchmark, see docs/benchmarks/customized-model.md)")
    return out


def metric_columns(pools: Sequence[str]) -> list[str]:
    cols = []
    for p in pools:
        cols += [c if p == "own" else f"{c}/{p}" for c in METRIC_COLUMNS]
    return cols


def _warn(message: str) -> None:
    """A loud warning: Python warning, log record and a line on stderr."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# state shared by the cells
# ---------------------------------------------------------------------------------------------------------------


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
    concept: Any = None  # built-in: the genattr.datasets.shapes.Concept


@dataclass
class _State:
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


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------


class CustomizedModelBenchmark:
    """Customized Model benchmark (see the module docstring). Config: ``scale`` plus any key of
    :data:`COMMON_DEFAULTS` / :data:`SCALE_DEFAULTS`."""

    name = "customized-model"
    #: 2: the built-in style concepts a 16 px model can learn (test: night, sunset, stripes, glow; train: sepia,
    #: palette-shift, crimson, shadow); the pool carries its base dataset's name.
    version = "2"
    #: The paper ran unlearning with other hyperparameters on this protocol: methods with presets pick theirs.
    preset_hint = "customized"

    def __init__(self, **config):
        self.config = resolve_config(config)
        self.metrics = {c: True for c in metric_columns(self.config["pools"])}
        self._states: dict = {}
        self._current_model = (None, None)  # AbC: (case id, loaded model)

    @property
    def real_data(self) -> bool:
        return bool(self.config["data_root"])

    # -- cells --------------------------------------------------------------------------------------------------
    def concept_specs(self) -> list[dict]:
        """``[{"id", "split", "queries", "has_weights"}]`` without building any model (cheap)."""
        if self.real_data:
            return [{"id": e["id"], "split": e["split"], "queries": len(e["queries"]), "has_weights": bool(e["weights"])}
                    for e in _abc_selection(self.config)]
        return [
            {"id": c.id, "split": SPLITS[c.kind], "queries": self.config["queries_per_concept"], "has_weights": True}
            for c in self._test_concepts(resolution=8)  # ids and splits only: any resolution will do
        ]

    def cells(self, methods: Sequence[str]) -> list[Cell]:
        specs = sorted(self.concept_specs(), key=lambda s: (SPLIT_ORDER.index(s["split"]), s["id"]))
        out = []
        for m in methods:
            needs_model = _method_needs_model(m)
            for s in specs:
                if needs_model and not s["has_weights"]:
                    continue
                for q in range(s["queries"]):
                    out.append(Cell(
                        id=f"{m}/{s['id']}/q{q:02d}", method=m,
                        params={"concept": s["id"], "query": q, "split": s["split"]},
                        group={"split": s["split"]},
                    ))
        return out

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self, env: RunEnv) -> dict:
        state = self._load(env)
        return state.provenance

    def _load(self, env: RunEnv, split: str = "test") -> _State:
        """The state of the ``test`` concepts (what cells measure) or, built-in data only, of the ``train`` concepts
        (for methods that learn and for :func:`calibrate`). Built once per process; models, queries and the base
        model come from the cache."""
        key = (str(env.cache.root), int(env.seed), str(env.device), split)
        if key in self._states:
            return self._states[key]
        if self.real_data:
            if split != "test":
                raise UserError("customized-model: AbC data has no training concepts")
            state = _abc_build_state(self, env)
        else:
            state = self._build_builtin(env, split)
        self._states[key] = state
        return state

    def _seed(self, env: RunEnv, *keys) -> int:
        from genattr.harness.seeding import derive_seed

        return derive_seed(int(env.seed), "customized-model", int(self.config["seed_offset"]), *keys)

    def _test_concepts(self, split: str = "test", resolution: int | None = None):
        from genattr.datasets.shapes import make_concepts

        c = self.config
        if resolution is None:
            from genattr.plugins.models.recipes import recipe

            resolution = recipe("shapes", c["scale"])["dataset"].get("resolution", 16)
        res = int(resolution)
        if split == "test":
            n_object, n_style = c["n_object"], c["n_style"]
        else:
            n_object, n_style = c["n_train_object"], c["n_train_style"]
        nq = int(c["queries_per_concept"] if split == "test" else c["train_queries_per_concept"])
        return make_concepts(split=split, n_object=n_object, n_style=n_style,
                             exemplars_per_style=tuple(c["exemplars_per_style"]), resolution=res,
                             seed=int(c["seed_offset"]), n_queries=max(nq, 1))

    def _base(self, env: RunEnv):
        from genattr.datasets.shapes import Shapes
        from genattr.plugins.models.cache import load_or_train
        from genattr.plugins.models.recipes import recipe

        r = recipe("shapes", self.config["scale"])
        dataset = Shapes(**r["dataset"])
        model = load_or_train(env.cache, dataset, r["model"], r["train"], seed=int(env.seed), progress=env.progress)
        return dataset, model

    def _customize_config(self, reg_dataset=None) -> dict:
        """``recipe_customize(scale)`` + the ``customize`` overrides; the regularisation images are the base
        training set (Custom Diffusion regularises with real images of similar captions), unless
        ``customize={"reg_dataset": None}`` or ``reg_weight`` 0."""
        from genattr.plugins.models.recipes import recipe_customize

        cfg = {**recipe_customize(self.config["scale"]), **dict(self.config["customize"] or {})}
        if "reg_dataset" not in dict(self.config["customize"] or {}):
            cfg["reg_dataset"] = reg_dataset
        return cfg

    def _cases_from(self, concepts, base_model, env: RunEnv, n_queries: int, role: str,
                    reg_dataset=None) -> list[ConceptCase]:
        from genattr.plugins.models.cache import load_or_customize

        cust_cfg = self._customize_config(reg_dataset)
        cases = []
        for concept in concepts:
            model = load_or_customize(env.cache, base_model, concept.exemplars, concept.token, cust_cfg,
                                      seed=int(env.seed), progress=env.progress)
            prompts = [concept.query_prompts[q % len(concept.query_prompts)] for q in range(n_queries)]
            seeds = [self._seed(env, role, concept.id, q) % (2 ** 31) for q in range(n_queries)]
            case = ConceptCase(id=concept.id, split=SPLITS[concept.kind], token=concept.token,
                               exemplars=concept.exemplars, prompts=prompts, seeds=seeds, model=model,
                               description=getattr(concept, "description", ""), concept=concept)
            images = _synthesize(env, model, prompts, seeds, int(self.config["sample_steps"]))
            case.queries = [
                Query(id=f"{concept.id}/q{q:02d}", image=images[q], prompt=prompts[q],
                      meta={"concept": concept.id, "split": case.split, "seed": seeds[q], "query": q})
                for q in range(n_queries)
            ]
            cases.append(case)
        return cases

    def _base_cached(self, env: RunEnv):
        key = ("base", str(env.cache.root), int(env.seed))
        if key not in self._states:
            self._states[key] = self._base(env)
        return self._states[key]

    def _build_builtin(self, env: RunEnv, split: str = "test") -> _State:
        t0 = time.perf_counter()
        c = self.config
        dataset, base_model = self._base_cached(env)
        concepts = self._test_concepts(split)
        n_queries = int(c["queries_per_concept"] if split == "test" else c["train_queries_per_concept"])
        cases = self._cases_from(concepts, base_model, env, n_queries, "query" if split == "test" else "train",
                                 reg_dataset=dataset)
        base = _base_pool(dataset, c["pool_size"], self._seed(env, "pool"))
        pool, n_base = _assemble_pool(base, cases)
        verification = {}
        if c["verify"] != "off":
            verification = verify_cases(cases, env, base_model=base_model, steps=int(c["sample_steps"]))
            if split == "test":
                _act_on_verification(verification, c["verify"])
        provenance = {
            "source": "built-in",
            "concept_split": split,
            "datasets": {dataset.name: dataset.fingerprint, "pool": pool.fingerprint},
            "models": {"base": base_model.fingerprint, **{k.id: k.model.fingerprint for k in cases}},
            "customize": _jsonable_config(self._customize_config(dataset)),
            "concepts": [_case_json(k) for k in cases],
            "sizes": {"pool_base": n_base, "pool_all": len(pool),
                      "pool_own": {k.id: n_base + len(k.own_idx) for k in cases},
                      "concepts": {s: sum(k.split == s for k in cases) for s in SPLIT_ORDER},
                      "queries": sum(len(k.queries) for k in cases)},
            "verification": verification,
            "setup_s": round(time.perf_counter() - t0, 2),
        }
        state = _State(cases={k.id: k for k in cases}, pool=pool, n_base=n_base, provenance=provenance,
                       base_model=base_model)
        if split == "test":
            state.training_concepts = _Memo(lambda: self._training_concepts(env))
        return state

    def _training_concepts(self, env: RunEnv) -> list[dict]:
        """Training concepts for methods that learn: ``[{"id", "kind", "exemplars": E×C×H×W,
        "synthesized": S×C×H×W}]`` in [-1, 1], each synthesized by the concept's own customized model."""
        state = self._load(env, "train")
        return [{"id": k.id, "kind": "object" if k.split == "object-centric" else "style",
                 "exemplars": k.exemplars.images(), "synthesized": _stack([q.image for q in k.queries])}
                for k in state.cases.values()]

    # -- one cell -----------------------------------------------------------------------------------------------
    def context(self, case_id: str, method, env: RunEnv, split: str = "test") -> AttributionContext:
        """The :class:`AttributionContext` a method sees for one concept (model = the concept's customized model,
        train set = the ``all`` pool)."""
        state = self._load(env, split)
        case = state.cases[case_id]
        model = self._model_for(case, env) if getattr(method, "needs_model", True) else None
        factories = {}
        if state.training_concepts is not None:
            factories["training_concepts"] = state.training_concepts
        return AttributionContext(model=model, train_set=state.pool, cache=env.cache, device=env.device,
                                  seed=int(env.seed), scale=self.config["scale"], progress=env.progress,
                                  extra=LazyExtra({"benchmark": self.name, "preset_hint": self.preset_hint},
                                                  factories))

    def _model_for(self, case: ConceptCase, env: RunEnv):
        if case.model is not None:
            return case.model
        if not case.weights:
            raise UserError(f"customized-model: no weights for model {case.id!r} (looked in weights_dir)")
        cid, m = self._current_model
        if cid == case.id:
            return m
        self._current_model = (None, None)
        m = _abc_load_model(self.config, case, env)
        self._current_model = (case.id, m)
        return m

    def run_cell(self, cell: Cell, method, env: RunEnv) -> dict:
        return self.evaluate(cell.params["concept"], int(cell.params["query"]), method, env)

    def evaluate(self, case_id: str, query: int, method, env: RunEnv, split: str = "test") -> dict:
        """Metrics of ``method`` on one query of one concept (``split`` ``train``: a training concept, used by
        :func:`calibrate`)."""
        state = self._load(env, split)
        if case_id not in state.cases:
            raise UserError(f"customized-model: unknown concept {case_id!r}")
        case = state.cases[case_id]
        if not 0 <= query < len(case.queries):
            raise UserError(f"customized-model: concept {case_id!r} has {len(case.queries)} queries, not {query + 1}")
        q = case.queries[query]
        ctx = self.context(case_id, method, env, split)
        t0 = time.perf_counter()
        method.prepare(ctx)
        t1 = time.perf_counter()
        scores = method.attribute(ctx, [q])
        t2 = time.perf_counter()
        import numpy as np

        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (1, len(state.pool)):
            raise RuntimeError(f"method {getattr(method, 'name', method)!r} returned scores of shape "
                               f"{scores.shape}, expected {(1, len(state.pool))}")
        row, extra = score_pools(scores[0], state.n_base, case.own_idx, self.config["pools"])
        extra.update({"concept": case.id, "query_id": q.id, "prompt": q.prompt,
                      "verified": case.verification.get("passed"), "prepare_s": round(t1 - t0, 3),
                      "attribute_s": round(t2 - t1, 3)})
        row["extra"] = extra
        return row

    # -- summaries ----------------------------------------------------------------------------------------------
    @staticmethod
    def summarize(rows: Sequence[Mapping]) -> dict:
        """``{method: {split: {column: {"mean", "se", "n"}}}}`` over result rows (mean ± standard error over
        queries)."""
        groups: dict = {}
        for r in rows:
            split = (r.get("group") or {}).get("split", "all")
            for col, v in (r.get("metrics") or {}).items():
                if col == "extra" or v is None:
                    continue
                groups.setdefault(r["method"], {}).setdefault(split, {}).setdefault(col, []).append(float(v))
        return {m: {s: {c: _mean_se(v) for c, v in cols.items()} for s, cols in splits.items()}
                for m, splits in groups.items()}


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def calibrate(bench: "CustomizedModelBenchmark", env: RunEnv, method_name: str, grid: Sequence[Mapping],
              metric: str = "ap", base_config: Mapping | None = None, pool_sample: int | None = None,
              queries_per_concept: int | None = None, on_result: Callable[[dict], None] | None = None) -> dict:
    """Pick a method's hyperparameters on the **training** concepts (never the test concepts): evaluate
    ``method_name`` with ``{**base_config, **g}`` for each ``g`` in ``grid`` on the queries of every training
    concept and return ``{"best": config, "metric": metric, "table": [{"config", "mean", "by_split", "values"}]}``
    (ties: the first in ``grid``). Built-in data only.

    ``pool_sample``: rank a seeded sample of that many base items plus the concept's own exemplars instead of the
    whole pool (through the method's ``candidates``; cheap for methods whose cost grows with the pool, such as
    unlearning; metrics then refer to that smaller pool). ``queries_per_concept``: only the first queries of each
    concept. ``on_result(record)`` is called after every query (for logging)."""
    import numpy as np

    import genattr

    state = bench._load(env, "train")
    base = None  # the base-item sample: the same for every configuration, concept and query
    if pool_sample is not None:
        base = np.sort(_calibration_rng(env.seed).choice(state.n_base, min(int(pool_sample), state.n_base),
                                                          replace=False))
    table = []
    for g in grid:
        cfg = {**dict(base_config or {}), **dict(g)}
        method = genattr.get_method(method_name, **cfg)
        values: dict = {}
        for case in state.cases.values():
            nq = len(case.queries) if queries_per_concept is None else min(int(queries_per_concept),
                                                                              len(case.queries))
            if base is not None:
                idx = np.concatenate([base, np.asarray(case.own_idx, dtype=np.int64)])
                ctx = bench.context(case.id, method, env, "train")
                method.prepare(ctx)
            for qi in range(nq):
                if base is None:
                    r = bench.evaluate(case.id, qi, method, env, split="train")
                else:
                    s = np.asarray(method.attribute(ctx, [case.queries[qi]], candidates=idx.tolist()),
                                   dtype=np.float64)[0]
                    r, _ = score_pools(s, base.size, np.arange(base.size, idx.size), ["own"])
                values.setdefault(case.split, []).append(r[metric])
                if on_result is not None:
                    on_result({"config": cfg, "concept": case.id, "query": qi, metric: r[metric]})
        allv = [v for vs in values.values() for v in vs]
        table.append({"config": cfg, "mean": sum(allv) / len(allv),
                      "by_split": {k: sum(v) / len(v) for k, v in values.items()}, "values": values})
    best = max(range(len(table)), key=lambda i: (table[i]["mean"], -i))
    return {"best": table[best]["config"], "metric": metric, "table": table}


def _calibration_rng(seed: int):
    """The generator of :func:`calibrate`'s base-item sample (the same sample for every configuration)."""
    from genattr.harness.seeding import numpy_rng

    return numpy_rng(int(seed), "customized-model/calibration-pool")


def _jsonable_config(cfg: Mapping) -> dict:
    """A configuration for the provenance: datasets (e.g. regularisation images) by name and fingerprint."""
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "fingerprint") and hasattr(v, "ids"):
            out[k] = {"dataset": getattr(v, "name", "?"), "fingerprint": v.fingerprint}
        else:
            out[k] = v
    return out


class _Memo:
    def __init__(self, fn):
        self.fn, self.done, self.value = fn, False, None

    def __call__(self):
        if not self.done:
            self.value, self.done = self.fn(), True
        return self.value


def _method_needs_model(name: str) -> bool:
    try:
        from genattr.harness.manager import registry

        entry = registry("methods").get(name)
    except Exception:  # unknown here: assume it needs the model (conservative)
        return True
    v = entry.meta.get("needs_model")
    if v is None:
        v = getattr(getattr(entry.factory, "resolve", lambda: entry.factory)(), "needs_model", True)
    return bool(v)


def _mean_se(values: Sequence[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "n": n}


def _stack(images):
    import torch

    return torch.stack([i.float() for i in images])


def _case_json(k: ConceptCase) -> dict:
    return {"id": k.id, "split": k.split, "token": k.token, "n_exemplars": len(k.exemplars),
            "exemplar_ids": list(k.exemplars.ids), "prompts": list(k.prompts), "seeds": list(k.seeds),
            "description": k.description, "has_weights": k.model is not None or bool(k.weights),
            "verified": k.verification.get("passed")}


def score_pools(scores, n_base: int, own_idx, pools: Sequence[str]) -> tuple[dict, dict]:
    """Metric columns for one query's score vector over the ``all`` pool (base items ``0 … n_base−1``, then every
    concept's exemplars); the ``own`` pool is the base items plus ``own_idx``."""
    import numpy as np

    from genattr.plugins.metrics.retrieval import average_precision, positive_ranks, recall_at_k

    own_idx = np.asarray(own_idx, dtype=np.int64)
    row, extra = {}, {}
    for p in pools:
        if p == "own":
            keep = np.concatenate([np.arange(n_base), own_idx])
            s = scores[keep]
            pos = np.arange(n_base, n_base + own_idx.size)
            suffix = ""
        else:
            s, pos, suffix = scores, own_idx, f"/{p}"
        for k in RECALL_KS:
            row[f"recall@{k}{suffix}"] = recall_at_k(s, pos, k)
        row[f"ap{suffix}"] = average_precision(s, pos)
        extra[f"ranks_{p}"] = [int(r) for r in positive_ranks(s, pos)]
        extra[f"pool_size_{p}"] = int(s.size)
    return row, extra


def _base_pool(dataset, pool_size, seed: int):
    """``pool_size`` items of the base training set (a seeded subset, in dataset order), or all of it."""
    if pool_size is None or int(pool_size) >= len(dataset):
        return dataset
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(dataset), size=int(pool_size), replace=False))
    ids = dataset.ids
    return dataset.subset([ids[i] for i in keep])


def _pool_name(base) -> str:
    """``BASE+customized-model-pool``: the pool carries its base dataset's name, so methods that pick a component
    by the training set's name (the ``features`` encoder) recognise the built-in data."""
    return f"{getattr(base, 'name', 'base')}+customized-model-pool"


def _assemble_pool(base, cases: Sequence[ConceptCase]):
    """The ``all`` pool: base items then each case's exemplars (captions kept); sets ``case.own_idx``."""
    import torch

    from genattr.harness.data import InMemoryDataset

    ids = list(base.ids)
    images = [base.images()]
    captions = [tuple(base.captions(i)) for i in range(len(base))]
    seen = set(ids)
    for case in cases:
        ex = case.exemplars
        start = len(ids)
        for i, eid in enumerate(ex.ids):
            pid = eid if eid not in seen else f"{case.id}/{eid}"
            if pid in seen:
                raise ValueError(f"duplicate pool id {pid!r}")
            seen.add(pid)
            ids.append(pid)
            captions.append(tuple(ex.captions(i)))
        images.append(ex.images().to(images[0].dtype))
        case.own_idx = list(range(start, len(ids)))
    pool = InMemoryDataset(_pool_name(base), "1", ids, torch.cat(images), captions,
                           meta={"n_base": len(base)})
    return pool, len(base)


def _synthesize(env: RunEnv, model, prompts, seeds, steps: int):
    """Generate (cached) images for ``prompts`` / ``seeds`` with ``model``; ``Q×C×H×W``."""
    from genattr.harness.cache import Cache

    key = Cache.key("customized-model/queries", CustomizedModelBenchmark.version, model.fingerprint,
                    list(prompts), [int(s) for s in seeds], int(steps))

    def compute():
        import torch

        with torch.no_grad():
            return {"images": model.generate(list(prompts), [int(s) for s in seeds], steps=int(steps)).float()}

    return env.cache.tensors("customized-model-queries", key, compute)["images"]


# ---------------------------------------------------------------------------------------------------------------
# verification: does each customized model reproduce its concept?
# ---------------------------------------------------------------------------------------------------------------


def pixel_features(images):
    """Flattened pixels, L2-normalised; ``(B, D)`` and the features of the horizontal flips."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    f = F.normalize(x.reshape(x.shape[0], -1), dim=1)
    ff = F.normalize(torch.flip(x, dims=[-1]).reshape(x.shape[0], -1), dim=1)
    return f, ff


def style_features(images):
    """A layout-free style descriptor: channel means plus the (upper triangle of the) Gram matrix of 3×3 pixel
    patches, L2-normalised. Flip-invariant up to the patch orientation."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    b, c = x.shape[:2]
    patches = F.unfold(x, kernel_size=3, padding=1)  # B × 9C × HW
    gram = patches @ patches.transpose(1, 2) / patches.shape[-1]
    iu = torch.triu_indices(gram.shape[1], gram.shape[2])
    feats = torch.cat([x.mean(dim=(2, 3)), gram[:, iu[0], iu[1]]], dim=1)
    feats = feats - feats.mean(dim=1, keepdim=True)
    return F.normalize(feats, dim=1), None


def _similarity(space: str, queries, exemplars):
    """``Q × E`` similarity of queries to exemplars in one feature space."""
    if space == "pixel":
        qf, qff = pixel_features(queries)
        ef, _ = pixel_features(exemplars)
        return (qf @ ef.T).maximum(qff @ ef.T)
    qf, _ = style_features(queries)
    ef, _ = style_features(exemplars)
    return qf @ ef.T


def verify_cases(cases: Sequence[ConceptCase], env: RunEnv, base_model=None, steps: int = 50) -> dict:
    """Check that every customized model reproduces its concept (see the module docstring). Sets
    ``case.verification`` and returns ``{"concepts": {id: figures}, "passed": bool, "failed": [ids]}``."""
    import torch

    out = {}
    by_split: dict = {}
    for k in cases:
        by_split.setdefault(k.split, []).append(k)
    for split, ks in by_split.items():
        chance = 1.0 / len(ks)
        for k in ks:
            q = _stack([x.image for x in k.queries])
            fig: dict = {"chance": chance}
            ok = False
            for space in ("pixel", "style"):
                sims = torch.stack([_similarity(space, q, o.exemplars.images()).amax(dim=1) for o in ks], dim=1)
                own_col = [o.id for o in ks].index(k.id)
                acc = float((sims.argmax(dim=1) == own_col).float().mean())
                own = float(sims[:, own_col].mean())
                others = [float(sims[:, j].mean()) for j in range(len(ks)) if j != own_col]
                fig[space] = {"nearest_own": acc, "sim_own": own,
                              "sim_other": (sum(others) / len(others)) if others else None}
                if len(ks) > 1 and acc > chance:
                    ok = True
            if k.concept is not None and getattr(k.concept, "query_specs", None):
                # the strongest check available decides on its own
                fig["render"] = _render_check(k, ks, q)
                ok = fig["render"]["nearest_own"] > fig["render"]["chance"]
            if base_model is not None:
                prompts = [p.replace(k.token, " ").replace("  ", " ").strip() for p in k.prompts]
                base_imgs = _synthesize(env, base_model, prompts, k.seeds, steps)
                lift = {}
                for space in ("pixel", "style"):
                    s_cust = _similarity(space, q, k.exemplars.images()).amax(dim=1).mean()
                    s_base = _similarity(space, base_imgs, k.exemplars.images()).amax(dim=1).mean()
                    lift[space] = float(s_cust - s_base)
                fig["lift_over_base"] = lift
                if len(ks) == 1 and "render" not in fig and max(lift.values()) > 0:
                    ok = True
            fig["passed"] = ok
            k.verification = fig
            out[k.id] = fig
    failed = sorted(i for i, f in out.items() if not f["passed"])
    return {"concepts": out, "passed": not failed, "failed": failed,
            "rule": "built-in concepts: render check above chance; otherwise nearest-concept accuracy above chance "
                    "in pixel or style space (single concept in a split: closer to its exemplars than the base "
                    "model's samples)"}


def _render_check(case: ConceptCase, split_cases: Sequence[ConceptCase], queries) -> dict:
    """Built-in concepts know the scene behind each query prompt: render that scene as every concept of the split
    would show it, and as the plain base data shows it; a query counts for its concept when the concept's rendering
    is its nearest (pixel MSE, min over a horizontal flip). Chance: 1 / (concepts in the split + 1)."""
    import torch

    from genattr.datasets.shapes import render_scene

    specs = case.concept.query_specs
    res = queries.shape[-1]
    hits = []
    for qi in range(queries.shape[0]):
        spec = specs[qi % len(specs)]
        cands = []
        for o in split_cases:
            cands.append(_render_as(o.concept, spec, res))
        plain = {"objects": [dict(ob, shape="circle") if ob["shape"] not in ("circle", "square", "triangle") else ob
                             for ob in spec["objects"]]}
        cands.append(render_scene({k: v for k, v in plain.items() if k != "style"}, res))
        cands = torch.stack(cands).float()
        x = queries[qi].float()
        d = torch.minimum(((cands - x) ** 2).mean(dim=(1, 2, 3)),
                          ((cands - torch.flip(x, dims=[-1])) ** 2).mean(dim=(1, 2, 3)))
        hits.append(int(d.argmin()) == [o.id for o in split_cases].index(case.id))
    return {"nearest_own": sum(hits) / len(hits), "chance": 1.0 / (len(split_cases) + 1)}


def _render_as(concept, spec: dict, resolution: int):
    """``spec`` as ``concept`` would show it: styles render the scene in the style; glyph concepts replace the
    spec's glyph objects (whatever glyph) by their own glyph."""
    from genattr.datasets.shapes import GLYPH_COLOURS, SHAPES, render_scene

    if concept.kind == "style":
        return render_scene(spec, resolution, style=concept.name)
    objs = [dict(o, shape=concept.name, colour=GLYPH_COLOURS[concept.name]) if o["shape"] not in SHAPES else o
            for o in spec["objects"]]
    return render_scene({"objects": objs}, resolution)


def _act_on_verification(verification: dict, mode: str) -> None:
    if not verification.get("failed"):
        return
    msg = ("customized-model: these customized models do not reproduce their concept (their queries are not "
           f"closer to their own exemplars than chance): {', '.join(verification['failed'])}; attribution results "
           "for them measure nothing. Train the customization longer or on more weights (config 'customize').")
    if mode == "error":
        raise UserError(msg)
    _warn(msg)


# ---------------------------------------------------------------------------------------------------------------
# the public AbC layout (real data)
# ---------------------------------------------------------------------------------------------------------------

#: Prompt templates for the AbC models (the JSON files do not store the prompts of the synthesized images):
#: Custom Diffusion's customization prompts, ``{token}`` its modifier token, ``{category}`` the ImageNet class.
ABC_PROMPTS = {"object-centric": "photo of a {token} {category}", "artist-style": "art in the style of {token} art"}
ABC_TOKEN = "<new1>"
WEIGHT_SUFFIXES = ("", ".safetensors", ".bin", ".pt")


def _find_weights(weights_dir, subset: str, class_id: str) -> str | None:
    """``<weights_dir>/<subset>/<class_id>`` or ``<weights_dir>/<class_id>`` — a directory or a file, with or
    without one of :data:`WEIGHT_SUFFIXES`."""
    if not weights_dir:
        return None
    from pathlib import Path

    root = Path(weights_dir).expanduser()
    for folder in (root / subset, root):
        for suf in WEIGHT_SUFFIXES:
            p = folder / f"{class_id}{suf}"
            if p.exists():
                return str(p)
    return None


def _abc_selection(config: Mapping[str, Any]) -> list[dict]:
    """The AbC models and queries the configuration selects (cheap: reads the JSON files only).

    Per split, ``models_per_split`` models are taken round-robin over the split's subsets, each subset in a seeded
    random order (seed: ``seed_offset``, independent of the run seed so cells are known before setup); per model,
    ``queries_per_model`` synthesized images in a seeded random order over its prompt types."""
    import os

    from genattr.datasets.abc import load_abc_split
    from genattr.harness.seeding import numpy_rng

    root = config["data_root"]
    out = []
    for split in SPLIT_ORDER:
        subsets = list(config["abc_subsets"].get(split, []))
        orders = []
        for sub in subsets:
            if not os.path.isfile(os.path.join(os.path.expanduser(str(root)), "dataset", "json", f"test_{sub}.json")):
                continue  # a subset the user does not have: its split just has fewer models
            entries = load_abc_split(root, sub)
            perm = numpy_rng("customized-model", int(config["seed_offset"]), sub).permutation(len(entries))
            orders.append([entries[i] for i in perm])
        chosen = []
        while len(chosen) < int(config["models_per_split"]) and any(orders):
            for o in orders:
                if o and len(chosen) < int(config["models_per_split"]):
                    chosen.append(o.pop(0))
        for e in chosen:
            synth = e.synth if isinstance(e.synth, Mapping) else {"synth": list(e.synth)}
            paths = [(t, p) for t in sorted(synth) for p in synth[t]]
            rng = numpy_rng("customized-model", int(config["seed_offset"]), e.split, e.class_id, "queries")
            pick = rng.permutation(len(paths))[: int(config["queries_per_model"])]
            cid = f"{e.split}-{int(e.index):04d}-{e.class_id}".replace("/", "_")
            category = e.category if e.category else ""
            prompt = ABC_PROMPTS[split].format(token=ABC_TOKEN, category=category.replace("_", " ")).strip()
            out.append({
                "id": cid, "split": split, "subset": e.split, "class_id": str(e.class_id), "category": e.category,
                "exemplars": list(e.exemplar_paths), "exemplar_ids": list(e.exemplar_ids),
                "queries": [{"path": paths[i][1], "type": paths[i][0]} for i in sorted(pick)],
                "prompt": prompt,
                "weights": _find_weights(config.get("weights_dir"), e.split, str(e.class_id)),
            })
    return out


def _abc_build_state(bench: "CustomizedModelBenchmark", env: RunEnv) -> _State:
    """Cases, pool and provenance for the AbC data. Exemplars and queries are loaded now (they are few); the
    LAION pool stays on disk (``AbCPool``); customized models load per concept when a method needs them."""
    import os

    from genattr.datasets.abc import AbCPool, load_images
    from genattr.harness.data import InMemoryDataset

    t0 = time.perf_counter()
    c = bench.config
    root, res = c["data_root"], int(c["resolution"])
    selection = _abc_selection(c)
    if not selection:
        raise UserError(f"customized-model: no AbC models found under {root!r} (expected dataset/json/test_*.json)")
    cases = []
    for e in selection:
        ex_imgs = load_images([os.path.join(root, p) if not os.path.isabs(p) else p for p in e["exemplars"]], res)
        ex = InMemoryDataset(f"abc-exemplars-{e['id']}", "1", e["exemplar_ids"], ex_imgs,
                             [(e["prompt"],)] * len(e["exemplars"]))
        q_imgs = load_images([os.path.join(root, q["path"]) if not os.path.isabs(q["path"]) else q["path"]
                              for q in e["queries"]], res)
        case = ConceptCase(id=e["id"], split=e["split"], token=ABC_TOKEN, exemplars=ex,
                           prompts=[e["prompt"]] * len(e["queries"]), seeds=[None] * len(e["queries"]),
                           weights=e["weights"], description=f"{e['subset']} {e['class_id']} {e['category'] or ''}".strip())
        case.queries = [Query(id=f"{e['id']}/q{i:02d}", image=q_imgs[i], prompt=e["prompt"],
                              meta={"concept": e["id"], "split": e["split"], "path": q["path"], "type": q["type"],
                                    "query": i})
                        for i, q in enumerate(e["queries"])]
        cases.append(case)
    base = AbCPool(root, resolution=res, limit=c["pool_size"])
    pool = ConcatDataset(_pool_name(base), [base] + [k.exemplars for k in cases])
    n_base = len(base)
    start = n_base
    for k in cases:
        k.own_idx = list(range(start, start + len(k.exemplars)))
        start += len(k.exemplars)
    missing = [k.id for k in cases if not k.weights]
    if missing:
        _warn(f"customized-model: no customized-model weights for {len(missing)} of {len(cases)} models "
              f"({', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}); their cells run only for "
              "model-free methods")
    provenance = {
        "source": "abc",
        "data_root": str(root),
        "datasets": {"pool": pool.fingerprint},
        "models": {"base": c["base_model"], **{k.id: k.weights for k in cases}},
        "concepts": [_case_json(k) for k in cases],
        "missing_weights": missing,
        "sizes": {"pool_base": n_base, "pool_all": len(pool),
                  "concepts": {s: sum(k.split == s for k in cases) for s in SPLIT_ORDER},
                  "queries": sum(len(k.queries) for k in cases)},
        "verification": {"note": "not run on AbC data (the benchmark ships the synthesized images)"},
        "setup_s": round(time.perf_counter() - t0, 2),
    }
    return _State(cases={k.id: k for k in cases}, pool=pool, n_base=n_base, provenance=provenance)


_BASE_MODELS: dict = {}


def _abc_base_model(base_model: str):
    """The base model of the deltas, loaded once per process: a directory saved by a genattr model
    (``genattr_model.json``, e.g. ``tiny-t2i``) or a diffusers Stable Diffusion pipeline (local path or hub id)."""
    from pathlib import Path

    key = str(base_model)
    if key not in _BASE_MODELS:
        _BASE_MODELS.clear()  # one base at a time: Stable Diffusion is large
        p = Path(key).expanduser()
        if (p / "genattr_model.json").is_file():
            import json

            kind = json.loads((p / "genattr_model.json").read_text()).get("model")
            if kind != "tiny-t2i":
                raise UserError(f"customized-model: base_model {key!r} holds a {kind!r} model; expected tiny-t2i "
                                "or a diffusers pipeline")
            from genattr.plugins.models.tiny_t2i import TinyT2I

            _BASE_MODELS[key] = TinyT2I.load(str(p))
        else:
            from genattr.plugins.models.diffusers_adapter import DiffusersT2I

            loader = getattr(DiffusersT2I, "from_pretrained", None) or DiffusersT2I
            _BASE_MODELS[key] = loader(key)
    return _BASE_MODELS[key]


def _abc_load_model(config: Mapping[str, Any], case: ConceptCase, env: RunEnv):
    """The customized model of one AbC case: the base model with the case's delta applied — a genattr delta
    directory (``delta.json``, written by ``save_delta``) or a Custom-Diffusion delta (diffusers adapter)."""
    from pathlib import Path

    base = _abc_base_model(config["base_model"])
    path = Path(case.weights)
    if path.is_dir() and (path / "delta.json").is_file():
        from genattr.plugins.models.common import load_delta

        model = load_delta(base, str(path))
    else:
        from genattr.plugins.models.diffusers_adapter import load_delta

        model = load_delta(base, str(path))
    if env.device and env.device != "cpu" and hasattr(model, "to"):
        model = model.to(env.device)
    return model


class ConcatDataset:
    """Datasets one after another (a :class:`~genattr.harness.api.Dataset`; ids must not collide). Items are read
    from the parts on demand, so a pool on disk stays on disk."""

    version = "1"

    def __init__(self, name: str, parts: Sequence[Any]):
        self.name = name
        self.parts = list(parts)
        if len({(p.channels, p.resolution) for p in self.parts}) > 1:
            raise ValueError("ConcatDataset: parts differ in channels or resolution")
        self._offsets = [0]
        for p in self.parts:
            self._offsets.append(self._offsets[-1] + len(p))
        self._ids = [i for p in self.parts for i in p.ids]
        if len(set(self._ids)) != len(self._ids):
            raise ValueError(f"dataset {name!r} has duplicate ids")
        self._index = {i: k for k, i in enumerate(self._ids)}
        self._fp = None

    resolution = property(lambda self: self.parts[0].resolution)
    channels = property(lambda self: self.parts[0].channels)

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def index_of(self, item_id: str) -> int:
        return self._index[item_id]

    def _locate(self, i: int):
        import bisect

        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._offsets, i) - 1
        return self.parts[k], i - self._offsets[k]

    def item(self, i: int):
        part, j = self._locate(int(i))
        return part.item(j)

    def captions(self, i: int):
        part, j = self._locate(int(i))
        return part.captions(j)

    def images(self, indices: Sequence[int] | None = None):
        import torch

        indices = list(range(len(self))) if indices is None else [int(i) for i in indices]
        if not indices:
            return torch.empty((0, self.channels, self.resolution, self.resolution))
        out = [None] * len(indices)
        by_part: dict = {}
        for pos, i in enumerate(indices):
            part, j = self._locate(i)
            by_part.setdefault(id(part), (part, []))[1].append((pos, j))
        for part, items in by_part.values():  # one batched read per part
            imgs = part.images([j for _, j in items])
            for (pos, _), img in zip(items, imgs):
                out[pos] = img.float()
        return torch.stack(out)

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            import hashlib

            h = hashlib.sha256(self.name.encode())
            for p in self.parts:
                h.update(p.fingerprint.encode())
            self._fp = h.hexdigest()
        return self._fp

    def subset(self, ids: Sequence[str]):
        from genattr.harness.data import InMemoryDataset

        idx = [self._index[i] for i in ids]
        return InMemoryDataset(self.name, self.version, list(ids), self.images(idx), [self.captions(i) for i in idx])

    def __repr__(self) -> str:
        return f"<ConcatDataset {self.name} N={len(self)} parts={len(self.parts)}>"
