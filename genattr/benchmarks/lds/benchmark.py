"""The LDS benchmark's class: setup (θ0, the queries, the subset models and their outputs), cells, running and the
summary table."""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

from genattr.harness.api import Cell, Query
from genattr.harness.cache import hash_json
from genattr.harness.errors import UserError

from genattr.harness.models import init_seed_key

from .._counterfactual import Counterfactual, CounterfactualState, apply_overrides, preset_config
from .config import BOUND_ROW, CEILING_ROW, COMMON, DEFAULT_METRICS, NAME, SCALES, VERSION, _validate, resolve_metrics
from .subsets import _spearman, attenuation_bound, draw_subsets, query_digest, seed_for


class LDSState(CounterfactualState):
    """Setup's state plus the subsets, the outputs ``(seeds, M, Q)`` and the per-query ceiling."""

    def __init__(self):
        super().__init__()
        self.subsets: list = []
        self.membership = None
        self.outputs = None
        self.ceiling = None
        self.ready = False


class LDSBenchmark(Counterfactual):
    """The LDS benchmark (see the docstring of :mod:`genattr.benchmarks.lds` for the protocol and the
    configuration)."""

    name = NAME
    version = VERSION
    NAME, VERSION = NAME, VERSION
    preset_hint = None

    def __init__(self, scale: str = "tiny", **overrides: Any):
        cfg = apply_overrides(preset_config("lds", scale, overrides, SCALES, COMMON), overrides, SCALES[scale]["model"])
        _validate(cfg)
        cfg["scale"] = scale
        self.config = cfg
        self.scale = scale
        self._state: LDSState | None = None
        self._state_key = None
        self._metrics_resolved = resolve_metrics(cfg)
        self.metrics = {c: info["higher_is_better"] for c, _, info in self._metrics_resolved}
        self.metric_info = {c: info for c, _, info in self._metrics_resolved}

    # -- setup ------------------------------------------------------------------------------------------------------
    def setup(self, env) -> dict:
        """θ0, the queries, every subset model (trained once, cached) and their outputs; returns provenance."""
        return self._ready(env).provenance

    def _setup(self, env) -> LDSState:
        """θ0, the training set and the queries (no subset model): what ``attribution_context`` needs."""
        key = (str(env.cache.root), int(env.seed), env.device)
        if self._state is not None and self._state_key == key:
            return self._state
        base = self._setup_state(env)
        st = LDSState()
        st.__dict__.update({k: v for k, v in base.__dict__.items()})
        st.queries = list(st.queries) + self._real_queries(env, st)
        n = len(st.train)
        st.subsets = draw_subsets(int(env.seed), n, int(self.config["subsets"]), float(self.config["beta"]))
        import numpy as np

        st.membership = np.zeros((len(st.subsets), n), dtype=bool)
        for j, s in enumerate(st.subsets):
            st.membership[j, s] = True
        cfg = self.config
        st.provenance.update({
            "queries": [{"id": q.id, "prompt": q.prompt, "seed": q.meta.get("seed"),
                         "source": q.meta.get("source", "generated"), "source_id": q.meta.get("source_id")}
                        for q in st.queries],
            "retrain": cfg["retrain"],
            "M": len(st.subsets),
            "beta": float(cfg["beta"]),
            "subset_size": int(st.subsets[0].size),
            "subsets": [{"j": j, "sha256": hash_json(sorted(st.train.ids[i] for i in s))}
                        for j, s in enumerate(st.subsets)],
            "subset_draw": "sorted(numpy_rng(run seed, 'lds/subset', j).choice(N, floor(beta*N), replace=False))",
            "train_seeds": [seed_for(st.train_seed, r) for r in range(int(cfg["train_seeds"]))],
            "loss_stride": int(cfg["loss_stride"]),
        })
        self._state, self._state_key = st, key
        return st

    def _real_queries(self, env, st) -> list[Query]:
        """``num_real_queries`` held-out real images (items after the training set) as queries."""
        count = int(self.config["num_real_queries"])
        if count == 0:
            return []
        import genattr
        from genattr.harness.data import size_option
        from genattr.harness.seeding import numpy_rng

        cfg = self.config
        rec = self._recipe_parts()[2]
        dcfg = {**{k: v for k, v in rec.items() if k not in ("limit", "n")}, **dict(cfg["dataset_config"] or {})}
        size_key = size_option(self._dataset_factory())
        if size_key is not None:
            dcfg[size_key] = len(st.train) + count
        try:
            source = genattr.get_dataset(cfg["dataset"], **dcfg)
        except (TypeError, ValueError) as exc:
            raise UserError(f"lds: bad configuration for dataset {cfg['dataset']!r}: "
                            f"{str(exc).splitlines()[0]}") from None
        train_ids = set(st.train.ids)
        held = [i for i in range(len(source)) if source.ids[i] not in train_ids][:count]
        if len(held) < count:
            raise UserError(f"lds: dataset {cfg['dataset']!r} has {len(held)} items outside the training set, "
                            f"num_real_queries={count} asked")
        out = []
        for j, i in enumerate(held):
            ex = source.item(i)
            caption = ex.captions[int(numpy_rng(int(env.seed), "lds/real-caption", j).integers(len(ex.captions)))]
            out.append(Query(id=f"r{j:03d}", image=ex.image.detach().float().cpu(), prompt=caption,
                             meta={"source": "real", "source_id": ex.id, "dataset": cfg["dataset"]}))
        return out

    def _ready(self, env) -> LDSState:
        """:meth:`_setup` plus the subset models' outputs and the ceiling."""
        import numpy as np

        st = self._setup(env)
        if st.ready:
            return st
        cfg = self.config
        seeds = int(cfg["train_seeds"])
        total = max(seeds, 2) if cfg["ceiling"] else seeds
        out, info = self.subset_outputs(env, st, st.queries, st.subsets, total)
        st.outputs = out
        if cfg["ceiling"]:
            st.ceiling = np.asarray([_spearman(out[0, :, q], out[1, :, q]) for q in range(out.shape[2])])
            c = st.ceiling
            mean = float(c.mean())
            st.provenance["ceiling"] = {
                "mean": mean, "se": float(c.std(ddof=1) / math.sqrt(c.size)) if c.size > 1 else 0.0,
                "n": int(c.size), "seeds": [seed_for(st.train_seed, 0), seed_for(st.train_seed, 1)],
                "per_query": {q.id: float(v) for q, v in zip(st.queries, c)},
                "definition": "Spearman over the M subsets between the query's outputs under models trained with "
                              "training seeds 0 and 1",
                "bound": attenuation_bound(mean, seeds),
                "bound_definition": "sqrt of the reliability of the outputs LDS is computed on: the seed-vs-seed "
                                    "correlation rho for one seed, R*rho/(1+(R-1)*rho) for R averaged seeds "
                                    "(Spearman-Brown); no prediction correlates better with noisy outputs"}
        else:
            st.provenance["ceiling"] = None
        st.provenance["subset_models"] = info
        st.ready = True
        return st

    # -- subset models ----------------------------------------------------------------------------------------------
    def _seed_state(self, st: CounterfactualState, r: int) -> CounterfactualState:
        """``st`` with the recipe of training seed ``r`` (the training seed, and the init seed when the adapter
        takes one)."""
        if r == 0:
            return st
        s = copy.copy(st)
        s.train_seed = seed_for(st.train_seed, r)
        key = init_seed_key(self.config["model"])
        if key:
            s.model_config = {**st.model_config, key: s.train_seed}
        return s

    def _subset_spec(self, subset: Sequence[int], r: int, st: CounterfactualState):
        """``(dataset, state, exclude)`` that ``_train`` takes for training seed ``r`` on the training indices
        ``subset``: the subset itself (``independent``), or the full set with the other items excluded
        (``coupled``)."""
        keep = {int(i) for i in subset}
        s = self._seed_state(st, r)
        if self.config["retrain"] == "coupled":
            return st.train, s, [st.train.ids[i] for i in range(len(st.train)) if i not in keep]
        return st.train.subset([st.train.ids[i] for i in sorted(keep)]), s, None

    def subset_model(self, subset: Sequence[int], r: int, env, st: CounterfactualState):
        """``(make, key)``: a function that loads or trains the model of training seed ``r`` on the training indices
        ``subset`` (in the configured retraining mode), and that model's identity (a function of the subset, the
        recipe, the seed and the mode only — never of a method or a query)."""
        dataset, s, exclude = self._subset_spec(subset, r, st)
        return (lambda: self._train(dataset, env, s, exclude)), self.retrain_key(dataset, s, exclude)

    def _is_trained(self, subset: Sequence[int], r: int, env, st: CounterfactualState) -> bool:
        """Whether the model cache already holds that subset model."""
        from genattr.harness.models import is_trained

        dataset, s, exclude = self._subset_spec(subset, r, st)
        return is_trained(env.cache, dataset, s.model_config, self.train_plan(s, exclude), s.train_seed,
                          self.config["model"])

    def subset_outputs(self, env, st: CounterfactualState, queries: Sequence[Query], subsets: Sequence,
                       seeds: int):
        """``(outputs, info)``: ``outputs[r, j, q]`` = f(query q; model of seed r on subset j), the mean over the
        strided timesteps of the query loss with shared noise; each model's outputs are cached per (model, queries,
        stride, seed). Missing models are trained (cached). ``info``: counts and seconds of this call."""
        import os
        import socket
        import time

        import numpy as np

        from genattr.harness import progress
        from genattr.harness.seeding import numpy_rng
        from genattr.harness.counterfactual import query_loss

        stride = int(self.config["loss_stride"])
        digests = [query_digest(q) for q in queries]
        jobs = [(r, j) for r in range(int(seeds)) for j in range(len(subsets))]
        # several processes sharing a cache (cluster workers) each walk the models in their own order
        order = numpy_rng(socket.gethostname(), os.getpid(), "lds/order").permutation(len(jobs))
        out = np.zeros((int(seeds), len(subsets), len(queries)), dtype=np.float64)
        info = {"models": len(jobs), "trained": 0, "loaded": 0, "outputs_cached": 0, "train_s": 0.0,
                "outputs_s": 0.0, "vocab_changed": 0}
        base_vocab = getattr(st.base, "vocab", None)
        ns = "lds/outputs"
        with progress.stage(f"setup {self.NAME}: {len(jobs)} subset models"):
            for k in progress.bar(list(order), desc="lds subset models", unit="model"):
                r, j = jobs[int(k)]
                make, key = self.subset_model(subsets[j], r, env, st)
                okey = env.cache.key(NAME, VERSION, "outputs", key, digests, stride, int(env.seed))
                got = env.cache.get_arrays(ns, okey)
                if got is None:
                    cached = self._is_trained(subsets[j], r, env, st)
                    t0 = time.perf_counter()
                    model = make()
                    t1 = time.perf_counter()
                    info["loaded" if cached else "trained"] += 1
                    if not cached:
                        info["train_s"] += t1 - t0
                    losses = np.stack([query_loss(model, q, seed=int(env.seed), stride=stride) for q in queries])
                    vocab = getattr(model, "vocab", None)
                    changed = -1 if vocab is None or base_vocab is None else int(list(vocab) != list(base_vocab))
                    got = {"losses": losses, "vocab_changed": np.asarray(changed)}
                    env.cache.put_arrays(ns, okey, got, {"model": key, "queries": len(queries)})
                    info["outputs_s"] += time.perf_counter() - t1
                    del model
                else:
                    info["outputs_cached"] += 1
                out[r, j] = np.asarray(got["losses"], dtype=np.float64).mean(axis=1)
                info["vocab_changed"] += int(np.asarray(got["vocab_changed"]) == 1)
        info["train_s"] = round(info["train_s"], 3)
        info["outputs_s"] = round(info["outputs_s"], 3)
        return out, info

    # -- cells ------------------------------------------------------------------------------------------------------
    def _query_ids(self) -> list[tuple[str, str]]:
        """``[(query id, source)]`` in the order of the state's queries (known without setup)."""
        cfg = self.config
        return ([(f"q{j:03d}", "generated") for j in range(int(cfg["num_queries"]))]
                + [(f"r{j:03d}", "real") for j in range(int(cfg["num_real_queries"]))])

    def cells(self, methods: Sequence[str]) -> list[Cell]:
        """``method × query``; the method is the batch key (its queries are scored in one ``attribute`` call), or
        the cell with ``group = "query"``."""
        out = []
        for m in methods:
            for qid, source in self._query_ids():
                cid = f"{m}/{qid}"
                batch = m if self.config["group"] == "method" else cid
                out.append(Cell(id=cid, method=m, params={"query": qid, "source": source}, group={"source": source},
                                batch=batch))
        return out

    # -- running ----------------------------------------------------------------------------------------------------
    def _query_index(self, st, cell: Cell) -> int:
        qid = cell.params["query"]
        for k, q in enumerate(st.queries):
            if q.id == qid:
                return k
        raise UserError(f"lds: no query {qid!r} in this configuration")

    def predictions(self, scores, st: LDSState | None = None):
        """``g(S_j) = Σ_{i∈S_j} τ_i`` for every subset of the state."""
        import numpy as np

        st = st or self._state
        return st.membership.astype(np.float64) @ np.asarray(scores, dtype=np.float64).reshape(-1)

    def run_cell(self, cell: Cell, method, env, scores=None) -> dict:
        import numpy as np

        st = self._ready(env)
        k = self._query_index(st, cell)
        query = st.queries[k]
        if scores is None:
            scores = self.method_scores(method, [query], env, st, self.preset_hint)[0]
        f = st.outputs[: int(self.config["train_seeds"]), :, k]  # (R, M)
        result: dict[str, Any] = {c: float(m(scores, st.membership, f)) for c, m, _ in self._metrics_resolved}
        extra: dict[str, Any] = {
            "query_id": query.id, "prompt": query.prompt, "source": query.meta.get("source", "generated"),
            "seed": query.meta.get("seed"), "source_id": query.meta.get("source_id"), "N": len(st.train),
            "M": len(st.subsets), "beta": float(self.config["beta"]), "retrain": self.config["retrain"],
            "train_seeds": int(self.config["train_seeds"]),
            "predictions": [float(v) for v in self.predictions(scores, st)],
            "outputs": [float(v) for v in f.mean(axis=0)],
            "ceiling": None if st.ceiling is None else float(st.ceiling[k]),
        }
        from genattr.harness import media

        pics = media.attribution_media(env.out, query.image, st.train, np.asarray(scores))
        if pics is not None:
            extra["media"] = pics
        result["extra"] = extra
        return result

    def run_cells(self, cells: Sequence[Cell], method, env):
        """A group: every cell's query scored in one ``attribute`` call (cached per query), then each cell's LDS."""
        st = self._ready(env)
        idx = sorted({self._query_index(st, c) for c in cells})
        got = self.method_scores(method, [st.queries[k] for k in idx], env, st, self.preset_hint)
        scores = dict(zip(idx, got))
        for c in cells:
            yield c, self.run_cell(c, method, env, scores[self._query_index(st, c)])

    # -- summary ----------------------------------------------------------------------------------------------------
    @staticmethod
    def summarize(rows: Sequence[dict], numeric: bool = False):
        """The LDS table from result rows: one row per method, columns ``(metric, source)``, cells ``"mean ± s.e."``
        over queries. When the rows carry the ceiling, two more rows: :data:`CEILING_ROW` (the seed-vs-seed
        correlation ρ, over queries) and :data:`BOUND_ROW` (:func:`attenuation_bound` of its mean, the highest LDS
        a prediction can reach). ``numeric=True`` gives the long form ``method, source, metric, mean, se, n``."""
        import pandas as pd

        recs = []
        names: list[str] = []
        ceiling: dict[tuple[str, str], float] = {}
        seeds: dict[str, int] = {}
        for r in rows:
            if r.get("benchmark", NAME) != NAME:
                continue
            metrics = r.get("metrics") or {}
            names += [m for m in metrics if m not in names]
            group = r.get("group") or r.get("params") or {}
            source = group.get("source", "generated")
            extra = r.get("extra") or {}
            for m, v in metrics.items():
                if v is not None:
                    recs.append({"method": r["method"], "source": source, "metric": m, "value": float(v)})
            if extra.get("ceiling") is not None:
                qid = (r.get("params") or {}).get("query", extra.get("query_id"))
                ceiling[(source, str(qid))] = float(extra["ceiling"])
                seeds[source] = int(extra.get("train_seeds") or 1)
        first = (names or DEFAULT_METRICS)[0]
        for (source, _), v in ceiling.items():
            recs.append({"method": CEILING_ROW, "source": source, "metric": first, "value": v})
        cols = ["method", "source", "metric", "mean", "se", "n"]
        if not recs:
            return pd.DataFrame(columns=cols)
        df = pd.DataFrame(recs)
        long = df.groupby(["method", "source", "metric"], sort=True)["value"].agg(["mean", "count", "std"])
        long = long.reset_index()
        long["se"] = long["std"].fillna(0.0) / long["count"].pow(0.5)
        long = long.rename(columns={"count": "n"})[cols]
        bounds = []
        for _, row in long[long["method"] == CEILING_ROW].iterrows():
            b = attenuation_bound(row["mean"], seeds.get(row["source"], 1))
            # delta method for the one-seed case: d sqrt(ρ) = dρ / (2 sqrt(ρ))
            se = row["se"] / (2 * b) if b > 0 and seeds.get(row["source"], 1) == 1 else float("nan")
            bounds.append({"method": BOUND_ROW, "source": row["source"], "metric": row["metric"], "mean": b,
                           "se": se, "n": row["n"]})
        if bounds:
            long = pd.concat([long, pd.DataFrame(bounds)], ignore_index=True)[cols]
        if numeric:
            return long
        long["cell"] = [f"{m:.3f}" + ("" if s != s else f" ± {s:.3f}") for m, s in zip(long["mean"], long["se"])]
        table = long.pivot(index="method", columns=["metric", "source"], values="cell")
        order = [(m, s) for m in names or DEFAULT_METRICS for s in ("generated", "real") if (m, s) in table.columns]
        return table[order]
