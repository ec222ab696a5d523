"""The :class:`Unlearning` method: configuration per (scale, benchmark), cached query-independent state (Fisher, θ0
losses, prescreen gradients), and ``attribute`` — exhaustive, or prescreen + exact head."""

from __future__ import annotations

from typing import Any, Sequence

from genattr.harness.api import AttributionContext, Query
from genattr.harness.errors import UserError

from .._presets import method_seed
from .config import OPTIONS, SCALE_PRESET, preset_for, resolve_config, step_options
from .fisher import fisher_diagonal
from .losses import TrainingLosses, scoring_timesteps
from .prescreen import coarse_subset, combine_flips, heads, linear_scores, linear_spec, merge_head, rows_per_item
from .update import unlearn

#: Counters of :attr:`Unlearning.stats` (UNet evaluations by where they were spent).
STAT_KEYS = ("fisher_evaluations", "theta0_evaluations", "gradient_evaluations", "update_evaluations",
             "prescreen_evaluations", "scoring_evaluations", "queries")


class Unlearning:
    """Attribution by unlearning (the paper's method). See the package docstring for the formulas and options.

    ``Unlearning(preset=None, **options)``. Without a preset the scale and the benchmark's preset hint pick one
    (:func:`preset_for`: ``tiny`` → ``tiny``, ``small`` → ``small``, ``paper`` → ``coco``; hint ``customized`` →
    ``customized-*``) in :meth:`resolve_config`, which the runner calls before the first cell (and :meth:`prepare`
    calls with the context's scale and hint); ``config`` always holds the fully resolved options.

    :attr:`stats` counts UNet evaluations per purpose (:data:`STAT_KEYS`; the scoring ones from the scoring path's
    own counter), accumulated over calls until :meth:`reset_stats`.
    """

    name = "unlearning"
    # 2: the Customized Model benchmark selects its own presets; 3: they use the base model's Fisher. (Changes of a
    # preset's values show in the resolved configuration, which results and caches record, and need no new version.)
    version = "3"
    needs_model = True

    def __init__(self, preset: str | None = None, **options: Any):
        from genattr.presets import check_names

        check_names("unlearning", options, [o for o in OPTIONS if o != "preset"])
        self._preset = preset
        self._options = dict(options)
        # validated now (types and ranges), against the given preset or the tiny one; the runner then resolves the
        # preset for its benchmark and scale with resolve_config before the first cell
        self.config = resolve_config(preset or SCALE_PRESET["tiny"], options)
        self._state: dict = {}
        self._theta0: dict = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {k: 0 for k in STAT_KEYS}

    # -- configuration --------------------------------------------------------------------------------------------
    def resolve_config(self, scale: str, preset_hint: str | None = None, model: str | None = None) -> dict:
        """The full configuration for ``scale`` and a benchmark's ``preset_hint`` (``"customized"`` selects the
        Customized Model presets): the explicit ``preset`` when one was given, else :func:`preset_for`, with the
        values calibrated for the benchmark's ``model`` on that preset (:data:`~.config.MODEL_VALUES`; not for an
        explicit preset); explicit options override both. Stored in ``self.config`` and returned."""
        preset = self._preset or preset_for(scale, preset_hint)
        self.config = resolve_config(preset, self._options, model=None if self._preset else model)
        return self.config

    def _resolve_from(self, ctx: AttributionContext) -> dict:
        extra = ctx.extra if hasattr(ctx.extra, "get") else {}
        return self.resolve_config(ctx.scale, extra.get("preset_hint"), extra.get("preset_model"))

    def _seed(self, ctx: AttributionContext) -> int:
        return method_seed(ctx, self.config["seed"])

    def _fisher_model(self, ctx: AttributionContext):
        """The model the Fisher is estimated on: the context's, or with ``fisher_model="base"`` the base model the
        benchmark offers as ``ctx.extra["base_model"]`` (falling back to the context's model, with a warning, when
        none is offered)."""
        if self.config["fisher_model"] == "base":
            extra = ctx.extra if isinstance(ctx.extra, dict) else {}
            base = extra.get("base_model")
            if base is not None:
                return base
            from genattr.harness.progress import warn

            warn("genattr.unlearning", "unlearning: fisher_model 'base' but the benchmark offers no base model "
                                       "(ctx.extra['base_model']); the Fisher is estimated on the context's model")
        return ctx.model

    # -- query-independent state ----------------------------------------------------------------------------------
    def _loss_key(self, ctx: AttributionContext, timesteps: Sequence[int]) -> tuple:
        cfg = self.config
        base = (self.name, self.version, ctx.model.fingerprint, ctx.train_set.fingerprint)
        # the key holds the scoring timesteps themselves (not only their count), the captions scored and the flips:
        # every input that changes the θ0 losses
        return base + ("theta0-losses", tuple(int(t) for t in timesteps), cfg["captions"], cfg["flip"] != "none",
                       self._seed(ctx))

    def _keys(self, ctx: AttributionContext):
        cfg = self.config
        fisher_key = None
        if cfg["variant"] == "newton":
            fm = self._fisher_model(ctx)
            fisher_key = (self.name, self.version, fm.fingerprint, ctx.train_set.fingerprint, "fisher",
                          cfg["selection"], cfg["fisher_samples"], cfg["fisher_flips"], self._seed(ctx))
        return fisher_key, self._loss_key(ctx, self._timesteps(ctx))

    def _timesteps(self, ctx: AttributionContext) -> list[int]:
        return scoring_timesteps(int(self.config["timesteps"]), int(ctx.model.num_train_timesteps))

    def _losses_at(self, ctx: AttributionContext, timesteps: Sequence[int], desc: str = "θ0 losses"):
        """The (cached) θ0 losses ``N × flips`` at the given scoring timesteps."""
        import numpy as np

        from genattr.harness.cache import Cache

        key = self._loss_key(ctx, timesteps)
        if key not in self._theta0:
            def compute():
                scorer = self._scorer(ctx, timesteps)
                losses = scorer([None], desc=desc)[0]
                self.stats["theta0_evaluations"] += scorer.evaluations
                return {"losses": losses, "ids": np.array(list(ctx.train_set.ids), dtype=str)}

            got = ctx.cache.arrays("unlearning/theta0-losses", Cache.key(*key), compute, meta={"key": list(key)})
            # keep only the current (model, dataset)'s losses: full and coarse timesteps
            self._theta0 = {k: v for k, v in self._theta0.items() if k[:4] == key[:4]}
            self._theta0[key] = got["losses"]
        return self._theta0[key]

    def prepare(self, ctx: AttributionContext) -> None:
        """Compute (or load from ``ctx.cache``) the Fisher diagonal, the θ0 training losses and what the prescreen
        needs (its θ0 losses or stored gradients). Memoised per (model fingerprint, dataset fingerprint, options):
        calling it again with the same context is cheap."""
        if ctx.model is None:
            raise UserError("unlearning needs a model (the context has none)")
        cfg = self._resolve_from(ctx)
        fisher_key, loss_key = self._keys(ctx)
        if (fisher_key, loss_key) not in self._state:
            from genattr.harness.cache import Cache

            seed = self._seed(ctx)
            fisher = None
            if fisher_key is not None:
                fm = self._fisher_model(ctx)

                def compute():
                    self.stats["fisher_evaluations"] += int(cfg["fisher_samples"])
                    return fisher_diagonal(fm, ctx.train_set, cfg["selection"], cfg["fisher_samples"], seed,
                                           batch=cfg["fisher_batch"], flips=cfg["fisher_flips"],
                                           method=cfg["per_sample"], progress=ctx.progress)

                fisher = ctx.cache.tensors("unlearning/fisher", Cache.key(*fisher_key), compute,
                                           meta={"key": list(fisher_key)})
            losses = self._losses_at(ctx, self._timesteps(ctx))
            self._state = {(fisher_key, loss_key): (fisher, losses)}  # keep only the latest context's state
        if cfg["prescreen"] == "coarse":
            self._losses_at(ctx, self._coarse_timesteps(ctx), desc="θ0 losses (coarse)")
        elif cfg["prescreen"] == "linear":
            self._stored_gradients(ctx)

    def _scorer(self, ctx: AttributionContext, timesteps=None) -> TrainingLosses:
        cfg = self.config
        return TrainingLosses(ctx.model, ctx.train_set, cfg["timesteps"] if timesteps is None else list(timesteps),
                              cfg["captions"], cfg["flip"] != "none", self._seed(ctx), batch_size=cfg["batch_size"],
                              progress=ctx.progress)

    def fisher(self, ctx: AttributionContext) -> dict | None:
        """The (cached) Fisher diagonal for ``ctx`` (None for the ``sgd`` variant)."""
        self.prepare(ctx)
        return self._state[self._keys(ctx)][0]

    def theta0_losses(self, ctx: AttributionContext):
        """The (cached) θ0 losses, ``N × flips`` float64."""
        self.prepare(ctx)
        return self._state[self._keys(ctx)][1]

    # -- prescreens -----------------------------------------------------------------------------------------------
    def _coarse_timesteps(self, ctx: AttributionContext) -> list[int]:
        return coarse_subset(self._timesteps(ctx), self.config["coarse_timesteps"])

    def _linear_spec(self, ctx: AttributionContext, second: bool = False):
        return linear_spec(self.config, self._timesteps(ctx), self._seed(ctx), second=second)

    def _stored_gradients(self, ctx: AttributionContext, second: bool = False):
        """The linear prescreen's stored per-item vectors (``second``: the Hutchinson probes); also fetches the
        probes with ``prescreen_order=2`` so that ``prepare`` computes both."""
        from genattr.harness.gradstore import store_for

        store = store_for(ctx.cache)
        before = store.evaluations
        got = store.get(ctx.model, ctx.train_set, self._linear_spec(ctx, second), device=ctx.device,
                        progress=ctx.progress, desc="prescreen probes" if second else "prescreen gradients")
        self.stats["gradient_evaluations"] += store.evaluations - before
        if not second and int(self.config["prescreen_order"]) == 2:
            self._stored_gradients(ctx, second=True)
        return got

    def prescreen_scores(self, ctx: AttributionContext, thetas: Sequence[dict], idx):
        """``Q × len(idx)`` prescreen scores of the configured ``prescreen`` (``linear`` or ``coarse``)."""
        import numpy as np

        flip = self.config["flip"]
        if self.config["prescreen"] == "linear":
            from genattr.harness.gradstore import store_for

            store = store_for(ctx.cache)
            rows = None if len(idx) == len(ctx.train_set) and (np.diff(idx) == 1).all() else [int(i) for i in idx]
            second = None
            if int(self.config["prescreen_order"]) == 2:
                counts = rows_per_item(ctx.train_set, self.config["captions"], len(self._timesteps(ctx)), rows)
                second = (self._stored_gradients(ctx, second=True), self._linear_spec(ctx, second=True), counts)
            return linear_scores(store, self._stored_gradients(ctx), ctx.model, self._linear_spec(ctx), thetas, rows,
                                 flip, device=ctx.device, second=second)
        cts = self._coarse_timesteps(ctx)
        base = self._losses_at(ctx, cts, desc="θ0 losses (coarse)")[idx]
        scorer = self._scorer(ctx, cts)
        losses = scorer(thetas, list(idx), desc="prescreen")
        self.stats["prescreen_evaluations"] += scorer.evaluations
        return np.stack([combine_flips(lq - base, flip) for lq in losses])

    # -- per query ------------------------------------------------------------------------------------------------
    def unlearned_weights(self, ctx: AttributionContext, query: Query) -> dict:
        """θ₋ẑ for one query: ``{name: tensor}`` over the selection (the model is left untouched)."""
        self.prepare(ctx)
        cfg = self.config
        n_train = cfg["n_train"] if cfg["n_train"] is not None else len(ctx.train_set)
        self.stats["update_evaluations"] += int(cfg["steps"]) * int(cfg["batch"]) * int(cfg["accumulation"])
        self.step_trace = []
        step = step_options(cfg)
        return unlearn(ctx.model, query, self.fisher(ctx), selection=cfg["selection"], steps=cfg["steps"],
                       alpha=float(cfg["alpha"]), n_train=int(n_train), batch=cfg["batch"],
                       accumulation=cfg["accumulation"], seed=self._seed(ctx), variant=cfg["variant"],
                       fisher_floor=float(cfg["fisher_floor"]), timesteps=cfg["query_timesteps"],
                       step_rule=step["step_rule"], step_norm=float(step["step_norm"]),
                       loss_target=float(step["loss_target"]), trace=self.step_trace)

    def _exact(self, ctx: AttributionContext, thetas, idx, subsets=None):
        """Exact ``τ`` (``Q × len(idx)``; NaN outside ``subsets`` when given), one walk for every query."""
        import numpy as np

        base = self.theta0_losses(ctx)[idx]
        scorer = self._scorer(ctx)
        losses = scorer(thetas, list(idx), desc="scoring", subsets=subsets)
        self.stats["scoring_evaluations"] += scorer.evaluations
        return np.stack([combine_flips(lq - base, self.config["flip"]) for lq in losses])

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates: Sequence[int] | None = None):
        """Scores ``(len(queries), N)`` (or ``len(candidates)`` columns), higher = more influential. Every query is
        unlearned first; then one walk over the training items evaluates each prepared batch under every query's
        unlearned weights — over the whole pool (``prescreen="none"``), or over each query's prescreen head of
        ``refine`` items, the rest keeping their prescreen order below the head."""
        import numpy as np

        from genattr.harness.progress import bar

        self.prepare(ctx)
        n = len(ctx.train_set)
        if candidates is None:
            idx = np.arange(n)
        else:
            idx = np.asarray(list(candidates), dtype=np.int64)
            if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
                raise UserError(f"unlearning: candidates must be training indices in 0..{n - 1}")
        queries = list(queries)
        if not queries:
            return np.zeros((0, len(idx)))
        thetas = [self.unlearned_weights(ctx, q)
                  for q in bar(queries, desc="unlearning", unit="query", enabled=ctx.progress)]
        self.stats["queries"] += len(queries)
        m = int(self.config["refine"])
        if self.config["prescreen"] == "none" or m >= len(idx):
            return self._exact(ctx, thetas, idx)
        pre = self.prescreen_scores(ctx, thetas, idx)
        hd = heads(pre, m)
        exact = self._exact(ctx, thetas, idx, subsets=hd)
        return np.stack([merge_head(pre[q], hd[q], exact[q, hd[q]]) for q in range(len(queries))])
