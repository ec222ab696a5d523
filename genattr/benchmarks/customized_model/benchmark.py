"""The Customized Model benchmark class: cells, setup, the context a method sees, scoring a concept's queries."""

from __future__ import annotations

from typing import Mapping, Sequence

from genattr.harness.api import AttributionContext, Cell, RunEnv
from genattr.harness.errors import UserError

from .cases import BuiltinData, ConceptCase, LazyExtra, State
from .config import SPLIT_ORDER, SPLITS, benchmark_config, mean_se, pool_column
from .pools import resolve_metrics, score_pools


class CustomizedModelBenchmark:
    """Customized Model benchmark (see :mod:`genattr.benchmarks.customized_model`). Config: ``scale`` plus any key
    of :data:`~.config.COMMON_DEFAULTS` / :data:`~.config.SCALE_DEFAULTS`."""

    #: what :meth:`context` may put in ``ctx.extra`` (base_model and training_concepts only on built-in data)
    provides_extra = ("benchmark", "preset_hint", "preset_model", "base_items", "base_model", "training_concepts")

    name = "customized-model"
    #: 2: the built-in style concepts a 16 px model can learn (test: night, sunset, stripes, glow; train: sepia,
    #: palette-shift, crimson, shadow); the pool carries its base dataset's name.
    version = "2"
    #: The paper ran unlearning with other hyperparameters on this protocol: methods with presets pick theirs.
    preset_hint = "customized"

    def __init__(self, **config):
        self.config = benchmark_config(config)
        self._metrics = resolve_metrics(self.config["metrics"])
        columns = [c for c, _, _ in self._metrics]
        self.metrics = {pool_column(c, p): info["higher_is_better"]
                        for p in self.config["pools"] for c, _, info in self._metrics}
        self.metric_info = {pool_column(c, p): {**info, "display": info["display"] + ("" if p == "own" else f" ({p})")}
                            for p in self.config["pools"] for c, _, info in self._metrics}
        self.columns = columns
        self._states: dict = {}
        self._builtin = BuiltinData(self.config)
        self._current_model = (None, None)  # AbC: (case id, loaded model)

    @property
    def real_data(self) -> bool:
        return bool(self.config["data_root"])

    @property
    def preset_model(self) -> str | None:
        """The model whose built-in recipe makes every base model here (offered to methods' ``resolve_config``, so
        they can apply values calibrated for it); None on the AbC data, whose base model is loaded, not built."""
        return None if self.real_data else self.config["model"]

    def resolved_recipe(self) -> dict | None:
        """The built-in miniature's model recipe (base model, training, data, customization) with the
        configuration's overrides: part of the benchmark's configuration hash and of ``run.json``. None on the AbC
        data (given deltas, no recipe)."""
        if self.real_data:
            return None
        recipe = self._builtin.recipe()
        return {**recipe, "customize": {**recipe["customize"], **dict(self.config["customize"] or {})}}

    def required_model_capabilities(self) -> dict[str, tuple[str, ...]]:
        """``{model name: capabilities}`` checked before any work: the built-in miniature trains and customizes its
        base model; the AbC data applies given deltas to a loaded base model."""
        if self.real_data:
            return {self.config["model"]: ("customizable",)}
        return {self.config["model"]: ("trainable", "customizable")}

    # -- cells --------------------------------------------------------------------------------------------------
    def concept_specs(self) -> list[dict]:
        """``[{"id", "split", "queries", "has_weights"}]`` without building any model (cheap)."""
        if self.real_data:
            from .abc_data import abc_selection

            return [{"id": e["id"], "split": e["split"], "queries": len(e["queries"]), "has_weights": bool(e["weights"])}
                    for e in abc_selection(self.config)]
        return [
            {"id": c.id, "split": SPLITS[c.kind], "queries": self.config["queries_per_concept"], "has_weights": True}
            for c in self._builtin.concepts(resolution=8)  # ids and splits only: any resolution will do
        ]

    def cells(self, methods: Sequence[str]) -> list[Cell]:
        """``method × concept × query``; the queries of one concept share a batch (one ``attribute`` call)."""
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
                        group={"split": s["split"]}, batch=s["id"],
                    ))
        from .._seeds import expand

        return expand(out, self.config["model_seeds"])

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self, env: RunEnv) -> dict:
        from .._seeds import env_for

        seeds = self.config["model_seeds"]
        if seeds is None:
            return self._load(env).provenance
        return {"model_seeds": {str(s): self._load(env_for(env, seed=s)).provenance for s in seeds}}

    def _load(self, env: RunEnv, split: str = "test") -> State:
        """The state of the ``test`` concepts (what cells measure) or, built-in data only, of the ``train`` concepts
        (for methods that learn and for :func:`~.calibration.calibrate`). Built once per process; models, queries and
        the base model come from the cache."""
        key = (str(env.cache.root), int(env.seed), str(env.device), split)
        if key in self._states:
            return self._states[key]
        if self.real_data:
            if split != "test":
                raise UserError("customized-model: AbC data has no training concepts")
            from .abc_data import abc_build_state

            state = abc_build_state(self, env)
        else:
            state = self._builtin.build(env, split, self._load)
        self._states[key] = state
        return state

    # -- the context a method sees ------------------------------------------------------------------------------
    def context(self, case_id: str, method, env: RunEnv, split: str = "test") -> AttributionContext:
        """The :class:`AttributionContext` a method sees for one concept: model = the concept's customized model,
        train set = the ``all`` pool; ``extra``: ``preset_hint``, ``preset_model``, ``base_model`` (the model every customized model
        derives from, e.g. for a Fisher shared by all of them; built-in data), ``base_items`` (the pool's first
        ``base_items`` items are base-model training images, the rest concept exemplars the base model never saw)
        and ``training_concepts`` (built on first access)."""
        state = self._load(env, split)
        case = state.cases[case_id]
        model = self._model_for(case, env) if getattr(method, "needs_model", True) else None
        factories = {}
        if state.training_concepts is not None:
            factories["training_concepts"] = state.training_concepts
        data = {"benchmark": self.name, "preset_hint": self.preset_hint, "preset_model": self.preset_model,
                "base_items": int(state.n_base)}
        if state.base_model is not None:
            data["base_model"] = state.base_model
        return AttributionContext(model=model, train_set=state.pool, cache=env.cache, device=env.device,
                                  seed=int(env.seed), scale=self.config["scale"], progress=env.progress,
                                  extra=LazyExtra(data, factories))

    def attribution_context(self, env: RunEnv, concept: str | None = None, allow_unverified: bool = False):
        """``(model, training set, description)`` for ``genattr attribute --run``: a concept's customized model
        (``concept``; default the first that passed verification) and the ``all`` pool. A concept whose customized
        model failed verification is refused unless ``allow_unverified`` (its model does not show the concept)."""
        state = self._load(env)
        failed = set(((state.provenance or {}).get("verification") or {}).get("failed") or ())
        if concept is None:
            usable = [c for c in sorted(state.cases) if c not in failed] or sorted(state.cases)
            concept = usable[0]
        if concept not in state.cases:
            raise UserError(f"customized-model: no concept {concept!r} in this run; concepts: "
                            f"{', '.join(sorted(state.cases))}")
        if concept in failed and not allow_unverified:
            ok = [c for c in sorted(state.cases) if c not in failed]
            raise UserError(f"customized-model: the customized model of {concept!r} failed verification (it does not "
                            f"reproduce its concept); pick a verified concept ({', '.join(ok) or 'none'}) or pass "
                            "--allow-unverified")
        case = state.cases[concept]
        note = " (failed verification)" if concept in failed else ""
        return self._model_for(case, env), state.pool, f"customized model of concept {concept}{note} and the pool"

    def _model_for(self, case: ConceptCase, env: RunEnv):
        if case.model is not None:
            return case.model
        if not case.weights:
            raise UserError(f"customized-model: no weights for model {case.id!r} (looked in weights_dir)")
        cid, m = self._current_model
        if cid == case.id:
            return m
        self._current_model = (None, None)
        from .abc_data import abc_load_model

        m = abc_load_model(self.config, case, env)
        self._current_model = (case.id, m)
        return m

    # -- scoring ------------------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell, method, env: RunEnv) -> dict:
        from .._seeds import env_for

        return self.evaluate(cell.params["concept"], int(cell.params["query"]), method, env_for(env, cell))

    def run_cells(self, cells: Sequence[Cell], method, env: RunEnv):
        """The cells of one concept (and model seed): every query scored in one ``attribute`` call."""
        from .._seeds import env_for

        by_concept: dict[tuple, list[Cell]] = {}
        for c in cells:
            by_concept.setdefault((c.params["concept"], c.params.get("model_seed")), []).append(c)
        for (concept, _), group in by_concept.items():
            rows = self.evaluate_many(concept, [int(c.params["query"]) for c in group], method,
                                      env_for(env, group[0]))
            yield from zip(group, rows)

    def evaluate(self, case_id: str, query: int, method, env: RunEnv, split: str = "test") -> dict:
        """Metrics of ``method`` on one query of one concept (``split`` ``train``: a training concept, used by
        :func:`~.calibration.calibrate`)."""
        return self.evaluate_many(case_id, [query], method, env, split)[0]

    def evaluate_many(self, case_id: str, queries: Sequence[int], method, env: RunEnv,
                      split: str = "test") -> list[dict]:
        """Metrics of ``method`` on several queries of one concept, scored together (one ``attribute`` call)."""
        from genattr.harness import media
        from genattr.harness.scoring import score

        state = self._load(env, split)
        if case_id not in state.cases:
            raise UserError(f"customized-model: unknown concept {case_id!r}")
        case = state.cases[case_id]
        for query in queries:
            if not 0 <= query < len(case.queries):
                raise UserError(f"customized-model: concept {case_id!r} has {len(case.queries)} queries, "
                                f"not {query + 1}")
        qs = [case.queries[i] for i in queries]
        ctx = self.context(case_id, method, env, split)
        timings: dict = {}
        scores = score(method, ctx, qs, timings=timings)
        out = []
        for q, s in zip(qs, scores):
            row, extra = score_pools(s, state.n_base, case.own_idx, self.config["pools"], self._metrics)
            extra.update({"concept": case.id, "query_id": q.id, "prompt": q.prompt,
                          "verified": case.verification.get("passed"), "prepare_s": timings["prepare_s"],
                          "attribute_s": round(timings["attribute_s"] / len(qs), 6), "batch_queries": len(qs)})
            if split == "test":
                pics = media.attribution_media(env.out, q.image, state.pool, s, positives=case.own_idx)
                if pics is not None:
                    extra["media"] = pics
            row["extra"] = extra
            out.append(row)
        return out

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
        return {m: {s: {c: mean_se(v) for c, v in cols.items()} for s, cols in splits.items()}
                for m, splits in groups.items()}


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


__all__ = ["CustomizedModelBenchmark"]
