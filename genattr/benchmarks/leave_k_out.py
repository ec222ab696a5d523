"""The leave-K-out counterfactual benchmark (PAPER_NOTES §2; the paper's Table 1).

Protocol
--------
1. Train a base model θ0 from scratch on the training set (model cache: a second run loads it).
2. Synthesize queries with θ0 from **held-out** captions (captions of items that are not in the training set), one
   per query, each with a fixed seed derived from ``(run seed, "leave-k-out/query", query index)``.
3. Cells are ``method × K × query``. A cell asks the method for its scores on the query (computed once per
   (method, method config, θ0, query) and cached: the same scores serve every K), removes the top-K training items,
   retrains from scratch with the *same* recipe and seed — the removed items are the only difference; ``coupled``
   retraining (the default of the built-in scales, :data:`RETRAIN_MODES`) also keeps θ0's batch sequence — and
   measures ``delta-loss``, ``delta-gen-mse`` and ``delta-gen-sim`` (registered counterfactual metrics).
   Retrained models go through the content-addressed model cache, keyed on the training set's fingerprint and the
   removed-id set: the same removal is never trained twice (across methods, queries,
   runs). The metric values of a (removal set, query) pair are cached too, so a re-run is fast.
4. The random baseline (method ``random``) does not rank per query: for every K it draws ``random_draws`` (R)
   removal sets from ``(run seed, K, draw)`` — the same R sets for every query, so R retrains per K rather than
   R × queries — and a cell reports the mean over the draws (per-draw values in ``extra``).
5. :meth:`LeaveKOutBenchmark.summarize` turns result rows into the Table-1-shaped table: method × K, mean ±
   standard error over queries of ΔL, ΔG-MSE and ΔG-similarity.

Configuration keys (``get_benchmark("leave-k-out", **config)``; unspecified keys come from the scale preset):
``scale`` (tiny | small | paper), ``dataset`` (any registered dataset; built-in: digits, shapes, mscoco),
``dataset_config`` (keyword arguments of the dataset; for mscoco ``root``, ``annotations``, ``split`` and optionally
``latents``, plus ``query_split`` / ``query_annotations`` for the held-out captions), ``n`` (training-set size),
``model`` (registered adapter name for the model cache: ``tiny-t2i`` or ``diffusers``), ``recipe`` (tiny | small, a
scale of the model's own ``recipe(scale, dataset)``), ``model_config`` / ``train_config`` (override the recipe's),
``train_seed`` (default: the run seed), ``k`` (list of counts ≥ 1 or fractions of N in (0, 1); a fraction becomes
``max(1, round(f·N))``), ``num_queries``, ``query_steps`` (sampling steps for queries and regenerations),
``random_draws``, ``random_method`` (the method name treated as the random baseline, default ``random``),
``loss_stride`` (5), ``retrain`` (``coupled`` | ``independent``, :data:`RETRAIN_MODES`), ``metrics`` (counterfactual
metrics through the metric registry: names or ``{name = ..., options}``; default ΔL, ΔG-MSE, ΔG-similarity),
``encoder`` (ΔG-similarity encoder spec, a shortcut for that metric's ``encoder`` option; default
``builtin:<dataset>`` for built-in data, ``clip:openai/clip-vit-base-patch32`` for mscoco), ``group`` (``method``:
a method's cells form one group whose queries are scored in one ``attribute`` call; ``query``: one group per query;
``cell``: no grouping — on a cluster, retrains then spread over workers).

The dataset and model go through the registries and the shared counterfactual machinery
(:mod:`genattr.benchmarks._counterfactual`): a third-party dataset with a ``heldout(n, count)`` method (or enough
items after the first ``n``) runs here as it is. Counterfactual metrics are called as
``metric(base_model, retrained_model, query, **context)`` with the context ``base_losses``, ``retrained_losses``,
``images`` (θ0's and the retrain's regenerations), ``encoder``, ``cache``, ``device``, ``dataset`` (θ0's training
set); a metric takes the keywords it names.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from genattr.harness.api import Cell, Query
from genattr.harness.cache import hash_json
from genattr.harness.errors import UserError

from ._counterfactual import (RETRAIN_MODES, Counterfactual, apply_overrides, preset_config, resolve_metric_specs,
                              theta0)

NAME = "leave-k-out"
VERSION = "1"

#: The paper's K as fractions of N: 500, 1000, 4000 of 118,287 COCO images.
PAPER_K_FRACTIONS = (0.0042, 0.0085, 0.034)

#: Scale presets. ``small`` is sized to finish (three methods, one K, a handful of queries) in about 30 minutes on
#: a 2-core CPU including the base model and every retrain; see docs/benchmarks/leave-k-out.md for the figures.
SCALES: dict[str, dict] = {
    "tiny": theta0("tiny", k=[2, 6], num_queries=2, random_draws=2, loss_stride=5, encoder=None),
    "small": theta0("small", k=[0.034], num_queries=5, random_draws=4, loss_stride=5, encoder=None),
    "paper": theta0("paper", k=[500, 1000, 4000], num_queries=110, random_draws=10, loss_stride=5, encoder=None),
}

COMMON = {"train_seed": None, "random_method": "random", "guidance_scale": None, "retrain": None, "metrics": None,
          "group": None, "model_seeds": None}

#: The counterfactual metrics reported when ``metrics`` is not given.
DEFAULT_METRICS = ["delta-loss", "delta-gen-mse", "delta-gen-sim"]

GROUPS = ("method", "query", "cell")


def resolve_k(k_values: Sequence[float | int], n: int) -> list[tuple[int, float]]:
    """``[(count, fraction of n)]`` for each K: integers (or floats ≥ 1) are counts, floats in (0, 1) fractions of
    ``n`` rounded to the nearest count, at least 1. Counts must be below ``n``. Duplicates are dropped."""
    out: list[tuple[int, float]] = []
    for v in k_values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise UserError(f"leave-k-out: K must be a positive count or a fraction in (0, 1), got {v!r}")
        count = max(1, int(round(v * n))) if (isinstance(v, float) and v < 1) else int(v)
        if count >= n:
            raise UserError(f"leave-k-out: K={v!r} removes {count} of N={n} training items; K must be below N")
        if count not in [c for c, _ in out]:
            out.append((count, count / n))
    return out


def top_k(scores, k: int):
    """Indices of the ``k`` highest scores (ties: lower index first; NaN counts as lowest)."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s = np.where(np.isnan(s), -np.inf, s)
    return np.argsort(-s, kind="stable")[:k]


