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

Gradients: the DDPM loss per item averaged over ``num_timesteps`` random timesteps (without replacement); the same
for the query (its prompt and mask). ``draws="shared"`` (default): the same timesteps and noise for every item and
query (common random numbers, as for TRAK); ``"per-item"``: seeded by each item's id. Captions cycle (draw j uses
caption j mod n). On the tiny digits model, training images as their own queries ranked themselves first 24/30
times with shared draws and 3/30 with per-item draws. They are
kept unprojected (DataInf is exact in the selected weights), cached as an ``N×P`` float32 tensor in ``ctx.cache``
(namespace ``methods/datainf/gradients``): fine for K/V weights at the built-in scales, too large for a full SD
UNet — at ``paper`` scale select fewer weights (``include``) as the paper did with LoRA.

dattri (PyPI ``dattri``) implements DataInf as ``IFAttributorDataInf``; it is not used here: it needs its own
``AttributionTask`` (a loss function over a flat parameter vector and data loaders) rather than our model adapters,
and it applies one fixed damping to every layer instead of the paper's per-layer λ_l. The formula above is the
same transformation as dattri's, written from the paper.

Presets: ``tiny``/``small`` use 4/10 timesteps per item; ``paper`` 10 (the paper takes one loss per example; averaging
timesteps is our adaptation to diffusion); all use cross-attention K/V and λ scale 0.1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genattr.harness.errors import UserError

from ._presets import ScalePresets


class DataInfMethod(ScalePresets):
    """DataInf influence over the selected weights (see the module docstring)."""

    name = "datainf"
    version = "1"
    needs_model = True
    PRESETS = {
        "tiny": {"num_timesteps": 4},
        "small": {"num_timesteps": 10},
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

    def __init__(self, scale: str | None = None, **overrides):
        self._memo: dict = {}
        self._init_presets(scale, overrides)

    def _resolve(self, scale: str) -> dict:
        cfg = super()._resolve(scale)
        if cfg["include"] is not None:
            cfg["include"] = list(cfg["include"])
        if cfg["draws"] not in ("per-item", "shared"):
            raise UserError(f"draws must be 'per-item' or 'shared', got {cfg['draws']!r}")
        if float(cfg["lambda_scale"]) <= 0:
            raise UserError("datainf lambda_scale must be positive")
        return cfg

    # -- gradients ----------------------------------------------------------------------------------------------
    def _grad_fn(self, ctx):
        from ._gradients import PerSampleGrad, select_parameters

        cfg = self.config
        key = ("gf", id(ctx.model), cfg["selection"], tuple(cfg["include"] or ()), cfg["grad_mode"])
        if key not in self._memo:
            params = select_parameters(ctx.model, cfg["selection"], cfg["include"])
            self._memo[key] = PerSampleGrad(ctx.model, params, target="loss", mode=cfg["grad_mode"])
        return self._memo[key]

    def _draws(self, ctx, role: str):
        from ._gradients import random_draws

        n, T = int(self.config["num_timesteps"]), int(ctx.model.num_train_timesteps)
        caps, shared = self.config["captions"], self.config["draws"] == "shared"
        ns = "datainf" if shared else f"datainf/{role}"
        return lambda item: random_draws(ctx.seed, ns, item, n, T, shared=shared, captions=caps)

    def train_gradients(self, ctx):
        """``N×P`` float32 training gradients (cached)."""
        from ._gradients import dataset_items, gradient_features

        if ctx.model is None:
            raise UserError("datainf needs a model (no model in the attribution context)")
        cfg = self.config
        key = ctx.cache.key(self.name, self.version,
                            {k: cfg[k] for k in ("selection", "include", "num_timesteps", "captions", "draws")},
                            ctx.model.fingerprint, ctx.train_set.fingerprint, int(ctx.seed))
        if ("G", key) in self._memo:
            return self._memo[("G", key)]

        def compute():
            gf = self._grad_fn(ctx)
            g = gradient_features(ctx.model, dataset_items(ctx.train_set), len(ctx.train_set), self._draws(ctx, "train"),
                                  gf, None, reduce="mean", batch_size=int(cfg["batch_size"]), seed=ctx.seed,
                                  device=ctx.device, progress=ctx.progress, desc="datainf gradients")
            return {"grads": g}

        G = ctx.cache.tensors("methods/datainf/gradients", key, compute, meta={"config": cfg})["grads"]
        self._memo[("G", key)] = G
        return G

    def layer_lambdas(self, G, layout) -> list[float]:
        """λ_l per layer (see the module docstring)."""
        out = []
        for sl, d in zip(layout.slices(), layout.sizes):
            ms = float((G[:, sl].double() ** 2).sum(dim=1).mean())
            if self.config["lambda_per_element"]:
                ms /= d
            out.append(float(self.config["lambda_scale"]) * max(ms, 1e-30))
        return out

    # -- protocol -----------------------------------------------------------------------------------------------
    def prepare(self, ctx) -> None:
        self._config_for(ctx)
        self.train_gradients(ctx)

    def attribute(self, ctx, queries: Sequence, candidates: Sequence[int] | None = None) -> np.ndarray:
        import torch

        from ._gradients import GradItem, gradient_features

        self._config_for(ctx)
        queries = list(queries)
        G = self.train_gradients(ctx)
        n = G.shape[0]
        idx = None
        if candidates is not None:
            idx = torch.as_tensor(list(candidates), dtype=torch.long)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise UserError(f"candidate indices must be in 0..{n - 1}")
        if not queries:
            return np.zeros((0, n if idx is None else len(idx)))
        gf = self._grad_fn(ctx)
        items = [GradItem(f"query:{q.id}", q.image, (q.prompt,), q.mask) for q in queries]
        V = gradient_features(ctx.model, lambda r: items[r], len(items), self._draws(ctx, "query"), gf, None,
                              reduce="mean", batch_size=int(self.config["batch_size"]), seed=ctx.seed,
                              device=ctx.device).double()
        lams = self.layer_lambdas(G, gf.layout)
        scores = torch.zeros(len(queries), n if idx is None else len(idx), dtype=torch.float64)
        for sl, lam in zip(gf.layout.slices(), lams):
            Gl = G[:, sl].double()
            Vl = V[:, sl]
            A = Vl @ Gl.T  # Q × N: ⟨v, g_j⟩
            c = A / (n * (lam + (Gl ** 2).sum(dim=1)))
            U = Vl - c @ Gl
            Gc = Gl if idx is None else Gl[idx]
            scores += (U @ Gc.T) / lam
        return scores.numpy()
