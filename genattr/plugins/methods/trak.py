"""TRAK, D-TRAK and JourneyTRAK: projected-gradient kernel attribution for diffusion models.

All three score a query ẑ against every training item z_i with

    τ(ẑ, z_i) = φ(ẑ)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z_i),        Φ = [φ(z_1); …; φ(z_N)] ∈ R^{N×k},

where φ(z) = Pᵀ ∇θ f(z) is a randomly projected per-sample gradient over a parameter selection (see
``genattr.harness.gradients``: pure-torch Rademacher/Gaussian projector, not ``traker``'s). Higher = more influential. They
differ in the output function f, in the timesteps the gradient is taken at, and in the query features:

* **TRAK** (Park et al., ICML 2023; the diffusion variant of Georgiev et al. 2023): f = the DDPM loss
  ``‖ε − ε_θ(x_t, t, c)‖²`` (mean over latent elements); φ(z_i) = the mean over ``num_timesteps`` random timesteps
  (drawn without replacement) of the projected gradients. The query feature is computed the same way from the query
  image and its prompt (and mask, when given). Draws (``draws``): ``"shared"`` (default) — the same random
  timesteps and noise for every item and query (common random numbers, seeded by the run seed; batch-independent);
  ``"per-item"`` — seeded by each item's id. Captions (``captions``): draw j uses caption j mod n (``"cycle"``,
  default), a seeded random one or the first. Ensembles: with
  several model checkpoints the per-model scores are averaged (TRAK's ensemble, without its per-model Q term,
  which is 1 for a loss output).
* **D-TRAK** (Zheng et al., ICLR 2024): f = ``‖ε_θ(x_t, t, c)‖²/d`` (the adapter's ``target="eps-sq-norm"``),
  gradients averaged over K uniformly strided timesteps t = 0, T/K, 2T/K, … (K = 10 → 0, 100, …, 900), one seeded
  noise per timestep (the same for every item: ``draws="shared"``), then projected (projection is linear: projecting each draw and averaging is the same up to
  rounding). Same for queries. Single model (``ensemble`` off by default).
* **JourneyTRAK** (Georgiev et al., 2023): training features are the DDPM-loss gradients *summed* over
  ``num_timesteps`` random timesteps, projected. Query features are taken along the query's sampling trajectory:
  at each sampling step t the model's prediction x̂0⁽ᵗ⁾ of the clean latent is re-noised to t with
  ``resamplings`` fresh seeded noises and the DDPM-loss gradient there is averaged over the resamplings and
  projected, giving one feature — and so one score vector — per step. The trajectory is regenerated from the
  prompt and ``query.meta["seed"]`` (and ``query.meta["steps"]``, else ``sampling_steps``) when present — through
  the model's ``trajectory(prompt, seed, steps)`` when the adapter offers one, else by re-running the built-in
  adapters' ``generate`` protocol (seeded initial noise, ``DDPMScheduler.step``, classifier-free guidance) and
  keeping the scheduler's x̂0 at each step; without a seed it is approximated from the query image by noising it to
  each step with seeded noise. **Aggregation: the mean of
  the per-step scores** (``aggregate="mean"``; ``"max"`` is offered too). ``feature_steps`` evenly spaced steps of
  the trajectory get features (all steps at ``paper``).

Gradient re-normalisation (``normalize``, all three): ``"none"`` (default) uses the gradients as above;
``"unit"`` scales every per-draw gradient (one timestep, caption and noise) to unit L2 norm over the selected weights
*before* it is projected and reduced — on the training side through the gradient store (``normalize="unit"``: each
row is the mean — JourneyTRAK: the sum — of unit-norm draw gradients) and on the query side by wrapping the
per-sample gradient function in :class:`~genattr.harness.gradstore.UnitNormGrad` (TRAK/D-TRAK: each query draw;
JourneyTRAK: each of the ``resamplings`` draws of a trajectory step, before they are averaged into that step's
feature). This is diffusion-ReTrac's re-normalisation (Xie et al., TMLR 2024), which removes the timestep- and
item-dominated "dominating norm effect"; it is **not** part of TRAK, D-TRAK or JourneyTRAK (a deviation from those
papers when switched on). With ``"unit"`` the relative λ scales with the re-normalised Gram matrix; an absolute λ
(the ``paper`` presets) was set for the papers' unnormalised gradient scale and is then no longer calibrated.

Kernel: ``(ΦᵀΦ + λI)⁻¹`` by an eigendecomposition of the k×k Gram matrix in float64; λ is absolute
(``lambda_mode="absolute"``) or relative to the mean eigenvalue trace(ΦᵀΦ)/k (``"relative"``). With λ = 0 a
pseudo-inverse is used. With the identity projection (or any projection of dimension ≥ the parameter count, λ = 0
and a full-rank Gram matrix) the score equals the unprojected formula exactly.

Presets (``scale``): ``paper`` uses the papers' values — TRAK: full UNet, k = 4096, 10 random timesteps, λ = 0;
D-TRAK: full UNet, k = 32768, K = 10, λ = 500; JourneyTRAK: full UNet, k = 2048, 20 timesteps, 1000 sampling
steps, 20 resamplings. ``tiny``/``small`` are scaled for the built-in models (a deviation from the papers):
cross-attention K/V weights, k = 256/1024, fewer timesteps, and a relative λ (0.1 × mean eigenvalue; 0.01 for
D-TRAK), because with N ≲ k an unregularised kernel is the hat matrix (every training item scores 1 on itself, 0
elsewhere) and the papers' absolute λ depends on their gradient scale. The draw and caption defaults and D-TRAK's
0.01 were chosen by training-image self-retrieval on the tiny digits model (docs/methods/trak.md).

Caching: training features Φ per model checkpoint come from the shared gradient store
(:mod:`genattr.harness.gradstore`, namespace ``gradients``: memory-mapped ``.npy``, keyed on the model and dataset
fingerprints, the weights, the output function, the draws, the per-draw normalisation, the projection and the
run seed — so D-TRAK and TRAK share nothing, but a second run, a second λ or another method with the same settings
reuses them; with ``unprojected_store=True`` the store keeps the unprojected gradients too and projects them, so a
projection-size sweep takes the gradients once). The k×k kernel (ΦᵀΦ+λI)⁻¹ is cached on top (namespace
``methods/<name>/kernel``), keyed with λ. Φ is streamed in chunks for the Gram matrix and for scoring, so peak
memory does not grow with the pool.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from genattr.harness.errors import UserError

from ._presets import ScalePresets

#: Values of the ``normalize`` option: ``"none"`` (the papers' gradients) or ``"unit"`` (ReTrac's per-draw
#: re-normalisation; see the module docstring).
NORMALIZE_CHOICES = ("none", "unit")
TIMESTEP_SCHEMES = ("random", "strided")


class _KernelMethod(ScalePresets):
    """Shared machinery of the TRAK family. Subclasses set ``name``, ``PRESETS``, ``target``, ``reduce`` and how
    draws and query features are made."""

    name = "trak"
    version = "1"
    needs_model = True
    target = "loss"
    reduce = "mean"
    timesteps = "random"
    PRESETS: dict = {}
    COMMON = {
        "include": None,  # name substrings narrowing the selection (None: all of it)
        "projection": "rademacher",
        "lambda_mode": "relative",
        "batch_size": 32,
        "grad_mode": "vmap",
        "checkpoints": [],  # saved-model paths of an ensemble (loaded with type(ctx.model).load)
        "max_projector_bytes": 1 << 29,
        "draws": "per-item",  # or "shared": the same timesteps and noise for every item and query
        "captions": "cycle",  # caption of draw j: j mod n ("cycle"), "random" or "first"
    }
    #: "unit": ReTrac's per-draw unit-norm gradients (not in the TRAK-family papers); default "none"
    #: "unprojected_store": keep the unprojected gradients and project them, so a projection-size sweep takes the
    #: gradients once (changes rounding only; genattr.harness.gradstore)
    #: "timestep_scheme": "random" (TRAK, JourneyTRAK) or "strided" (D-TRAK's 0, T/K, 2T/K, …): the method's own
    #: scheme when not given (a scaled setting to calibrate: random draws may or may not include a small t)
    OPTIONAL = {"normalize": "none", "unprojected_store": False, "timestep_scheme": None}

    def __init__(self, scale: str | None = None, **overrides):
        self._memo: dict = {}
        self._init_presets(scale, overrides)

    # -- configuration ------------------------------------------------------------------------------------------
    def _resolve(self, scale: str) -> dict:
        cfg = super()._resolve(scale)
        if cfg["projection"] == "identity":
            cfg["proj_dim"] = None
        if cfg["include"] is not None:
            cfg["include"] = list(cfg["include"])
        cfg["checkpoints"] = [str(p) for p in cfg.get("checkpoints") or []]
        if cfg["draws"] not in ("per-item", "shared"):
            raise UserError(f"draws must be 'per-item' or 'shared', got {cfg['draws']!r}")
        if cfg["lambda_mode"] not in ("absolute", "relative"):
            raise UserError(f"lambda_mode must be 'absolute' or 'relative', got {cfg['lambda_mode']!r}")
        if self.option(cfg, "normalize") not in NORMALIZE_CHOICES:
            raise UserError(f"{self.name}: normalize must be 'none' or 'unit', got {cfg['normalize']!r}")
        if self.option(cfg, "timestep_scheme") not in (None, *TIMESTEP_SCHEMES):
            raise UserError(f"{self.name}: timestep_scheme must be 'random' or 'strided', "
                            f"got {cfg['timestep_scheme']!r}")
        return cfg

    def _scheme(self) -> str:
        """The timestep scheme of the draws: option ``timestep_scheme``, else the method's own."""
        return self.option(self.config, "timestep_scheme") or self.timesteps

    # -- models -------------------------------------------------------------------------------------------------
    def _models(self, ctx) -> list:
        cfg = self._config_for(ctx)
        if ctx.model is None:
            raise UserError(f"{self.name} needs a model (no model in the attribution context)")
        if not cfg.get("ensemble", False):
            return [ctx.model]
        extra = list(ctx.extra.get("checkpoints") or [])
        if extra:
            return extra
        if cfg["checkpoints"]:
            loader = getattr(type(ctx.model), "load", None)
            if loader is None:
                raise UserError(f"{self.name}: the model adapter cannot load checkpoints (no load classmethod)")
            key = ("ckpts", tuple(cfg["checkpoints"]))
            if key not in self._memo:
                self._memo[key] = [loader(p) for p in cfg["checkpoints"]]
            return self._memo[key]
        return [ctx.model]

    # -- features -----------------------------------------------------------------------------------------------
    def _spec(self, ctx, model=None):
        """The gradient-store spec of the training features Φ (see :mod:`genattr.harness.gradstore`)."""
        from genattr.harness.gradstore import GradientSpec

        cfg = self.config
        shared = cfg["draws"] == "shared"
        draws = {"kind": self._scheme(), "count": int(cfg["num_timesteps"]),
                 "namespace": self.name if shared else f"{self.name}/train", "shared": shared,
                 "captions": cfg["captions"]}
        return GradientSpec(
            selection=cfg["selection"], include=tuple(cfg["include"]) if cfg["include"] else None,
            output=self.target, draws=draws, flips=False, reduce=self.reduce,
            normalize=self.option(cfg, "normalize"),
            projection=cfg["projection"],
            proj_dim=None if cfg["projection"] == "identity" else int(cfg["proj_dim"]), proj_seed=self.seed_for(ctx),
            seed=self.seed_for(ctx), batch_size=int(cfg["batch_size"]), grad_mode=cfg["grad_mode"],
            max_projector_bytes=int(cfg["max_projector_bytes"]),
            via_identity=bool(self.option(cfg, "unprojected_store")),
        )

    def _tools(self, model, ctx):
        """(per-sample gradient function, Projector or None) for ``model``: the projector is the gradient store's
        own, so query features are projected with the matrix the training features were; with ``normalize="unit"``
        the gradient function is wrapped in :class:`~genattr.harness.gradstore.UnitNormGrad`, so every query draw
        is re-normalised as the stored training draws were."""
        from genattr.harness.gradients import PerSampleGrad
        from genattr.harness.gradstore import UnitNormGrad, store_for

        cfg = self.config
        key = ("tools", id(model), cfg["selection"], tuple(cfg["include"] or ()), cfg["proj_dim"], cfg["projection"],
               self.seed_for(ctx), self.target, cfg["grad_mode"], self.option(cfg, "normalize"), str(ctx.device))
        if key not in self._memo:
            store, spec = store_for(ctx.cache), self._spec(ctx, model)
            gf = PerSampleGrad(model, store.parameters(model, spec), target=self.target, mode=cfg["grad_mode"])
            if self.option(cfg, "normalize") == "unit":
                gf = UnitNormGrad(gf)
            self._memo[key] = (gf, store.projector(model, spec, ctx.device))
        return self._memo[key]

    def _draw_fn(self, ctx, model, role: str):
        from genattr.harness.gradients import random_draws, strided_draws

        n, T = int(self.config["num_timesteps"]), int(model.num_train_timesteps)
        shared = self.config["draws"] == "shared"
        caps = self.config["captions"]
        ns = self.name if shared else f"{self.name}/{role}"
        seed = self.seed_for(ctx)
        if self._scheme() == "strided":
            return lambda item: strided_draws(seed, ns, item, n, T, shared=shared, captions=caps)
        return lambda item: random_draws(seed, ns, item, n, T, shared=shared, captions=caps)

    def _query_draws(self, ctx, model):
        return self._draw_fn(ctx, model, "query")

    def train_features(self, ctx, model):
        """Φ of ``model`` over ``ctx.train_set``: a :class:`~genattr.harness.gradstore.StoredGradients`
        (``N × 1 × k``, memory-mapped) from the shared gradient store."""
        from genattr.harness.gradstore import store_for

        spec = self._spec(ctx, model)
        return store_for(ctx.cache).get(model, ctx.train_set, spec, device=ctx.device, progress=ctx.progress,
                                        desc=f"{self.name} train features")

    def _lambda_from_gram(self, gram) -> float:
        lam = float(self.config["lambda_reg"])
        if self.config["lambda_mode"] == "relative":
            lam *= float(gram.diagonal().sum()) / gram.shape[0]
        return lam

    def kernel(self, ctx, model):
        """``(ΦᵀΦ + λI)⁻¹`` (``k × k`` float64 tensor; a pseudo-inverse with λ = 0), cached: ΦᵀΦ is accumulated over
        chunks of the stored features, so memory does not grow with the pool."""
        from genattr.harness.gradients import kernel_inverse

        store = self.train_features(ctx, model)
        key = ctx.cache.key(self.name, self.version, "kernel", store.key, self.config["lambda_reg"],
                            self.config["lambda_mode"])
        mk = ("kernel", key)
        if mk in self._memo:
            return self._memo[mk]

        def compute():
            import torch

            gram = torch.zeros(store.dim, store.dim, dtype=torch.float64)
            for _, g in store.chunks():
                f = g[:, 0].double()
                gram += f.T @ f
            return {"kernel": kernel_inverse(gram, self._lambda_from_gram(gram))}

        k = ctx.cache.tensors(f"methods/{self.name}/kernel", key, compute,
                              meta={"method": self.name, "config": self.config})["kernel"].double()
        self._memo[mk] = k
        return k

    def kernel_features(self, ctx, model):
        """Φ(ΦᵀΦ + λI)⁻¹ (``N×k`` float64 tensor, for inspection: attribution streams Φ instead)."""
        import torch

        store, k = self.train_features(ctx, model), self.kernel(ctx, model)
        return torch.cat([g[:, 0].double() @ k for _, g in store.chunks()])

    def query_features(self, ctx, model, queries) -> "list":
        """One ``S×k`` tensor per query (``S`` = 1 except for JourneyTRAK's per-step features)."""
        from genattr.harness.gradients import GradItem, gradient_features

        items = [GradItem(f"query:{q.id}", q.image, (q.prompt,), q.mask) for q in queries]
        gf, proj = self._tools(model, ctx)
        feats = gradient_features(
            model, lambda r: items[r], len(items), self._query_draws(ctx, model), gf, proj, reduce=self.reduce,
            batch_size=int(self.config["batch_size"]), seed=self.seed_for(ctx), device=ctx.device, progress=False,
        )
        return [feats[i:i + 1] for i in range(len(items))]

    def _aggregate(self, per_step: np.ndarray) -> np.ndarray:
        return per_step.mean(axis=0)

    # -- protocol -----------------------------------------------------------------------------------------------
    def prepare(self, ctx) -> None:
        self._config_for(ctx)
        for model in self._models(ctx):
            self.kernel(ctx, model)

    def attribute(self, ctx, queries: Sequence, candidates: Sequence[int] | None = None) -> np.ndarray:
        """Scores ``φ(ẑ)ᵀ(ΦᵀΦ + λI)⁻¹φ(z_i)``: every query's ``φ(ẑ)ᵀ(ΦᵀΦ + λI)⁻¹`` first, then one streamed pass over
        the stored training features for all queries together."""
        import torch

        self._config_for(ctx)
        queries = list(queries)
        n = len(ctx.train_set)
        idx = None
        if candidates is not None:
            idx = np.asarray(list(candidates), dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise UserError(f"candidate indices must be in 0..{n - 1}")
        width = n if idx is None else len(idx)
        total = np.zeros((len(queries), width), dtype=np.float64)
        if not queries:
            return total
        models = self._models(ctx)
        for model in models:
            store, k = self.train_features(ctx, model), self.kernel(ctx, model)
            feats = self.query_features(ctx, model, queries)
            w = torch.cat([f.double() for f in feats]) @ k  # (Σ S) × k
            scores = store.dot(w, rows=None if idx is None else idx.tolist())[:, 0, :]  # width × Σ S
            a = 0
            for qi, f in enumerate(feats):
                total[qi] += self._aggregate(scores[:, a:a + f.shape[0]].T)
                a += f.shape[0]
        return total / len(models)


class TrakMethod(_KernelMethod):
    """TRAK for diffusion models (Park et al. 2023; Georgiev et al. 2023): DDPM-loss gradients at random timesteps,
    projected, kernel (ΦᵀΦ + λI)⁻¹, averaged over checkpoints when several are given. See the module docstring."""

    name = "trak"
    version = "1"
    target = "loss"
    reduce = "mean"
    PRESETS = {
        "tiny": {"selection": "cross-attn-kv", "proj_dim": 256, "num_timesteps": 8, "lambda_reg": 0.1,
                 "lambda_mode": "relative", "ensemble": True, "draws": "shared"},
        # strided timesteps at small: the better mean mAP than random draws (0.546 vs 0.529, four of six runs) over
        # three base models and two method seeds on the Customized Model's training concepts (docs/methods/trak.md,
        # "TRAK's timestep scheme"); random before
        "small": {"selection": "cross-attn-kv", "proj_dim": 1024, "num_timesteps": 10, "lambda_reg": 0.1,
                  "lambda_mode": "relative", "ensemble": True, "draws": "shared", "timestep_scheme": "strided"},
        "paper": {"selection": "full", "proj_dim": 4096, "num_timesteps": 10, "lambda_reg": 0.0,
                  "lambda_mode": "absolute", "ensemble": True, "draws": "shared"},
    }


class DTrakMethod(_KernelMethod):
    """D-TRAK (Zheng et al. 2024): gradients of ‖ε_θ(x_t, t, c)‖²/d averaged over K uniformly strided timesteps
    (one seeded noise each), projected; kernel (ΦᵀΦ + λI)⁻¹; λ = 500 at paper scale. See the module docstring."""

    name = "dtrak"
    version = "1"
    target = "eps-sq-norm"
    reduce = "mean"
    timesteps = "strided"
    PRESETS = {
        "tiny": {"selection": "cross-attn-kv", "proj_dim": 256, "num_timesteps": 10, "lambda_reg": 0.01,
                 "lambda_mode": "relative", "ensemble": False, "draws": "shared"},
        # λ = 1 (relative) at small: the best mean mAP over three base models on the Customized Model's training
        # concepts among 1e-3 … 100 (docs/methods/trak.md); 0.01, the tiny value, before
        "small": {"selection": "cross-attn-kv", "proj_dim": 1024, "num_timesteps": 10, "lambda_reg": 1.0,
                  "lambda_mode": "relative", "ensemble": False, "draws": "shared"},
        "paper": {"selection": "full", "proj_dim": 32768, "num_timesteps": 10, "lambda_reg": 500.0,
                  "lambda_mode": "absolute", "ensemble": False, "draws": "shared"},
    }


class JourneyTrakMethod(_KernelMethod):
    """JourneyTRAK (Georgiev et al. 2023): training features = DDPM-loss gradients summed over random timesteps,
    projected; query features per sampling step from the predicted x̂0 along the query's trajectory re-noised to
    that step; one score vector per step, aggregated by the mean over steps. See the module docstring."""

    name = "journeytrak"
    version = "1"
    target = "loss"
    reduce = "sum"
    PRESETS = {
        "tiny": {"selection": "cross-attn-kv", "proj_dim": 256, "num_timesteps": 4, "lambda_reg": 0.1,
                 "lambda_mode": "relative", "ensemble": True, "sampling_steps": 20, "feature_steps": 5,
                 "resamplings": 2, "aggregate": "mean"},
        # strided timesteps at small: the better mean mAP than per-item random draws over three base models and two
        # method seeds on the Customized Model's training concepts (docs/methods/trak.md, "JourneyTRAK's timestep
        # scheme"); random before
        "small": {"selection": "cross-attn-kv", "proj_dim": 1024, "num_timesteps": 10, "lambda_reg": 0.1,
                  "lambda_mode": "relative", "ensemble": True, "sampling_steps": 50, "feature_steps": 10,
                  "resamplings": 4, "aggregate": "mean", "timestep_scheme": "strided"},
        "paper": {"selection": "full", "proj_dim": 2048, "num_timesteps": 20, "lambda_reg": 0.0,
                  "lambda_mode": "absolute", "ensemble": True, "sampling_steps": 1000, "feature_steps": None,
                  "resamplings": 20, "aggregate": "mean"},
    }

    def _resolve(self, scale):
        cfg = super()._resolve(scale)
        if cfg["aggregate"] not in ("mean", "max"):
            raise UserError(f"journeytrak aggregate must be 'mean' or 'max', got {cfg['aggregate']!r}")
        return cfg

    def _aggregate(self, per_step):
        return per_step.max(axis=0) if self.config["aggregate"] == "max" else per_step.mean(axis=0)

    # -- the query's trajectory ---------------------------------------------------------------------------------
    def trajectory(self, ctx, model, query) -> list:
        """``[(t, x̂0⁽ᵗ⁾ latent)]`` for the selected sampling steps of ``query`` (see the module docstring)."""
        import torch

        from genattr.harness.seeding import generator

        cfg = self.config
        steps = int(query.meta.get("steps", cfg["sampling_steps"])) if query.meta else int(cfg["sampling_steps"])
        T = int(model.num_train_timesteps)
        steps = max(1, min(steps, T))
        seed = (query.meta or {}).get("seed")
        dev = ctx.device
        with torch.no_grad():
            if seed is not None and hasattr(model, "trajectory"):
                traj = [(int(t), x0) for t, x0 in model.trajectory(query.prompt, int(seed), steps)]
            elif seed is not None:
                traj = _sample_trajectory(model, query.prompt, int(seed), steps, dev)
            else:
                z0 = model.latents(query.image.unsqueeze(0).to(dev, torch.float32))[0]
                emb = model.text_embeddings([query.prompt]).to(dev)
                sched = _scheduler_copy(model)
                sched.set_timesteps(steps)
                traj = []
                for t in sched.timesteps.tolist():
                    g = generator(self.seed_for(ctx), "journeytrak/query-noise", query.id, int(t))
                    eps = torch.randn(tuple(z0.shape), generator=g).to(dev)
                    xt = _add_noise(model, z0, eps, int(t))
                    eps_hat = _eps(model, xt.unsqueeze(0), int(t), emb)[0]
                    traj.append((int(t), _x0_from_eps(model, xt, eps_hat, int(t))))
        fs = cfg["feature_steps"]
        if fs is not None and int(fs) < len(traj):
            pick = np.unique(np.linspace(0, len(traj) - 1, int(fs)).round().astype(int))
            traj = [traj[i] for i in pick]
        return traj

    def query_features(self, ctx, model, queries):
        from genattr.harness.gradients import Draw, GradItem, gradient_features

        gf, proj = self._tools(model, ctx)
        R = int(self.config["resamplings"])
        out = []
        for q in queries:
            traj = self.trajectory(ctx, model, q)
            items = [GradItem(f"query:{q.id}/t{t}", x0.detach().cpu(), (q.prompt,), q.mask, is_latent=True)
                     for t, x0 in traj]
            ts = [t for t, _ in traj]

            def draws(item, _ts=dict(zip((i.id for i in items), ts))):
                t = _ts[item.id]
                return [Draw(t, 0, f"{item.id}/r{r}") for r in range(R)]

            feats = gradient_features(
                model, lambda r: items[r], len(items), draws, gf, proj, reduce="mean",
                batch_size=int(self.config["batch_size"]), seed=self.seed_for(ctx), device=ctx.device,
            )
            out.append(feats)
        return out


# -- sampling helpers (JourneyTRAK) ------------------------------------------------------------------------------------
def _scheduler_copy(model):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(model.scheduler.config)


def _alpha_bar(model, t: int) -> float:
    return float(model.scheduler.alphas_cumprod[int(t)])


def _add_noise(model, z0, eps, t: int):
    a = _alpha_bar(model, t)
    return math.sqrt(a) * z0 + math.sqrt(1 - a) * eps


def _x0_from_eps(model, xt, eps_hat, t: int):
    a = _alpha_bar(model, t)
    return (xt - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)


def _eps(model, x, t: int, emb):
    """ε_θ(x, t, c) for a batch: the adapter's ``unet_forward`` when it has one, else ``model.unet``."""
    import torch

    ts = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    if hasattr(model, "unet_forward"):
        return model.unet_forward(x, ts, emb)
    return model.unet(x, ts, encoder_hidden_states=emb, return_dict=False)[0]


def _sample_trajectory(model, prompt: str, seed: int, steps: int, device) -> list:
    """The sampling trajectory ``[(t, x̂0⁽ᵗ⁾)]`` of ``model.generate([prompt], [seed], steps)``, recomputed with the
    built-in adapters' sampling protocol: initial noise ``randn(latent_shape)`` from ``seeding.generator(seed,
    "generate")`` (× ``init_noise_sigma``), ancestral ``DDPMScheduler.step`` with that same generator, classifier-free
    guidance with the empty prompt when ``model.guidance_scale`` ≠ 1; x̂0 is the scheduler's
    ``pred_original_sample`` (clipped as the scheduler clips it)."""
    traj, _ = _run_sampler(model, prompt, seed, steps, device)
    return traj


def _run_sampler(model, prompt: str, seed: int, steps: int, device):
    """``(trajectory, final latent)`` of the sampling protocol of :func:`_sample_trajectory`."""
    import torch
    from diffusers import DDPMScheduler

    from genattr.harness.seeding import generator

    sched = DDPMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(int(steps))
    g = generator(seed, "generate")
    if hasattr(model, "latent_shape"):
        shape = tuple(model.latent_shape())
    else:
        shape = tuple(model.latents(torch.zeros(1, model.channels, model.resolution, model.resolution,
                                                device=device)).shape[1:])
    x = torch.randn(shape, generator=g)[None].to(device) * sched.init_noise_sigma
    cond = model.text_embeddings([prompt]).to(device)
    gs = float(getattr(model, "guidance_scale", 1.0) or 1.0)
    uncond = model.text_embeddings([""]).to(device) if gs != 1.0 else None
    traj = []
    for t in sched.timesteps:
        eps = _eps(model, x, int(t), cond)
        if uncond is not None:
            e_u = _eps(model, x, int(t), uncond)
            eps = e_u + gs * (eps - e_u)
        out = sched.step(eps, t, x, generator=g)
        traj.append((int(t), out.pred_original_sample[0]))
        x = out.prev_sample
    return traj, x
