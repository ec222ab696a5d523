"""The teacher-agreement benchmark: how close a (fast) method's ranking comes to the slow, faithful one — mAP(k)
against the teacher's top-k on held-out queries (FastGDA, Wang et al. NeurIPS 2025, §4: k = 500 / 1000 / 4000 of
118,287 COCO images; their ``eval.py``).

Protocol
--------
1. θ0 is trained on the N training items and queries are synthesized by θ0 from **held-out** captions exactly as in
   leave-K-out and LDS (:mod:`genattr.benchmarks._counterfactual`: the same cache entries, so the three benchmarks
   share θ0, the queries and the methods' cached scores at the same scale).
2. **Teacher.** The registered ``teacher`` method (default ``unlearning``; ``teacher_options`` on top, resolved with
   ``resolve_config(scale, None)`` — θ0 is a model trained from scratch) ranks the whole training set for every query
   through the one scoring path; the teacher-ranking store (:mod:`genattr.harness.teacher`) keeps the top
   ``max(k)`` items per query in the cache, one entry per query (resumable; keyed by θ0, the training set, the
   teacher's resolved configuration and the query recipe). At ``paper`` scale the official release's test rank file
   can stand in (``teacher_file``, read without unpickling, with ``queries_dir`` holding its query images
   ``{i}.png`` and ``prompts.json``).
3. **Cells** are ``method × query`` (``id = "<method>/q<jjj>"``, ``params = {"query": j}``, no group). A cell scores
   the query with the method (cached per method, configuration, θ0 and query; a method's queries are scored in one
   ``attribute`` call) and reports, for each k, ``map@<k>`` = the average precision of the teacher's top k in the
   method's ranking of the whole pool (the registered metric ``teacher-map``,
   the built-in agreement metric). The leaderboard shows mean ± s.e. over queries; a method identical to
   the teacher scores 1, random scores about k / N.

Configuration keys (``get_benchmark("teacher-agreement", **config)``; unspecified keys from the scale preset):
``scale``, ``dataset``, ``dataset_config``, ``n``, ``model``, ``recipe``, ``model_config``, ``train_config``,
``train_seed``, ``num_queries``, ``query_steps``, ``guidance_scale`` (as leave-K-out), ``k`` (fractions of N in
(0, 1) or counts ≥ 1; a fraction becomes ``max(1, round(f·N))``), ``teacher``, ``teacher_options``, ``teacher_file``
and ``queries_dir``, ``group`` (``method``: a method's cells are one task scored in one call; ``query``: one task
per cell).

Sizes: ``tiny`` N = 48 digits, 4 queries, k = 5 / 10 / 25 %; ``small`` θ0 = leave-K-out small's (300 digits at 8 px,
400 steps), 50 held-out queries (LDS small's), k = 1 / 3.4 / 10 % (3, 10, 30 items: the paper's 3.4 % is its largest
k; 0.42 % of 300 would be a single item); ``paper`` the MSCOCO model of leave-K-out, 110 queries, k = 500 / 1000 / 4000.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from genattr.harness.api import Cell
from genattr.harness.errors import UserError

from ._counterfactual import Counterfactual, apply_overrides, preset_config, theta0

NAME = "teacher-agreement"
VERSION = "1"

SCALES: dict[str, dict] = {
    "tiny": theta0("tiny", num_queries=4, k=[0.05, 0.1, 0.25]),
    "small": theta0("small", num_queries=50, k=[0.01, 0.034, 0.1]),
    "paper": theta0("paper", num_queries=110, k=[500, 1000, 4000]),
}

COMMON = {"train_seed": None, "guidance_scale": None, "teacher": "unlearning", "teacher_options": {},
          "teacher_file": None, "queries_dir": None, "group": "method"}

GROUPS = ("method", "query")


def k_counts(k_values: Sequence, n: int) -> list[int]:
    """Counts for ``k`` (fractions of ``n`` in (0, 1) → ``max(1, round(f·n))``; counts as they are), deduplicated,
    each below ``n``."""
    out: list[int] = []
    for v in k_values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise UserError(f"{NAME}: k must be a positive count or a fraction in (0, 1), got {v!r}")
        c = max(1, int(round(v * n))) if (isinstance(v, float) and v < 1) else int(v)
        if c >= n:
            raise UserError(f"{NAME}: k={v!r} is {c} of N={n} items; k must be below N")
        if c not in out:
            out.append(c)
    return out


class TeacherAgreementBenchmark(Counterfactual):
    """mAP(k) against a teacher's top-k on held-out queries (see the module docstring)."""

    name = NAME
    version = VERSION
    NAME, VERSION = NAME, VERSION
    preset_hint = None

    def __init__(self, scale: str = "tiny", **overrides: Any):
        cfg = apply_overrides(preset_config(NAME, scale, overrides, SCALES, COMMON), overrides, SCALES[scale]["model"])
        if isinstance(cfg["k"], (int, float)) and not isinstance(cfg["k"], bool):
            cfg["k"] = [cfg["k"]]
        _validate(cfg)
        cfg["retrain"] = None  # the shared counterfactual set-up records it; nothing is retrained here
        cfg["scale"] = scale
        self.config = cfg
        self.scale = scale
        self._state = None
        self._state_key = None
        self._teacher = None
        self._counts = k_counts(cfg["k"], self._n_without_setup()) if self._n_known() else None
        self._columns = self._metric_columns()
        self.metrics = {c: True for c in self._columns}
        self.metric_info = {c: {"metric": "teacher-map", "display": f"mAP({c.split('@', 1)[1]})",
                                "higher_is_better": True, "unit": None} for c in self._columns}

    # -- sizes ------------------------------------------------------------------------------------------------------
    def _n_known(self) -> bool:
        return self.config["n"] is not None or bool(next((self._recipe_parts()[2].get(k) for k in ("limit", "n")
                                                           if self._recipe_parts()[2].get(k)), None))

    def _n_without_setup(self) -> int:
        if self.config["n"] is not None:
            return int(self.config["n"])
        rec = self._recipe_parts()[2]
        return int(next(rec[k] for k in ("limit", "n") if rec.get(k)))

    def _metric_columns(self) -> list[str]:
        if self._counts is not None:
            return [f"map@{c}" for c in self._counts]
        return [f"map@{v}" for v in self.config["k"]]  # N unknown before setup (paper): named by the option

    # -- setup ------------------------------------------------------------------------------------------------------
    def setup(self, env) -> dict:
        return self._setup(env).provenance

    def _setup(self, env):
        key = (str(env.cache.root), int(env.seed), env.device)
        if self._state is not None and self._state_key == key:
            return self._state
        if self.config["teacher_file"] is not None:
            st = self._setup_from_files(env)
        else:
            st = self._setup_state(env)
        counts = k_counts(self.config["k"], len(st.train))
        if self._counts is not None and counts != self._counts:
            raise RuntimeError(f"{NAME}: k resolved to {counts} after setup, {self._counts} before")
        self._counts = counts
        st.provenance["k"] = [{"k": c, "k_frac": c / len(st.train)} for c in counts]
        st.provenance["teacher"] = {"method": self.config["teacher"], "options": self.config["teacher_options"],
                                    "file": self.config["teacher_file"]}
        self._state, self._state_key, self._teacher = st, key, None
        return st

    def _setup_from_files(self, env):
        """θ0 and the training set as usual; the queries from ``queries_dir`` (the release's images and prompts)."""
        from genattr.harness.teacher import load_query_dir

        from ._counterfactual import CounterfactualState

        cfg = self.config
        st = CounterfactualState()
        st.train_seed = int(cfg["train_seed"] if cfg["train_seed"] is not None else env.seed)
        st.train, _ = self._datasets(int(env.seed))
        st.model_config, st.train_config = self._recipe(st.train, env)
        st.base = self._train(st.train, env, st)
        st.queries = load_query_dir(cfg["queries_dir"], st.train)[: int(cfg["num_queries"])]
        st.provenance = {"datasets": {f"{cfg['dataset']}-train": st.train.fingerprint},
                         "models": {"base": st.base.fingerprint}, "n": len(st.train),
                         "queries": [{"id": q.id, "prompt": q.prompt} for q in st.queries]}
        return st

    def teacher_rankings(self, env):
        """The teacher's top ``max(k)`` per query (:class:`~genattr.harness.teacher.TeacherRankings`)."""
        from genattr.harness.teacher import TeacherStore, rankings_from_file

        st = self._setup(env)
        if self._teacher is not None:
            return self._teacher
        cfg = self.config
        keep = max(self._counts)
        if cfg["teacher_file"] is not None:
            ranks = rankings_from_file(cfg["teacher_file"], len(st.train), keep=None)
            ranks.indices, ranks.scores = ranks.indices[: len(st.queries)], ranks.scores[: len(st.queries)]
            ranks.query_ids = [q.id for q in st.queries]
        else:
            store = TeacherStore(env.cache, st.base, st.train, cfg["teacher"], cfg["teacher_options"],
                                 scale=self.scale, preset_hint=None, keep=keep, seed=int(env.seed),
                                 device=str(env.device or "cpu"), progress=env.progress,
                                 preset_model=self.preset_model)
            recipe = {"kind": "held-out captions", "benchmark": "counterfactual", "dataset": cfg["dataset"],
                      "steps": int(cfg["query_steps"]), "guidance": cfg["guidance_scale"]}
            ranks = store.rankings(st.queries, recipe)
        self._teacher = ranks
        return ranks

    def artefacts(self, env) -> None:
        """Read (or compute) the teacher's rankings: with the set-up, the artefacts a pack of this benchmark holds."""
        self.teacher_rankings(env)

    # -- cells ------------------------------------------------------------------------------------------------------
    def cells(self, methods: Sequence[str]) -> list[Cell]:
        out = []
        for m in methods:
            for j in range(int(self.config["num_queries"])):
                batch = m if self.config["group"] == "method" else f"{m}/q{j:03d}"
                out.append(Cell(id=f"{m}/q{j:03d}", method=m, params={"query": j}, group={}, batch=batch))
        return out

    def _row(self, j: int, scores, env) -> dict:
        import genattr

        st = self._setup(env)
        ranks = self.teacher_rankings(env)
        q = st.queries[j]
        row: dict[str, Any] = {}
        for c, col in zip(self._counts, self._columns):
            row[col] = float(genattr.get_metric("teacher-map", k=c)(scores, ranks.top(j)))
        row["extra"] = {"query_id": q.id, "prompt": q.prompt, "seed": (q.meta or {}).get("seed"), "N": len(st.train),
                        "k": list(self._counts), "teacher": ranks.fingerprint[:16],
                        "teacher_top10": [int(i) for i in ranks.top(j, 10)]}
        return row

    def run_cell(self, cell: Cell, method, env, scores=None) -> dict:
        st = self._setup(env)
        j = int(cell.params["query"])
        if j >= len(st.queries):
            raise UserError(f"{NAME}: query {j} asked, {len(st.queries)} available")
        if scores is None:
            scores = self.method_scores(method, [st.queries[j]], env, st, self.preset_hint)[0]
        return self._row(j, scores, env)

    def run_cells(self, cells: Sequence[Cell], method, env):
        """A group: every query scored in one ``attribute`` call (cached per query), then each cell's mAP(k)."""
        st = self._setup(env)
        self.teacher_rankings(env)
        qidx = sorted({int(c.params["query"]) for c in cells})
        got = self.method_scores(method, [st.queries[j] for j in qidx], env, st, self.preset_hint)
        scores = dict(zip(qidx, got))
        for c in cells:
            yield c, self.run_cell(c, method, env, scores[int(c.params["query"])])

    # -- summary ----------------------------------------------------------------------------------------------------
    def summarize(self, rows: Sequence[dict]):
        """Method × mAP(k) table, ``"mean ± s.e."`` over queries."""
        import pandas as pd

        from genattr.harness.statistics import mean_se

        cols: list[str] = []
        for r in rows:
            if r.get("benchmark", NAME) == NAME:
                cols += [m for m in (r.get("metrics") or {}) if m not in cols]
        table: dict[str, dict[str, str]] = {}
        for m in sorted({r["method"] for r in rows if r.get("benchmark", NAME) == NAME}):
            table[m] = {}
            for c in cols:
                vals = [r["metrics"][c] for r in rows if r["method"] == m and r.get("benchmark", NAME) == NAME
                        and (r.get("metrics") or {}).get(c) is not None]
                s = mean_se(vals)
                table[m][c] = f"{s['mean']:.3f} ± {s['se']:.3f}" if s.get("n") else ""
        return pd.DataFrame.from_dict(table, orient="index", columns=cols)


