"""DAS — the Diffusion Attribution Score (Lin, Tao, Dong, Xu; "Diffusion Attribution Score: Evaluating Training Data
Influence in Diffusion Models", ICLR 2025, arXiv 2410.18639; public code ``Jinxu-Lin/DAS``).

Idea: measure a training item's influence through the change it causes in the model's *predicted noise* ε_θ on the
query (an output distance — the KL divergence between the two predicted Gaussians is ∝ ‖Δε_θ‖²), not through the
change of the DDPM loss. Linearising ε_θ around θ and taking the one-step Newton leave-one-out parameter change of the
linearised least-squares problem (the TRAK derivation) gives, with φ = ∇θ f the gradient of the (compressed) output
and r_i the training item's residual,

    Δθ_{-i} ≈ −(ΦᵀΦ)⁻¹ φ(z_i) r_i,      Δf(ẑ) ≈ φ(ẑ)ᵀ Δθ_{-i}

and the score used here is

    τ(ẑ, z_i) = φ(ẑ)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z_i) · r_i                      (``form="signed"``, default)
    τ(ẑ, z_i) = (φ(ẑ)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z_i) · r_i)²                  (``form="squared"``: the paper's KL form)

higher = more influential. The pieces, as implemented:

* **Output function f** (``output``): ``"eps-mean"`` (default) — the mean over latent elements of ε_θ(x_t, t, c): the
  public code's "mean" output (its README's command), i.e. the paper's compression of the d-dimensional noise
  prediction into one scalar so one gradient per draw replaces a d-row Jacobian. ``"eps-sq-norm"`` (the code's
  ``mean-squared-l2-norm``, D-TRAK's output) and ``"loss"`` (the code's ``mse``) are offered too. ``eps-mean`` is
  registered as a gradient-store output function by this module (:func:`eps_mean`, through
  ``genattr.harness.gradients.register_output``; the store itself is unchanged).
* **Draws**: K uniformly strided timesteps t = 0, T/K, … (the code's ``uniform`` strategy), the same for every item
  and query, with noise of each item's own (``draws="per-item"``, default: the code seeds its noise per timestep and
  batch position, so items do not share noise) or one seeded noise per timestep for every item and query
  (``"shared"``, version 1's default: common random numbers), the caption of draw j = j mod n.
* **Per-timestep normalisation** (``normalize="unit"``, default): each draw's gradient over the selected weights is
  scaled to unit L2 norm before it is projected and averaged over the K timesteps — the public code's gradient script
  does this (``g / (‖g‖ + 1e-8)``); it is the re-normalisation of diffusion-ReTrac and keeps a few timesteps from
  dominating. ``"none"`` averages raw gradients.
* **Projection**: φ = Pᵀ ḡ with the gradient store's seeded Rademacher (or Gaussian) projector (the code uses
  ``traker``'s CUDA projector with a normal matrix); ``projection="identity"`` keeps the exact gradients.
* **Kernel** (ΦᵀΦ + λI)⁻¹ by an eigendecomposition in float64 (``gradients.kernel_inverse``); λ absolute or
  relative to the mean eigenvalue (``lambda_mode``). The public code sweeps λ over {1,2,5}×10⁻²…10⁶ and keeps the
  value with the best LDS on the evaluation itself; we do not select on the evaluation: the presets fix λ.
* **Residual r_i** (``residual``): ``"rms"`` (default) — the root-mean-square of ε_θ(x_t, t, c) − ε over the latent
  elements, averaged over the same K draws (the magnitude of the residual in the Newton step); ``"code"`` — the
  public scoring script's version: √MSE per draw, that K-vector scaled to unit norm, then averaged; ``"none"`` —
  r_i = 1 (then DAS is D-TRAK's kernel with the ε_θ output and normalised gradients).

Deviations from the paper (all options can restore the alternatives where the paper or code has them):

* **The sign.** The paper's DAS is a KL divergence, the square of the signed term above, so it cannot tell a helpful
  item from a harmful one; the public code's scoring script carries both (its ``DAS1`` and ``DAS1squ`` paths). The
  benchmarks here remove the top items (leave-K-out), sum scores over subsets (LDS) or retrieve sources (Customized
  Model), where a sign-blind score ranks harmful items as high as helpful ones; the default is therefore
  ``form="signed"`` and ``"squared"`` is the paper's definition.
* **The leverage term** 1/(1 − φ_iᵀ(ΦᵀΦ)⁻¹φ_i) of the exact leave-one-out step is dropped, as in TRAK and in the
  public code's default (``DAS1``); its ``DAS0`` path keeps it.
* **Timesteps, weights, projection** at ``tiny``/``small``: cross-attention K/V weights, K = 10 timesteps, k = 256 /
  1024 and a relative λ (× the mean eigenvalue; N ≲ k makes an unregularised kernel the hat matrix): 0.01 at
  ``tiny``; **0.1 at** ``small``, calibrated on the Customized Model's training concepts over three base models and
  two method seeds (``results/calibration/das-lambda-small.jsonl``, docs/methods/das-retrac.md) as D-TRAK's was;
  ``paper``: full UNet, K = 10, k = 4096 (the code's README command), relative λ 0.01 (the code's λ is selected on
  LDS, see above).
* Noise: derived from (seed, item id, t) via ``seeding.item_noise`` (``"shared"``: from (seed, "das", t)) — never
  from batch positions (the code seeds per timestep and batch position, so its item noise depends on the batching).

Caching: Φ comes from the shared gradient store (:mod:`genattr.harness.gradstore`) under a spec with the output
function, the draws, ``normalize`` and the projection — so DAS shares nothing with D-TRAK (other output) but a second
run reuses it; the kernel (namespace ``methods/das/kernel``) and the residuals (``methods/das/residuals``) are cached
on top, keyed with the store entry.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genattr.harness.errors import UserError

from ._presets import ScalePresets

OUTPUT = "eps-mean"
FORMS = ("signed", "squared")
RESIDUALS = ("rms", "code", "none")
OUTPUT_CHOICES = ("eps-mean", "eps-sq-norm", "loss")


# -- the output function -------------------------------------------------------------------------------------------
def _predict(model, latents, text_emb, timesteps, noise, params=None):
    """``(ε_θ(x_t, t, c), x_t)`` with the adapter's own noising and UNet call (``add_noise`` / ``unet_forward`` of the
    built-in adapters; the scheduler and ``model.unet`` otherwise)."""
    import torch

    timesteps = torch.as_tensor(timesteps, device=latents.device).long()
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(latents.shape[0])
    if hasattr(model, "add_noise"):
        x_t = model.add_noise(latents, noise, timesteps)
    else:
        ac = model.scheduler.alphas_cumprod.to(latents.device)[timesteps]
        shape = (-1,) + (1,) * (latents.ndim - 1)
        x_t = ac.sqrt().reshape(shape) * latents + (1 - ac).sqrt().reshape(shape) * noise
    if hasattr(model, "unet_forward"):
        return model.unet_forward(x_t, timesteps, text_emb, params), timesteps
    if params is None:
        return model.unet(x_t, timesteps, encoder_hidden_states=text_emb, return_dict=False)[0], timesteps
    from torch.func import functional_call

    out = functional_call(model.unet, dict(params), (x_t, timesteps), {"encoder_hidden_states": text_emb,
                                                                          "return_dict": False}, strict=False)
    return out[0], timesteps


def eps_mean(model, latents, text_emb, timesteps, noise, mask=None, params=None):
    """The mean over latent elements of ε_θ(x_t, t, c) (over the masked elements when ``mask`` is given): DAS's
    compression of the noise prediction into one scalar per example. Signature of
    ``genattr.harness.gradients.OUTPUTS``."""
    pred, _ = _predict(model, latents, text_emb, timesteps, noise, params)
    pred = pred.float()
    if mask is None:
        return pred.flatten(1).mean(1)
    w = model.latent_mask(mask.to(pred.device), tuple(pred.shape[-2:]))
    num = (pred * w).flatten(1).sum(1)
    den = w.flatten(1).sum(1) * pred.shape[1]
    return num / den.clamp_min(1e-12)


def _register_output() -> None:
    from genattr.harness.gradients import OUTPUTS, register_output

    if OUTPUTS.get(OUTPUT) is not eps_mean:
        register_output(OUTPUT, eps_mean)


_register_output()


# -- shared helpers (also used by ReTrac) --------------------------------------------------------------------------
def candidate_rows(candidates, n: int):
    """``candidates`` as a sorted-free int64 array checked against ``0..n-1`` (None stays None)."""
    if candidates is None:
        return None
    idx = np.asarray(list(candidates), dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise UserError(f"candidate indices must be in 0..{n - 1}")
    return idx


def query_items(queries):
    from genattr.harness.gradients import GradItem

    return [GradItem(f"query:{q.id}", q.image, (q.prompt,), q.mask) for q in queries]


class DASMethod(ScalePresets):
    """The Diffusion Attribution Score (see the module docstring for the formula, the options and the deviations)."""

    name = "das"
    #: 2: per-item draws by default, as the public code (1: one shared noise per timestep)
    version = "2"
    needs_model = True
    PRESETS = {
        "tiny": {"selection": "cross-attn-kv", "proj_dim": 256, "num_timesteps": 10, "lambda_reg": 0.01,
                 "lambda_mode": "relative"},
        # λ calibrated on the Customized Model's training concepts (3 base models × 2 method seeds)
        "small": {"selection": "cross-attn-kv", "proj_dim": 1024, "num_timesteps": 10, "lambda_reg": 0.1,
                  "lambda_mode": "relative"},
        "paper": {"selection": "full", "proj_dim": 4096, "num_timesteps": 10, "lambda_reg": 0.01,
                  "lambda_mode": "relative"},
    }
    COMMON = {
        "include": None,
        "output": OUTPUT,
        "normalize": "unit",
        "residual": "rms",
        "form": "signed",
        "projection": "rademacher",
        "draws": "per-item",
        "captions": "cycle",
        "batch_size": 32,
        "grad_mode": "vmap",
        "max_projector_bytes": 1 << 29,
    }

    def __init__(self, scale: str | None = None, **overrides):
        self._memo: dict = {}
        self._init_presets(scale, overrides)

    def _resolve(self, scale: str) -> dict:
        cfg = super()._resolve(scale)
        if cfg["include"] is not None:
            cfg["include"] = list(cfg["include"])
        if cfg["projection"] == "identity":
            cfg["proj_dim"] = None
        checks = {"output": OUTPUT_CHOICES, "normalize": ("unit", "none"), "residual": RESIDUALS, "form": FORMS,
                  "draws": ("shared", "per-item"), "lambda_mode": ("relative", "absolute"),
                  "projection": ("rademacher", "gaussian", "identity")}
        for key, allowed in checks.items():
            if cfg[key] not in allowed:
                raise UserError(f"{self.name}: {key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")
        if int(cfg["num_timesteps"]) < 1:
            raise UserError(f"{self.name}: num_timesteps must be a positive integer")
        return cfg

    # -- gradients ----------------------------------------------------------------------------------------------
    def draw_scheme(self) -> dict:
        cfg = self.config
        shared = cfg["draws"] == "shared"
        return {"kind": "strided", "count": int(cfg["num_timesteps"]),
                "namespace": self.name if shared else f"{self.name}/item", "shared": shared,
                "captions": cfg["captions"]}

    def spec(self, ctx):
        """The gradient-store spec of Φ."""
        from genattr.harness.gradstore import GradientSpec

        cfg = self.config
        return GradientSpec(
            selection=cfg["selection"], include=tuple(cfg["include"]) if cfg["include"] else None,
            output=cfg["output"], draws=self.draw_scheme(), flips=False, reduce="mean", normalize=cfg["normalize"],
            projection=cfg["projection"], proj_dim=None if cfg["projection"] == "identity" else int(cfg["proj_dim"]),
            proj_seed=self.seed_for(ctx), seed=self.seed_for(ctx), batch_size=int(cfg["batch_size"]),
            grad_mode=cfg["grad_mode"], max_projector_bytes=int(cfg["max_projector_bytes"]),
        )

    def train_features(self, ctx):
        """Φ: a :class:`~genattr.harness.gradstore.StoredGradients` (``N × 1 × k``) from the shared store."""
        from genattr.harness.gradstore import store_for

        if ctx.model is None:
            raise UserError(f"{self.name} needs a model (no model in the attribution context)")
        return store_for(ctx.cache).get(ctx.model, ctx.train_set, self.spec(ctx), device=ctx.device,
                                        progress=ctx.progress, desc=f"{self.name} train gradients")

    def _tools(self, ctx):
        """(per-sample gradient function with the configured normalisation, projector or None)."""
        from genattr.harness.gradients import PerSampleGrad
        from genattr.harness.gradstore import UnitNormGrad, store_for

        cfg = self.config
        key = ("tools", id(ctx.model), ctx.model.fingerprint, cfg["selection"], tuple(cfg["include"] or ()),
               cfg["output"], cfg["normalize"], cfg["projection"], cfg["proj_dim"], self.seed_for(ctx), str(ctx.device))
        if key not in self._memo:
            store, spec = store_for(ctx.cache), self.spec(ctx)
            gf = PerSampleGrad(ctx.model, store.parameters(ctx.model, spec), target=cfg["output"],
                               mode=cfg["grad_mode"])
            if cfg["normalize"] == "unit":
                gf = UnitNormGrad(gf)
            self._memo[key] = (gf, store.projector(ctx.model, spec, ctx.device))
        return self._memo[key]

    def kernel(self, ctx):
        """``(ΦᵀΦ + λI)⁻¹`` (``k × k`` float64), cached on top of the store entry."""
        import torch

        from genattr.harness.gradients import kernel_inverse

        store = self.train_features(ctx)
        cfg = self.config
        key = ctx.cache.key(self.name, self.version, "kernel", store.key, cfg["lambda_reg"], cfg["lambda_mode"])
        if ("kernel", key) in self._memo:
            return self._memo[("kernel", key)]

        def compute():
            gram = torch.zeros(store.dim, store.dim, dtype=torch.float64)
            for _, g in store.chunks():
                f = g[:, 0].double()
                gram += f.T @ f
            lam = float(cfg["lambda_reg"])
            if cfg["lambda_mode"] == "relative":
                lam *= float(gram.diagonal().sum()) / gram.shape[0]
            return {"kernel": kernel_inverse(gram, lam)}

        k = ctx.cache.tensors(f"methods/{self.name}/kernel", key, compute,
                              meta={"method": self.name, "config": cfg})["kernel"].double()
        self._memo[("kernel", key)] = k
        return k

    def residuals(self, ctx):
        """``N`` residuals r_i (float64; all 1 with ``residual="none"``), cached with the store entry's key."""
        cfg = self.config
        n = len(ctx.train_set)
        if cfg["residual"] == "none":
            return np.ones(n)
        store = self.train_features(ctx)
        key = ctx.cache.key(self.name, self.version, "residuals", store.key, cfg["residual"])
        if ("res", key) in self._memo:
            return self._memo[("res", key)]

        def compute():
            per_draw = draw_losses(ctx.model, ctx.train_set, self.draw_scheme(), self.seed_for(ctx),
                                   batch_size=max(int(cfg["batch_size"]), 64), device=ctx.device)
            e = np.sqrt(np.maximum(per_draw, 0.0))  # √MSE per draw
            if cfg["residual"] == "code":
                e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-8)
            return {"residuals": e.mean(axis=1)}

        r = np.asarray(ctx.cache.arrays(f"methods/{self.name}/residuals", key, compute,
                                        meta={"method": self.name, "residual": cfg["residual"]})["residuals"],
                       dtype=np.float64)
        self._memo[("res", key)] = r
        return r

    def query_features(self, ctx, queries):
        """``Q × k`` query features φ(ẑ): the same draws, normalisation and projection as the stored rows."""
        from genattr.harness.gradients import gradient_features, make_draws

        items = query_items(queries)
        gf, proj = self._tools(ctx)
        draws = make_draws(self.draw_scheme(), self.seed_for(ctx), int(ctx.model.num_train_timesteps))
        return gradient_features(ctx.model, lambda r: items[r], len(items), draws, gf, proj, reduce="mean",
                                 batch_size=int(self.config["batch_size"]), seed=self.seed_for(ctx), device=ctx.device)

    # -- protocol -----------------------------------------------------------------------------------------------
    def prepare(self, ctx) -> None:
        self._config_for(ctx)
        self.kernel(ctx)
        self.residuals(ctx)

    def attribute(self, ctx, queries: Sequence, candidates: Sequence[int] | None = None) -> np.ndarray:
        """``φ(ẑ)ᵀ(ΦᵀΦ + λI)⁻¹`` per query, one streamed pass over Φ for all queries, times r_i (squared with
        ``form="squared"``)."""
        import torch

        self._config_for(ctx)
        queries = list(queries)
        n = len(ctx.train_set)
        idx = candidate_rows(candidates, n)
        width = n if idx is None else len(idx)
        if not queries:
            return np.zeros((0, width))
        store, k = self.train_features(ctx), self.kernel(ctx)
        w = self.query_features(ctx, queries).double() @ k
        s = store.dot(w, rows=None if idx is None else idx.tolist())[:, 0, :].T  # Q × width
        r = self.residuals(ctx)
        s = s * (r if idx is None else r[idx])[None, :]
        if self.config["form"] == "squared":
            s = s ** 2
        return np.ascontiguousarray(s, dtype=np.float64)


