"""DataInf (Kwon, Wu, Wu, Zou — "DataInf: Efficiently Estimating Data Influence in LoRA-tuned LLMs and Diffusion
Models", ICLR 2024): a closed-form influence approximation, layer by layer.

For each layer l of the selected weights (here every tensor of the selection — cross-attention K and V projections
by default, the LoRA-like parameters of a diffusion UNet — is one layer), with g_l(z) the layer's gradient of the
training loss at z and v_l = g_l(ẑ) the query's, DataInf replaces the inverse damped Hessian by the average of
rank-one Sherman–Morrison inverses:

    I(z_k, ẑ) = −Σ_l (1/λ_l) [ ⟨v_l, g_l(z_k)⟩ − (1/N) Σ_j ⟨v_l, g_l(z_j)⟩ ⟨g_l(z_j), g_l(z_k)⟩ / (λ_l + ‖g_l(z_j)‖²) ]

with the paper's damping λ_l = 0.1 × (N d_l)⁻¹ Σ_i ‖g_l(z_i)‖² (``lambda_scale`` = 0.1, d_l the layer's number of
weights: 0.1 × the mean squared gradient entry, as in the authors' code; ``lambda_per_element=False`` drops the
1/d_l). I is the change of the query loss when z_k is up-weighted (positive = harmful), so genattr's score is
**−I** — higher = up-weighting z_k lowers the query loss = more influential (the same sign as dattri's
``IFAttributorDataInf``, whose score is the inner product with the transformed test gradient). It is computed as
score(ẑ, z_k) = Σ_l ⟨u_l, g_l(z_k)⟩/λ_l with u_l = v_l − Σ_j c_j g_l(z_j), c_j = ⟨v_l, g_l(z_j)⟩ / (N (λ_l + ‖g_l(z_j)‖²)),
so the N×N Gram matrices are never formed (O(N·P) per query). The sum over j always runs over the whole training
set, also when only ``candidates`` are scored.

Gradients: the DDPM loss per item averaged over ``num_timesteps`` random timesteps (without replacement;
``timestep_scheme="strided"``: D-TRAK's strided 0, T/K, 2T/K, … instead); the same for the query (its prompt and
mask). ``draws="shared"`` (default): the same timesteps and noise for every item and
query (common random numbers, as for TRAK); ``"per-item"``: seeded by each item's id. Captions cycle (draw j uses
caption j mod n). On the tiny digits model, training images as their own queries ranked themselves first 24/30
times with shared draws and 3/30 with per-item draws. They are
kept unprojected (DataInf is exact in the selected weights) in the shared gradient store
(:mod:`genattr.harness.gradstore`: an ``N × P`` float32 ``.npy`` in the cache, memory-mapped and streamed in chunks,
so memory does not grow with the pool; a second run with the same settings reuses the entry).
Fine for K/V weights at the built-in scales, too large on disk for a full SD UNet — at ``paper`` scale select fewer
weights (``include``) as the paper did with LoRA.

dattri (PyPI ``dattri``) implements DataInf as ``IFAttributorDataInf``; it is not used here: it needs its own
``AttributionTask`` (a loss function over a flat parameter vector and data loaders) rather than our model adapters,
and it applies one fixed damping to every layer instead of the paper's per-layer λ_l. The formula above is the
same transformation as dattri's, written from the paper.

Gradient re-normalisation (``normalize``): ``"none"`` (default) uses the gradients as above; ``"unit"`` scales every
per-draw gradient (one timestep, caption and noise) to unit L2 norm over the *whole* selection (all layers together)
before the draws are averaged — training gradients through the gradient store (``normalize="unit"``), the query's by
wrapping its per-sample gradient function in :class:`~genattr.harness.gradstore.UnitNormGrad`. g_l(z) and v_l are
then the layer-l slices of those averaged re-normalised gradients, and the formula above (including λ_l, computed
from them) is applied unchanged; normalising the whole draw rather than each layer keeps the relative size of the
layers' gradients, which the per-layer λ_l and the sum over l weigh. This is diffusion-ReTrac's re-normalisation
(Xie et al., TMLR 2024) against the "dominating norm effect"; it is **not** part of DataInf (a deviation from the
paper when switched on).

Presets: ``tiny``/``small`` use 4/10 timesteps per item; ``paper`` 10 (the paper takes one loss per example; averaging
timesteps is our adaptation to diffusion); all use cross-attention K/V and λ scale 0.1. ``small`` takes the strided
timesteps (``timestep_scheme="strided"``), chosen on the Customized Model's *training* concepts over three base
models and two method seeds: random draws decided DataInf's object figure by whether they happened to land near
t = 0 (docs/methods/trak.md); ``tiny`` and ``paper`` keep the random draws.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genattr.harness.errors import UserError

from ._presets import ScalePresets
from .trak import TIMESTEP_SCHEMES


class DataInfMethod(ScalePresets):
    """DataInf influence over the selected weights (see the module docstring)."""

    name = "datainf"
    version = "1"
    needs_model = True
    PRESETS = {
        "tiny": {"num_timesteps": 4},
        # strided: chosen on the Customized Model's training concepts over three base models and two method seeds
        # (docs/methods/trak.md, "Timestep scheme"); tiny keeps the random draws its checks were written for
        "small": {"num_timesteps": 10, "timestep_scheme": "strided"},
        "paper": {"num_timesteps": 10},
    }
    COMMON = {
        "selection": "cross-attn-kv",
        "include": None,
        "lambda_scale": 0.1,
        "lambda_per_element": True,
        "batch_size": 32,
        "grad_mode": "vmap",
        "captions": "cycle",
        "draws": "shared",
    }
    #: "normalize": "unit" is ReTrac's per-draw unit-norm gradients (not in the DataInf paper); default "none".
    #: "timestep_scheme": "random" (the default) or "strided" (D-TRAK's 0, T/K, 2T/K, …) timesteps: timesteps are
    #: our adaptation to diffusion (the paper has one loss per example), a scaled setting to calibrate
    OPTIONAL = {"normalize": "none", "timestep_scheme": "random"}

    def __init__(self, scale: str | None = None, **overrides):
        self._memo: dict = {}
        self._init_presets(scale, overrides)

    def _resolve(self, scale: str) -> dict:
        cfg = super()._resolve(scale)
        if cfg["include"] is not None:
            cfg["include"] = list(cfg["include"])
        if cfg["draws"] not in ("per-item", "shared"):
            raise UserError(f"draws must be 'per-item' or 'shared', got {cfg['draws']!r}")
        if self.option(cfg, "normalize") not in ("none", "unit"):
            raise UserError(f"datainf: normalize must be 'none' or 'unit', got {cfg['normalize']!r}")
        if float(cfg["lambda_scale"]) <= 0:
            raise UserError("datainf lambda_scale must be positive")
        if self.option(cfg, "timestep_scheme") not in TIMESTEP_SCHEMES:
            raise UserError(f"datainf: timestep_scheme must be 'random' or 'strided', got {cfg['timestep_scheme']!r}")
        return cfg

    # -- gradients ----------------------------------------------------------------------------------------------
    def _spec(self, ctx):
        """The gradient-store spec of the training gradients (unprojected; see :mod:`genattr.harness.gradstore`)."""
        from genattr.harness.gradstore import GradientSpec

        cfg = self.config
        shared = cfg["draws"] == "shared"
        draws = {"kind": self.option(cfg, "timestep_scheme"), "count": int(cfg["num_timesteps"]),
                 "namespace": "datainf" if shared else "datainf/train", "shared": shared, "captions": cfg["captions"]}
        return GradientSpec(selection=cfg["selection"], include=tuple(cfg["include"]) if cfg["include"] else None,
                            output="loss", draws=draws, flips=False, reduce="mean",
                            normalize=self.option(cfg, "normalize"),
                            projection="identity",
                            seed=self.seed_for(ctx), batch_size=int(cfg["batch_size"]), grad_mode=cfg["grad_mode"])

    def _grad_fn(self, ctx):
        """The query-side per-sample gradient function (wrapped in
        :class:`~genattr.harness.gradstore.UnitNormGrad` with ``normalize="unit"``, as the stored draws are)."""
        from genattr.harness.gradients import PerSampleGrad, select_parameters
        from genattr.harness.gradstore import UnitNormGrad

        cfg = self.config
        key = ("gf", id(ctx.model), cfg["selection"], tuple(cfg["include"] or ()), cfg["grad_mode"],
               self.option(cfg, "normalize"))
        if key not in self._memo:
            params = select_parameters(ctx.model, cfg["selection"], cfg["include"])
            gf = PerSampleGrad(ctx.model, params, target="loss", mode=cfg["grad_mode"])
            self._memo[key] = UnitNormGrad(gf) if self.option(cfg, "normalize") == "unit" else gf
        return self._memo[key]

    def _draws(self, ctx, role: str):
        from genattr.harness.gradients import random_draws, strided_draws

        n, T = int(self.config["num_timesteps"]), int(ctx.model.num_train_timesteps)
        caps, shared = self.config["captions"], self.config["draws"] == "shared"
        ns, seed = ("datainf" if shared else f"datainf/{role}"), self.seed_for(ctx)
        fn = strided_draws if self.option(self.config, "timestep_scheme") == "strided" else random_draws
        return lambda item: fn(seed, ns, item, n, T, shared=shared, captions=caps)

    def train_gradients(self, ctx):
        """The training gradients: a :class:`~genattr.harness.gradstore.StoredGradients` (``N × 1 × P`` float32,
        memory-mapped) from the shared gradient store."""
        from genattr.harness.gradstore import store_for

        if ctx.model is None:
            raise UserError("datainf needs a model (no model in the attribution context)")
        return store_for(ctx.cache).get(ctx.model, ctx.train_set, self._spec(ctx), device=ctx.device,
                                        progress=ctx.progress, desc="datainf gradients")

    def _layer_norms(self, G, layout):
        """``N × L`` squared norms ‖g_l(z_j)‖² per layer (one streamed pass; cached in memory per store entry)."""
        import torch

        mk = ("norms", G.key)
        if mk not in self._memo:
            out = torch.zeros(len(G), len(layout.names), dtype=torch.float64)
            for a, g in G.chunks():
                g = g[:, 0].double()
                for li, sl in enumerate(layout.slices()):
                    out[a:a + g.shape[0], li] = (g[:, sl] ** 2).sum(dim=1)
            self._memo[mk] = out
        return self._memo[mk]

    def layer_lambdas(self, norms, layout) -> list[float]:
        """λ_l per layer (see the module docstring) from the ``N × L`` squared gradient norms."""
        out = []
        for li, d in enumerate(layout.sizes):
            ms = float(norms[:, li].mean())
            if self.config["lambda_per_element"]:
                ms /= d
            out.append(float(self.config["lambda_scale"]) * max(ms, 1e-30))
        return out

    # -- protocol -----------------------------------------------------------------------------------------------
    def prepare(self, ctx) -> None:
        self._config_for(ctx)
        G = self.train_gradients(ctx)
        self._layer_norms(G, self._grad_fn(ctx).layout)

    def attribute(self, ctx, queries: Sequence, candidates: Sequence[int] | None = None) -> np.ndarray:
        """Two streamed passes over the stored training gradients for all queries together: the first accumulates
        ``Σ_j c_j g_l(z_j)`` per layer, the second scores ``Σ_l ⟨u_l, g_l(z_k)⟩/λ_l``."""
        import torch

        from genattr.harness.gradients import GradItem, gradient_features

        self._config_for(ctx)
        queries = list(queries)
        G = self.train_gradients(ctx)
        n = len(G)
        idx = None
        if candidates is not None:
            idx = [int(i) for i in candidates]
            if idx and (min(idx) < 0 or max(idx) >= n):
                raise UserError(f"candidate indices must be in 0..{n - 1}")
        if not queries:
            return np.zeros((0, n if idx is None else len(idx)))
        gf = self._grad_fn(ctx)
        layout = gf.layout
        items = [GradItem(f"query:{q.id}", q.image, (q.prompt,), q.mask) for q in queries]
        V = gradient_features(ctx.model, lambda r: items[r], len(items), self._draws(ctx, "query"), gf, None,
                              reduce="mean", batch_size=int(self.config["batch_size"]), seed=self.seed_for(ctx),
                              device=ctx.device).double()
        norms = self._layer_norms(G, layout)
        lams = self.layer_lambdas(norms, layout)
        slices = layout.slices()
        U = V.clone()
        for a, g in G.chunks():  # pass 1: U_l = v_l − Σ_j c_j g_l(z_j)
            g = g[:, 0].double()
            for li, (sl, lam) in enumerate(zip(slices, lams)):
                A = V[:, sl] @ g[:, sl].T  # Q × chunk: ⟨v, g_j⟩
                c = A / (n * (lam + norms[a:a + g.shape[0], li]))
                U[:, sl] -= c @ g[:, sl]
        scores = np.zeros((len(queries), n if idx is None else len(idx)), dtype=np.float64)
        for a, g in G.chunks(idx):  # pass 2: Σ_l ⟨u_l, g_l(z_k)⟩ / λ_l
            g = g[:, 0].double()
            s = torch.zeros(len(queries), g.shape[0], dtype=torch.float64)
            for sl, lam in zip(slices, lams):
                s += (U[:, sl] @ g[:, sl].T) / lam
            scores[:, a:a + g.shape[0]] = s.numpy()
        return scores