def _validate(cfg: dict) -> None:
    from genattr.harness.models import check_plan

    check_plan("teacher-agreement", "train_config", cfg["train_config"])

    def positive_int(k):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{NAME}: {k} must be a positive integer, got {v!r}")

    for k in ("num_queries", "query_steps"):
        positive_int(k)
    if cfg["n"] is not None:
        positive_int("n")
    if not isinstance(cfg["k"], list) or not cfg["k"]:
        raise UserError(f"{NAME}: k must be a list of counts or fractions, got {cfg['k']!r}")
    for k in ("dataset", "model", "teacher"):
        if not isinstance(cfg[k], str) or not cfg[k]:
            raise UserError(f"{NAME}: {k} must be a registered name, got {cfg[k]!r}")
    if not isinstance(cfg["teacher_options"], dict):
        raise UserError(f"{NAME}: teacher_options must be a table of options, got {cfg['teacher_options']!r}")
    if cfg["group"] not in GROUPS:
        raise UserError(f"{NAME}: group must be one of {', '.join(GROUPS)}, got {cfg['group']!r}")
    if cfg["teacher_file"] is not None and cfg["queries_dir"] is None:
        raise UserError(f"{NAME}: teacher_file needs queries_dir (the query images {{i}}.png of that file)")
    from genattr.harness.manager import registry

    registry("datasets").get(cfg["dataset"])
    registry("models").get(cfg["model"])
    registry("methods").get(cfg["teacher"])