def random_removal(seed: int, k: int, draw: int, n: int):
    """The ``draw``-th random removal set of size ``k`` (sorted indices into the training set): a function of
    ``(seed, k, draw)`` only — shared by every query."""
    import numpy as np

    from genattr.harness.seeding import numpy_rng

    return np.sort(numpy_rng(seed, "leave-k-out/random", int(k), int(draw)).choice(n, size=int(k), replace=False))


class LeaveKOutBenchmark(Counterfactual):
    """Leave-K-out counterfactual evaluation (see the module docstring for the protocol and the configuration)."""

    name = NAME
    version = VERSION
    NAME, VERSION = NAME, VERSION
    preset_hint = None

    def __init__(self, scale: str = "tiny", **overrides: Any):
        cfg = apply_overrides(preset_config("leave-k-out", scale, overrides, SCALES, COMMON), overrides,
                              SCALES[scale]["model"])
        if isinstance(cfg["k"], (int, float)) and not isinstance(cfg["k"], bool):
            cfg["k"] = [cfg["k"]]
        if cfg["retrain"] is None:
            cfg["retrain"] = "independent" if scale == "paper" else "coupled"
        if cfg["group"] is None:
            cfg["group"] = "cell" if scale == "paper" else "method"
        _validate(cfg)
        from ._seeds import check_model_seeds

        cfg["model_seeds"] = check_model_seeds(cfg["model_seeds"], NAME)
        if cfg["model_seeds"] is not None and cfg["train_seed"] is not None:
            raise UserError("leave-k-out: give model_seeds or train_seed, not both")
        cfg["scale"] = scale
        self.config = cfg
        self.scale = scale
        self._states: dict = {}
        self._k: list[tuple[int, float]] = []
        self._metrics_resolved = resolve_metrics(cfg)
        self.metrics = {c: info["higher_is_better"] for c, _, info in self._metrics_resolved}
        self.metric_info = {c: info for c, _, info in self._metrics_resolved}

    # -- setup ------------------------------------------------------------------------------------------------------
    def setup(self, env) -> dict:
        """Build (or load from the cache) the training set, θ0 and the queries (one θ0 per model seed); returns
        provenance."""
        from ._seeds import env_for

        seeds = self.config["model_seeds"]
        if seeds is None:
            return self._setup(env).provenance
        return {"model_seeds": {str(s): self._setup(env_for(env, seed=s)).provenance for s in seeds}}

    def _setup(self, env):
        key = (str(env.cache.root), int(env.seed), env.device)
        if key in self._states:
            return self._states[key]
        st = self._setup_state(env)
        self._k = resolve_k(self.config["k"], len(st.train))
        st.provenance["k"] = [{"K": c, "K_frac": f} for c, f in self._k]
        self._states[key] = st
        return st

    # -- cells ------------------------------------------------------------------------------------------------------
    def _k_list(self) -> list[tuple[int, float]]:
        if self._states:
            return self._k
        return resolve_k(self.config["k"], self._n_without_setup())

    def _n_without_setup(self) -> int:
        """The training-set size, known before setup from ``n`` or the recipe; else the dataset's size (built)."""
        cfg = self.config
        if cfg["n"] is not None:
            return int(cfg["n"])
        rec = self._recipe_parts()[2]
        n = next((rec[k] for k in ("limit", "n") if rec.get(k)), None)
        if n is not None:
            return int(n)
        if any(isinstance(v, float) and v < 1 for v in cfg["k"]):
            raise UserError("leave-k-out: K given as fractions of N needs n (or give K as counts)")
        return 1 << 62

    def cells(self, methods: Sequence[str]) -> list[Cell]:
        """``method × K × query``; grouped per ``group`` (a method's queries are scored in one call)."""
        out = []
        how = self.config["group"]
        for m in methods:
            for count, frac in self._k_list():
                for j in range(int(self.config["num_queries"])):
                    batch = {"method": m, "query": f"{m}/q{j:03d}", "cell": None}[how]
                    out.append(Cell(id=f"{m}/K{count}/q{j:03d}", method=m,
                                    params={"K": count, "K_frac": frac, "query": j},
                                    group={"K": count, "K_frac": round(frac, 6)}, batch=batch))
        from ._seeds import expand

        return expand(out, self.config["model_seeds"])

    # -- scores -----------------------------------------------------------------------------------------------------
    def scores(self, method, query: Query, env):
        """The method's scores (N,) for one query, cached per (method, config, θ0, training set, query)."""
        return self.method_scores(method, [query], env, self._setup(env), self.preset_hint)[0]

    def removal_for(self, cell: Cell, method, env, scores=None) -> list[list[int]]:
        """The removal set(s) of a cell as sorted training indices: one for a ranking method, R for random."""
        st = self._setup(env)
        k = int(cell.params["K"])
        n = len(st.train)
        if cell.method == self.config["random_method"]:
            return [random_removal(int(env.seed), k, r, n).tolist() for r in range(int(self.config["random_draws"]))]
        if scores is None:
            scores = self.scores(method, st.queries[int(cell.params["query"])], env)
        return [sorted(int(i) for i in top_k(scores, k))]

    # -- metrics ----------------------------------------------------------------------------------------------------
    def _encoder_spec(self) -> str:
        for column, metric, info in self._metrics_resolved:
            if hasattr(metric, "default_spec"):
                return self.config["encoder"] or metric.config.get("encoder") or metric.default_spec(
                    self.config["dataset"])
        return self.config["encoder"] or ""

    def evaluate_removal(self, removed: Sequence[int], query: Query, env) -> dict:
        """Retrain without ``removed`` (training indices; cached) and return the metrics for ``query`` plus
        ``retrain_key``. The values are cached per (removal set, query, metrics and their options)."""
        from genattr.harness.counterfactual import query_loss, regenerate

        st = self._setup(env)
        make, rkey = self.retrain_without(removed, env, st)
        enc_spec = self._encoder_spec()
        ident = {c: [info["metric"], getattr(m, "version", "0"), getattr(m, "config", {})]
                 for c, m, info in self._metrics_resolved}
        vkey = env.cache.key(NAME, VERSION, "removal-metrics", rkey, st.base.fingerprint, query.id, query.prompt,
                             query.meta.get("seed"), query.meta.get("steps"), int(self.config["loss_stride"]),
                             int(env.seed), enc_spec, ident)
        got = env.cache.get_json("leave-k-out/removal-metrics", vkey)
        if got is not None:
            return got
        retrained = make()
        stride = int(self.config["loss_stride"])
        base_img = query.image if query.meta.get("steps") is not None else regenerate(st.base, query)
        context = {"base_losses": self.base_losses(query, env, st),
                   "retrained_losses": query_loss(retrained, query, seed=int(env.seed), stride=stride),
                   "images": (base_img, regenerate(retrained, query)), "encoder": enc_spec or None,
                   "cache": env.cache, "device": env.device, "dataset": st.train}
        values = {c: float(m(st.base, retrained, query, **_accepted(m, context))) for c, m, _ in self._metrics_resolved}
        out = {**values, "retrain_key": rkey, "retrained_fingerprint": retrained.fingerprint}
        if getattr(retrained, "vocab", None) is not None and getattr(st.base, "vocab", None) is not None:
            # tiny-t2i builds its word vocabulary from the training captions: a removal that drops the last
            # caption using a word changes the text encoder's table (recorded, so it can be checked)
            out["vocab_changed"] = list(retrained.vocab) != list(st.base.vocab)
        env.cache.put_json("leave-k-out/removal-metrics", vkey, out)
        return out

    def run_cell(self, cell: Cell, method, env, scores=None) -> dict:
        import numpy as np

        from ._seeds import env_for

        env = env_for(env, cell)
        st = self._setup(env)
        query = st.queries[int(cell.params["query"])]
        ranking = cell.method != self.config["random_method"]
        if ranking and scores is None:
            scores = self.scores(method, query, env)
        removals = self.removal_for(cell, method, env, scores)
        per = [self.evaluate_removal(r, query, env) for r in removals]
        result: dict[str, Any] = {m: float(np.mean([p[m] for p in per])) for m in self.metrics}
        extra: dict[str, Any] = {"K": int(cell.params["K"]), "N": len(st.train), "query_id": query.id,
                                 "prompt": query.prompt, "seed": query.meta["seed"]}
        if not ranking:
            extra["draws"] = [{m: p[m] for m in self.metrics} for p in per]
            extra["removed_sha256"] = [hash_json(r) for r in removals]
        else:
            ids = [st.train.ids[i] for i in removals[0]]
            extra["removed_sha256"] = hash_json(removals[0])
            if len(ids) <= 100:
                extra["removed_ids"] = ids
            from genattr.harness import media

            pics = media.attribution_media(env.out, query.image, st.train, scores)
            if pics is not None:
                extra["media"] = pics
        result["extra"] = extra
        return result

    def run_cells(self, cells: Sequence[Cell], method, env):
        """A group: the queries of every ranking cell scored in one ``attribute`` call (cached per query), then
        each cell's retrains (a group never mixes model seeds: the seed is part of its batch key)."""
        from ._seeds import env_for

        if cells:
            env = env_for(env, cells[0])
        st = self._setup(env)
        scores: dict[int, Any] = {}
        if cells and cells[0].method != self.config["random_method"]:
            qidx = sorted({int(c.params["query"]) for c in cells})
            got = self.method_scores(method, [st.queries[j] for j in qidx], env, st, self.preset_hint)
            scores = dict(zip(qidx, got))
        for c in cells:
            yield c, self.run_cell(c, method, env, scores.get(int(c.params["query"])))

    # -- summary ----------------------------------------------------------------------------------------------------
    @staticmethod
    def summarize(rows: Sequence[dict], numeric: bool = False):
        """The Table-1-shaped summary of result rows (dicts with ``method``, ``group`` / ``params`` holding ``K``,
        and ``metrics``): one row per method, columns ``(metric, K)``, cells ``"mean ± s.e."`` over queries.
        ``numeric=True`` gives the long form instead: ``method, K, K_frac, metric, mean, se, n``."""
        import pandas as pd

        recs = []
        names: list[str] = []  # metric columns in the order the rows hold them
        for r in rows:
            if r.get("benchmark", NAME) == NAME:
                names += [m for m in (r.get("metrics") or {}) if m not in names]
        names = names or list(DEFAULT_METRICS)
        for r in rows:
            if r.get("benchmark", NAME) != NAME:
                continue
            group = r.get("group") or r.get("params") or {}
            metrics = r.get("metrics") or {m: r.get(m) for m in names}
            for m in names:
                v = metrics.get(m)
                if v is None:
                    continue
                recs.append({"method": r["method"], "K": int(group["K"]), "K_frac": group.get("K_frac"),
                             "metric": m, "value": float(v)})
        cols = ["method", "K", "K_frac", "metric", "mean", "se", "n"]
        if not recs:
            return pd.DataFrame(columns=cols)
        df = pd.DataFrame(recs)
        g = df.groupby(["method", "K", "metric"], sort=True)
        long = g["value"].agg(["mean", "count", "std"]).reset_index()
        long["se"] = long["std"].fillna(0.0) / long["count"].pow(0.5)
        fr = df.groupby("K")["K_frac"].first()
        long["K_frac"] = long["K"].map(fr)
        long = long.rename(columns={"count": "n"})[cols]
        if numeric:
            return long
        long["cell"] = [f"{m:.4g} ± {s:.2g}" for m, s in zip(long["mean"], long["se"])]
        table = long.pivot(index="method", columns=["metric", "K"], values="cell")
        order = [(m, k) for m in names for k in sorted(long["K"].unique()) if (m, k) in table.columns]
        table = table[order]
        table.columns = pd.MultiIndex.from_tuples(order, names=["metric", "K"])
        return table