def draw_losses(model, dataset, draws_spec: dict, seed: int, batch_size: int = 64, device: str = "cpu",
                rows: Sequence[int] | None = None) -> np.ndarray:
    """``len(rows) × D`` DDPM losses (mean of (ε_θ − ε)² over the latent) of each item at each of its D draws of
    ``draws_spec`` (:func:`genattr.harness.gradients.make_draws`; same timesteps, captions and noise as the gradient
    store's rows). Forward passes only; batches of ``batch_size`` (draws) do not change the values."""
    import torch

    from genattr.harness.gradients import dataset_items, make_draws
    from genattr.harness.seeding import item_noise

    rows = list(range(len(dataset))) if rows is None else [int(i) for i in rows]
    load = dataset_items(dataset, rows)
    fn = make_draws(draws_spec, int(seed), int(model.num_train_timesteps))
    plan, items = [], {}
    for r in range(len(rows)):
        it = load(r)
        items[r] = it
        plan.extend((r, j, d) for j, d in enumerate(fn(it)))
    width = max(j for _, j, _ in plan) + 1 if plan else 0
    out = np.zeros((len(rows), width), dtype=np.float64)
    shape = None
    with torch.no_grad():
        for a in range(0, len(plan), int(batch_size)):
            chunk = plan[a:a + int(batch_size)]
            uniq = sorted({r for r, _, _ in chunk})
            lat = dict(zip(uniq, model.latents(torch.stack([items[r].image for r in uniq]).to(device, torch.float32))))
            latents = torch.stack([lat[r] for r, _, _ in chunk])
            if shape is None:
                shape = tuple(latents.shape[1:])
            caps = [items[r].captions[d.caption % len(items[r].captions)] for r, _, d in chunk]
            emb = model.text_embeddings(caps).to(device)
            ts = torch.tensor([d.t for _, _, d in chunk], dtype=torch.long, device=device)
            noise = torch.stack([item_noise(seed, d.noise_key, d.noise_caption, d.t, shape) for _, _, d in chunk])
            vals = model.denoise_loss(latents, emb, ts, noise.to(device)).double().cpu().numpy()
            for (r, j, _), v in zip(chunk, vals):
                out[r, j] = v
    return out