def resolve_metrics(cfg: dict) -> list[tuple[str, Any, dict]]:
    """``[(column, metric object, info)]`` for the ``metrics`` option through the metric registry (counterfactual
    metrics; the column is the registered name). ``encoder`` is handed to a metric with that option."""
    import inspect

    def prepare(entry, spec):
        target = entry.factory.resolve() if hasattr(entry.factory, "resolve") else entry.factory
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = {}
        if cfg.get("encoder") and "encoder" in params and "encoder" not in spec:
            spec["encoder"] = cfg["encoder"]

    return resolve_metric_specs("leave-k-out", cfg.get("metrics") or DEFAULT_METRICS, "counterfactual",
                                "counterfactual metrics (base model, retrained model, query)", prepare)


def _accepted(fn, context: dict) -> dict:
    """The part of ``context`` that ``fn`` accepts (all of it when it takes ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return context
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return context
    return {k: v for k, v in context.items() if k in params}


def _validate(cfg: dict) -> None:
    """Types and ranges of the options (one line per mistake)."""
    from genattr.harness.models import check_plan

    check_plan("leave-k-out", "train_config", cfg["train_config"])

    def positive_int(k):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"leave-k-out: {k} must be a positive integer, got {v!r}")

    for k in ("num_queries", "random_draws", "query_steps", "loss_stride"):
        positive_int(k)
    if cfg["n"] is not None:
        positive_int("n")
    if not isinstance(cfg["k"], list) or not cfg["k"]:
        raise UserError(f"leave-k-out: k must be a list of counts or fractions, got {cfg['k']!r}")
    for k in ("dataset", "model"):
        if not isinstance(cfg[k], str) or not cfg[k]:
            raise UserError(f"leave-k-out: {k} must be a registered {k} name, got {cfg[k]!r}")
    from genattr.harness.manager import registry

    registry("datasets").get(cfg["dataset"])
    registry("models").get(cfg["model"])
    if cfg["retrain"] not in RETRAIN_MODES:
        raise UserError(f"leave-k-out: unknown retrain mode {cfg['retrain']!r}; choose from "
                        f"{', '.join(RETRAIN_MODES)}")
    if cfg["group"] not in GROUPS:
        raise UserError(f"leave-k-out: group must be one of {', '.join(GROUPS)}, got {cfg['group']!r}")
    for k in ("dataset_config", "model_config", "train_config"):
        if cfg[k] is not None and not isinstance(cfg[k], dict):
            raise UserError(f"leave-k-out: {k} must be a table of options, got {cfg[k]!r}")
