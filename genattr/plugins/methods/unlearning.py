"""Attribution by unlearning the synthesized image (Wang, Hertzmann, Efros, Zhu, Zhang, NeurIPS 2024).

The method "unlearns" a synthesized query ẑ from the model with Fisher-preconditioned Newton steps on a weight
subset (by default the cross-attention key/value projections) and scores every training item by how much its
loss rises:

* Objective (EWC form): ``L_unlearn(θ) = −L(ẑ, θ) + (N/2)(θ − θ0)ᵀ F (θ − θ0)``, ``F`` the diagonal Fisher.
* Update, ``S`` times (Hessian ≈ N·F): **θ ← θ + (α / N) · F⁻¹ ∇θ L(ẑ, θ)**; the query gradient averages
  ``batch × accumulation`` draws whose timesteps are drawn without replacement from ``0 … T_train − 1`` (a fresh
  permutation whenever more draws are needed) with fresh noise, all seeded from (seed, query id, step, draw).
  Variant ``sgd`` (the paper's ablation): plain ascent ``θ ← θ + α ∇θ L(ẑ, θ)``, no Fisher.
* Fisher: mean of squared per-sample gradients (``torch.func.vmap`` over ``torch.func.grad``) of the noise loss,
  one random training item, caption, timestep, noise and horizontal flip per sample, each drawn from
  (seed, sample index) — never from a batch position.
* Zero-Fisher guard (not in the paper, whose code divides by ``fisher * N`` undamped): ``F`` is clamped from below
  at ``fisher_floor × mean(F)`` (mean over every selected entry) so an entry the Fisher samples never touched
  cannot produce an infinite step.
* Score: ``τ(ẑ, z) = L(z, θ₋ẑ) − L(z, θ0)``; ``L(z, θ)`` averages the noise loss over ``timesteps`` strided
  timesteps (``seeding.strided_timesteps``) and the item's first ``captions`` captions, with the noise of
  ``seeding.item_noise(seed, item id, caption index, t, shape)`` — identical before and after unlearning and for
  every batch size. τ is computed for the image and its horizontal flip and combined by ``flip`` (``max``, as in the
  paper; ``mean``; or ``none`` for the unflipped image only). Higher = more influential.

θ0 training losses and the Fisher do not depend on the query: :meth:`Unlearning.prepare` computes them once and
caches them in ``ctx.cache`` (keyed by the model and dataset fingerprints and every option that changes them).
The caller's model is never modified: unlearned weights are passed to ``model.denoise_loss(params=…)``.

Presets (option ``preset``; default: the context's scale, ``paper`` → ``coco``):

* ``coco`` — the paper's MSCOCO values: 1 step, α = 0.01, 80 × 625 draws (50,000), T = 20, all captions, Fisher over
  591,435 samples (5 epochs of COCO).
* ``customized`` — the paper's Customized-Model values: 100 steps, α = 0.1, 16 × 10 draws, T = 10, Fisher over
  1,000,000 samples and N = 400,000,000 in the step (the paper used LAION-400M's size, not the pool's).
* ``tiny`` / ``small`` — **scaled deviations** for the built-in models of a few hundred thousand parameters
  trained on ≈ 2 k images: several small Newton steps (5; α = 1e-4 for ``tiny``, which tests plumbing; α = 3e-3 for
  ``small``, calibrated on calibration queries of the leave-K-out digits model, never the benchmark's — at 1e-4 the
  step did not raise the query's own loss); fewer query draws (128 / 512 instead of 50,000), fewer scoring
  timesteps (5) and one caption per item; no flips (``flip="none"``, no flipped Fisher samples) because the built-in
  recipes train without random flips (their captions are not flip-invariant) — so a query's scoring pass costs
  N × 5 UNet evaluations; Fisher over 256 / 1024 samples.
* ``customized-tiny`` / ``customized-small`` — the same for the built-in Customized Model miniature, whose
  fine-tuned (near-memorised) models need α = 1e-2 (calibrated on its training concepts, never the test concepts),
  with 256 draws per step. The customized-model benchmark selects them (its preset hint ``customized``,
  :data:`HINT_PRESET`), as the paper used
  other values for that protocol.

Every value can be overridden (calibrate ``alpha`` and ``steps`` on training concepts or calibration queries).

Cost in UNet evaluations: Fisher — ``fisher_samples`` per-sample gradients, once; θ0 — N × T × captions × (2 with
flips) forward passes, once; per query — ``steps × batch × accumulation`` gradient evaluations plus the same
N × T × captions × (2) forward passes (see docs/methods/unlearning.md).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

from genattr.harness.api import PARAMETER_SELECTIONS, AttributionContext, Query
from genattr.harness.errors import UserError

#: α of the ``small`` preset, calibrated on the leave-K-out digits model with calibration queries of its own (fresh
#: seeds, never the benchmark's queries) by ``tests/perf/calibrate_leave_k_out.py``; see docs/methods/unlearning.md.
ALPHA_SMALL = 3e-3

#: α of the built-in Customized Model presets, calibrated on the benchmark's training concepts (never the test
#: concepts) with ``tests/perf/calibrate_customized.py``; see docs/methods/unlearning.md for the table.
ALPHA_CUSTOMIZED_SMALL = 1e-2

#: The paper's values (``coco``, ``customized``) and the scaled values of the built-in scales (``tiny``, ``small``).
PRESETS: dict[str, dict[str, Any]] = {
    "coco": dict(
        steps=1, alpha=0.01, batch=80, accumulation=625, timesteps=20, captions=None, flip="max",
        fisher_samples=591_435, n_train=None, fisher_flips=True,
    ),
    "customized": dict(
        steps=100, alpha=0.1, batch=16, accumulation=10, timesteps=10, captions=None, flip="max",
        fisher_samples=1_000_000, n_train=400_000_000, fisher_flips=True,
    ),
    "tiny": dict(
        steps=5, alpha=1e-4, batch=32, accumulation=4, timesteps=5, captions=1, flip="none",
        fisher_samples=256, n_train=None, fisher_flips=False,
    ),
    "small": dict(
        steps=5, alpha=ALPHA_SMALL, batch=64, accumulation=8, timesteps=5, captions=1, flip="none",
        fisher_samples=1024, n_train=None, fisher_flips=False,
    ),
    # the built-in Customized Model miniature: a customized (fine-tuned, near-memorised) model needs a far larger
    # step than a model trained from scratch — at α = 1e-4 the query's own loss does not rise (docs/methods)
    "customized-tiny": dict(
        steps=5, alpha=ALPHA_CUSTOMIZED_SMALL, batch=32, accumulation=4, timesteps=5, captions=1, flip="none",
        fisher_samples=256, n_train=None, fisher_flips=False,
    ),
    "customized-small": dict(
        steps=5, alpha=ALPHA_CUSTOMIZED_SMALL, batch=64, accumulation=4, timesteps=5, captions=1, flip="none",
        fisher_samples=1024, n_train=None, fisher_flips=False,
    ),
}

#: Which preset a scale selects when ``preset`` is not given.
SCALE_PRESET = {"tiny": "tiny", "small": "small", "paper": "coco"}

#: Presets selected by a benchmark's preset hint (``Benchmark.preset_hint``, offered to methods through
#: ``resolve_config(scale, preset_hint)`` and ``ctx.extra["preset_hint"]``) → scale → preset; the paper itself used
#: different values for its two protocols (``coco`` for the leave-K-out models, ``customized`` for AbC).
HINT_PRESET = {
    "customized": {"tiny": "customized-tiny", "small": "customized-small", "paper": "customized"},
}


def preset_for(scale: str, preset_hint: str | None = None) -> str:
    """The preset chosen when none is given: the hint's own for the scale (:data:`HINT_PRESET`), else the scale's."""
    table = HINT_PRESET.get(preset_hint or "", {})
    if scale in table:
        return table[scale]
    if scale not in SCALE_PRESET:
        raise UserError(f"unlearning: no preset for scale {scale!r}; pass preset=…")
    return SCALE_PRESET[scale]

#: Options shared by every preset (each overridable).
DEFAULTS: dict[str, Any] = dict(
    selection="cross-attn-kv",  # weights updated (and whose Fisher is estimated)
    variant="newton",  # "newton" (Fisher-preconditioned) or "sgd" (plain ascent, the ablation)
    fisher_floor=1e-6,  # F is clamped from below at fisher_floor × mean(F)
    fisher_batch=32,  # per-sample gradients taken together (vmap width)
    per_sample="vmap",  # "vmap" (torch.func) or "loop" (one backward per sample; same values)
    batch_size=256,  # UNet evaluations per forward pass when scoring training items
    seed=None,  # seed of every draw (Fisher, query draws, scoring noise); None: the context's seed
)

FLIPS = ("max", "mean", "none")
VARIANTS = ("newton", "sgd")
OPTIONS = tuple(DEFAULTS) + tuple(PRESETS["coco"]) + ("preset",)
# fisher_flips: Fisher samples use random horizontal flips (as the paper's training did); set per preset.


def _check_config(cfg: Mapping[str, Any]) -> None:
    def positive_int(k):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"unlearning: option {k!r} must be a positive integer, got {v!r}")

    for k in ("batch", "accumulation", "timesteps", "fisher_samples", "fisher_batch", "batch_size"):
        positive_int(k)
    if isinstance(cfg["steps"], bool) or not isinstance(cfg["steps"], int) or cfg["steps"] < 0:
        raise UserError(f"unlearning: option 'steps' must be a non-negative integer, got {cfg['steps']!r}")
    for k in ("captions", "n_train", "seed"):
        if cfg[k] is not None:
            if k == "seed":
                if isinstance(cfg[k], bool) or not isinstance(cfg[k], int):
                    raise UserError(f"unlearning: option 'seed' must be an integer or null, got {cfg[k]!r}")
            else:
                positive_int(k)
    for k in ("alpha", "fisher_floor"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserError(f"unlearning: option {k!r} must be a non-negative number, got {v!r}")
    if not isinstance(cfg["fisher_flips"], bool):
        raise UserError(f"unlearning: option 'fisher_flips' must be true or false, got {cfg['fisher_flips']!r}")
    if cfg["selection"] not in PARAMETER_SELECTIONS:
        raise UserError(f"unlearning: selection must be one of {', '.join(PARAMETER_SELECTIONS)}, got {cfg['selection']!r}")
    if cfg["variant"] not in VARIANTS:
        raise UserError(f"unlearning: variant must be one of {', '.join(VARIANTS)}, got {cfg['variant']!r}")
    if cfg["flip"] not in FLIPS:
        raise UserError(f"unlearning: flip must be one of {', '.join(FLIPS)}, got {cfg['flip']!r}")
    if cfg["per_sample"] not in ("vmap", "loop"):
        raise UserError(f"unlearning: per_sample must be 'vmap' or 'loop', got {cfg['per_sample']!r}")


def resolve_config(preset: str, overrides: Mapping[str, Any]) -> dict:
    """The full configuration: ``DEFAULTS``, then the preset's values, then ``overrides``."""
    if preset not in PRESETS:
        from genattr.harness.errors import did_you_mean

        raise UserError(f"unlearning: unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; "
                        f"presets: {', '.join(PRESETS)}")
    cfg = {**DEFAULTS, **PRESETS[preset], **dict(overrides)}
    cfg["preset"] = preset
    _check_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# building blocks (module-level so that other methods and later speed-ups can reuse them)
# ---------------------------------------------------------------------------------------------------------------


def _device_of(model):
    try:
        return next(model.unet.parameters()).device
    except (AttributeError, StopIteration):
        import torch

        return torch.device("cpu")


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


class _eval_mode:
    """Put the UNet in eval mode for the duration, restoring its previous mode afterwards."""

    def __init__(self, model):
        self.unet = getattr(model, "unet", None)

    def __enter__(self):
        if self.unet is not None and hasattr(self.unet, "train"):
            self.was_training = bool(getattr(self.unet, "training", False))
            self.unet.eval()
        return self

    def __exit__(self, *exc):
        if self.unet is not None and hasattr(self.unet, "train") and self.was_training:
            self.unet.train()


def fisher_draws(seed: int, n_items: int, caption_counts: Sequence[int], sample: int, num_train_timesteps: int,
                 flips: bool) -> tuple[int, int, int, bool]:
    """(item index, caption index, timestep, flipped) of Fisher sample ``sample`` — a function of the seed and the
    sample index only."""
    from genattr.harness.seeding import numpy_rng

    u = numpy_rng(seed, "unlearning/fisher", sample).random(4)
    i = min(int(u[0] * n_items), n_items - 1)
    c = min(int(u[1] * caption_counts[i]), caption_counts[i] - 1)
    t = min(int(u[2] * num_train_timesteps), num_train_timesteps - 1)
    return i, c, t, bool(flips and u[3] < 0.5)


def per_sample_gradients(model, params: Mapping[str, Any], latents, text_emb, timesteps, noise, mask=None,
                         method: str = "vmap") -> dict:
    """``{name: B × *shape}`` gradients of each example's ``denoise_loss`` with respect to ``params`` (tensors that
    override the UNet's by name)."""
    import torch

    params = {k: v.detach() for k, v in params.items()}
    if method == "vmap":
        from torch.func import grad, vmap

        def f(p, lat, emb, t, eps, m):
            return model.denoise_loss(lat[None], emb[None], t[None], eps[None],
                                      mask=None if m is None else m[None], params=p)[0]

        in_dims = (None, 0, 0, 0, 0, None if mask is None else 0)
        with warnings.catch_warnings():  # ops without a batching rule (CPU flash attention) fall back to a loop
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            g = vmap(grad(f), in_dims=in_dims)(params, latents, text_emb, timesteps, noise, mask)
        return {k: v.detach() for k, v in g.items()}
    out = {k: [] for k in params}
    for b in range(latents.shape[0]):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = model.denoise_loss(latents[b:b + 1], text_emb[b:b + 1], timesteps[b:b + 1], noise[b:b + 1],
                                  mask=None if mask is None else mask[b:b + 1], params=p)[0]
        gs = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
        for k, g in zip(p, gs):
            out[k].append(torch.zeros_like(p[k]) if g is None else g)
    return {k: torch.stack(v) for k, v in out.items()}


def fisher_diagonal(model, dataset, selection: str = "cross-attn-kv", samples: int = 256, seed: int = 0,
                    batch: int = 32, flips: bool = True, method: str = "vmap", progress: bool = False) -> dict:
    """Diagonal Fisher ``{name: tensor}`` over ``model.parameters(selection)``: the mean over ``samples`` draws of
    the squared per-sample gradient of the noise loss (one random item, caption, timestep, noise, flip each)."""
    import torch

    from genattr.harness.seeding import generator

    sel = model.parameters(selection)
    if not sel:
        raise UserError(f"unlearning: model {getattr(model, 'name', '?')!r} has no weights in selection {selection!r}")
    dev = _device_of(model)
    params = {k: v.detach() for k, v in sel.items()}
    acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    n = len(dataset)
    counts = [len(dataset.captions(i)) for i in range(n)]
    T = int(model.num_train_timesteps)
    shape = None
    with _eval_mode(model):
        for start in _progress(range(0, samples, batch), progress, desc="Fisher", unit="batch"):
            ks = range(start, min(start + batch, samples))
            draws = [fisher_draws(seed, n, counts, k, T, flips) for k in ks]
            with torch.no_grad():
                imgs = dataset.images([d[0] for d in draws]).to(dev)
                flip = torch.tensor([d[3] for d in draws], device=dev)
                imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
                lat = model.latents(imgs)
                emb = model.text_embeddings([dataset.captions(d[0])[d[1]] for d in draws])
            if shape is None:
                shape = tuple(lat.shape[1:])
            noise = torch.stack([torch.randn(shape, generator=generator(seed, "unlearning/fisher-noise", k))
                                 for k in ks]).to(dev, lat.dtype)
            t = torch.tensor([d[2] for d in draws], device=dev, dtype=torch.long)
            g = per_sample_gradients(model, params, lat, emb, t, noise, method=method)
            for k in acc:
                acc[k] += g[k].detach().double().pow(2).sum(0)
    return {k: (v / samples).to(params[k].dtype).cpu() for k, v in acc.items()}


def query_draws(seed: int, query_id: str, step: int, count: int, num_train_timesteps: int) -> list[int]:
    """The timesteps of one unlearning step's ``count`` draws: consecutive seeded permutations of
    ``0 … num_train_timesteps − 1`` (so no timestep repeats before every one has been drawn)."""
    from genattr.harness.seeding import numpy_rng

    out: list[int] = []
    cycle = 0
    while len(out) < count:
        perm = numpy_rng(seed, "unlearning/query-t", query_id, step, cycle).permutation(num_train_timesteps)
        out.extend(int(x) for x in perm[: count - len(out)])
        cycle += 1
    return out


def query_gradient(model, params: Mapping[str, Any], latents, text_emb, query_id: str, step: int, seed: int,
                   batch: int, accumulation: int, mask=None) -> dict:
    """∇θ of the query's mean noise loss over ``batch × accumulation`` draws (timesteps from :func:`query_draws`,
    noise from (seed, query id, step, draw index)). ``latents``/``text_emb``: ``1 × …``; ``mask``: ``H×W`` or None."""
    import torch

    from genattr.harness.seeding import generator

    dev = latents.device
    total = batch * accumulation
    ts = query_draws(seed, query_id, step, total, int(model.num_train_timesteps))
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    grads = {k: torch.zeros_like(v) for k, v in p.items()}
    shape = tuple(latents.shape[1:])
    for a in range(accumulation):
        js = range(a * batch, (a + 1) * batch)
        noise = torch.stack([torch.randn(shape, generator=generator(seed, "unlearning/query-noise", query_id, step, j))
                             for j in js]).to(dev, latents.dtype)
        t = torch.tensor([ts[j] for j in js], device=dev, dtype=torch.long)
        m = None if mask is None else mask.to(dev, latents.dtype)[None].expand(batch, *mask.shape)
        loss = model.denoise_loss(latents.expand(batch, *shape), text_emb.expand(batch, *text_emb.shape[1:]), t,
                                  noise, mask=m, params=p).sum() / total
        gs = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
        for k, g in zip(p, gs):
            if g is not None:
                grads[k] += g
    return grads


def clamp_fisher(fisher: Mapping[str, Any], floor: float) -> dict:
    """``F`` clamped from below at ``floor × mean(F)`` (mean over all entries of all tensors)."""
    import torch

    total = sum(float(v.double().sum()) for v in fisher.values())
    count = sum(v.numel() for v in fisher.values())
    mean = total / max(count, 1)
    if not mean > 0:
        raise UserError("unlearning: the Fisher diagonal is zero everywhere (no gradient reaches the selected "
                        "weights); choose another selection or use variant 'sgd'")
    return {k: torch.clamp(v, min=floor * mean) for k, v in fisher.items()}


def unlearn(model, query: Query, fisher: Mapping[str, Any] | None, *, selection: str, steps: int, alpha: float,
            n_train: int, batch: int, accumulation: int, seed: int, variant: str = "newton",
            fisher_floor: float = 1e-6) -> dict:
    """The unlearned weights ``{name: tensor}`` (detached copies of the ``selection``) after ``steps`` updates
    ``θ ← θ + (α/N) F⁻¹ ∇θ L(ẑ, θ)`` (``variant="newton"``) or ``θ ← θ + α ∇θ L(ẑ, θ)`` (``"sgd"``). The model
    itself is not modified."""
    import torch

    dev = _device_of(model)
    theta = {k: v.detach().clone() for k, v in model.parameters(selection).items()}
    if variant == "newton":
        if fisher is None:
            raise ValueError("variant 'newton' needs a Fisher diagonal")
        fc = clamp_fisher(fisher, fisher_floor)
        scale = {k: (alpha / n_train) / fc[k].to(dev, theta[k].dtype) for k in theta}
    else:
        scale = {k: alpha for k in theta}
    with _eval_mode(model):
        with torch.no_grad():
            lat = model.latents(query.image[None].to(dev))
            emb = model.text_embeddings([query.prompt])
        mask = None
        if query.mask is not None:
            mask = torch.as_tensor(query.mask, dtype=lat.dtype)
            if mask.ndim == 3:
                mask = mask[0]
        for s in range(steps):
            g = query_gradient(model, theta, lat, emb, str(query.id), s, seed, batch, accumulation, mask=mask)
            with torch.no_grad():
                for k in theta:
                    theta[k] = theta[k] + scale[k] * g[k]
    return theta


class TrainingLosses:
    """Walks training items in chunks; each chunk's rows (item × caption × timestep × flip: latents, text
    embeddings, noise) are prepared once and evaluated under every given weight set.

    ``__call__(param_sets, indices)`` returns one float64 array ``len(indices) × flips`` per weight set (``None``
    = θ0), each entry the mean loss over the item's scored captions and timesteps."""

    def __init__(self, model, dataset, timesteps: int, captions: int | None, flips: bool, seed: int,
                 batch_size: int = 256, progress: bool = False):
        from genattr.harness.seeding import strided_timesteps

        self.model, self.dataset = model, dataset
        self.ts = strided_timesteps(timesteps, int(model.num_train_timesteps))
        self.captions, self.flips, self.seed = captions, flips, seed
        self.batch_size, self.progress = batch_size, progress
        self.ids = list(dataset.ids)

    @property
    def n_flips(self) -> int:
        return 2 if self.flips else 1

    def _caps(self, i: int) -> tuple[str, ...]:
        cs = self.dataset.captions(i)
        return cs if self.captions is None else cs[: self.captions]

    def _prepare(self, items: Sequence[int]):
        import torch

        from genattr.harness.seeding import item_noise

        model, dev = self.model, _device_of(self.model)
        with torch.no_grad():
            imgs = self.dataset.images(list(items)).to(dev)
            lats = [model.latents(imgs)]
            if self.flips:
                lats.append(model.latents(imgs.flip(-1)))
            lat = torch.stack(lats, 1)  # B × flips × c × h × w
            shape = tuple(lat.shape[2:])
            texts, rows = [], []  # rows: (local item, text index, t, flip)
            noises = []
            for b, i in enumerate(items):
                for c, cap in enumerate(self._caps(i)):
                    texts.append(cap)
                    for t in self.ts:
                        eps = item_noise(self.seed, self.ids[i], c, t, shape)
                        for f in range(self.n_flips):
                            rows.append((b, len(texts) - 1, t, f))
                            noises.append(eps)
            emb = model.text_embeddings(texts)
            r = torch.tensor(rows, dtype=torch.long)
            return (lat[r[:, 0], r[:, 3]], emb[r[:, 1].to(emb.device)], r[:, 2].to(dev),
                    torch.stack(noises).to(dev, lat.dtype), r)

    def __call__(self, param_sets: Sequence[Mapping[str, Any] | None], indices: Sequence[int] | None = None,
                 desc: str = "training losses") -> list:
        import numpy as np
        import torch

        indices = list(range(len(self.dataset))) if indices is None else [int(i) for i in indices]
        out = [np.zeros((len(indices), self.n_flips), dtype=np.float64) for _ in param_sets]
        per_item = max(1, len(self.ts) * self.n_flips * (1 if self.captions is None else self.captions))
        chunk = max(1, max(self.batch_size, 1024) // per_item)
        starts = range(0, len(indices), chunk)
        with _eval_mode(self.model), torch.inference_mode():
            for start in _progress(starts, self.progress, desc=desc, unit="chunk"):
                items = indices[start:start + chunk]
                lat, emb, t, noise, rows = self._prepare(items)
                local = rows[:, 0].numpy()
                flip = rows[:, 3].numpy()
                for q, params in enumerate(param_sets):
                    vals = []
                    for s in range(0, lat.shape[0], self.batch_size):
                        e = slice(s, s + self.batch_size)
                        vals.append(self.model.denoise_loss(lat[e], emb[e], t[e], noise[e], params=params)
                                    .detach().double().cpu())
                    v = torch.cat(vals).numpy()
                    sums = np.zeros((len(items), self.n_flips))
                    cnts = np.zeros((len(items), self.n_flips))
                    np.add.at(sums, (local, flip), v)
                    np.add.at(cnts, (local, flip), 1.0)
                    out[q][start:start + len(items)] = sums / cnts
        return out


# ---------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------


class Unlearning:
    """Attribution by unlearning (the paper's method). See the module docstring for the formulas.

    ``Unlearning(preset=None, **options)``; options: ``steps``, ``alpha``, ``batch``, ``accumulation``,
    ``timesteps``, ``captions``, ``flip``, ``fisher_samples``, ``n_train``, ``selection``, ``variant``,
    ``fisher_floor``, ``fisher_flips``, ``fisher_batch``, ``per_sample``, ``batch_size``, ``seed``. Without a preset
    the scale and the benchmark's preset hint pick one (:func:`preset_for`: ``tiny`` → ``tiny``, ``small`` →
    ``small``, ``paper`` → ``coco``; hint ``customized`` → ``customized-*``) in :meth:`resolve_config`, which the
    runner calls before the first cell (and :meth:`prepare` calls with the context's scale and hint); ``config``
    always holds the fully resolved options.
    """

    name = "unlearning"
    version = "2"  # 2: the Customized Model benchmark selects its own presets (customized-tiny/-small/customized)
    needs_model = True

    def __init__(self, preset: str | None = None, **options: Any):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            from genattr.harness.errors import did_you_mean

            raise UserError(f"unlearning: unknown option {unknown[0]!r}{did_you_mean(unknown[0], OPTIONS)}")
        self._preset = preset
        self._options = dict(options)
        # validated now (types and ranges), against the given preset or the tiny one; the runner then resolves the
        # preset for its benchmark and scale with resolve_config before the first cell
        self.config = resolve_config(preset or SCALE_PRESET["tiny"], options)
        self._state: dict = {}

    # -- configuration --------------------------------------------------------------------------------------------
    def resolve_config(self, scale: str, preset_hint: str | None = None) -> dict:
        """The full configuration for ``scale`` and a benchmark's ``preset_hint`` (``"customized"`` selects the
        Customized Model presets): the explicit ``preset`` when one was given, else :func:`preset_for`; explicit
        options override the preset's values. Stored in ``self.config`` and returned."""
        preset = self._preset or preset_for(scale, preset_hint)
        self.config = resolve_config(preset, self._options)
        return self.config

    def _resolve_from(self, ctx: AttributionContext) -> dict:
        extra = ctx.extra if isinstance(ctx.extra, dict) else {}
        return self.resolve_config(ctx.scale, extra.get("preset_hint"))

    def _seed(self, ctx: AttributionContext) -> int:
        return int(ctx.seed if self.config["seed"] is None else self.config["seed"])

    # -- query-independent state ----------------------------------------------------------------------------------
    def _keys(self, ctx: AttributionContext):
        cfg, model, data = self.config, ctx.model, ctx.train_set
        seed = self._seed(ctx)
        base = (self.name, self.version, model.fingerprint, data.fingerprint)
        fisher_key = None
        if cfg["variant"] == "newton":
            fisher_key = base + ("fisher", cfg["selection"], cfg["fisher_samples"], cfg["fisher_flips"], seed)
        # the key holds the scoring timesteps themselves (not only their count), the captions scored and the flips:
        # every input that changes the θ0 losses
        from genattr.harness.seeding import strided_timesteps

        ts = strided_timesteps(int(cfg["timesteps"]), int(model.num_train_timesteps))
        loss_key = base + ("theta0-losses", tuple(ts), cfg["captions"], cfg["flip"] != "none", seed)
        return fisher_key, loss_key

    def prepare(self, ctx: AttributionContext) -> None:
        """Compute (or load from ``ctx.cache``) the Fisher diagonal and the θ0 training losses. Memoised per
        (model fingerprint, dataset fingerprint, options): calling it again with the same context is cheap."""
        if ctx.model is None:
            raise UserError("unlearning needs a model (the context has none)")
        cfg = self._resolve_from(ctx)
        fisher_key, loss_key = self._keys(ctx)
        if (fisher_key, loss_key) in self._state:
            return
        from genattr.harness.cache import Cache

        seed = self._seed(ctx)
        fisher = None
        if fisher_key is not None:
            fisher = ctx.cache.tensors(
                "unlearning/fisher", Cache.key(*fisher_key),
                lambda: fisher_diagonal(ctx.model, ctx.train_set, cfg["selection"], cfg["fisher_samples"], seed,
                                        batch=cfg["fisher_batch"], flips=cfg["fisher_flips"],
                                        method=cfg["per_sample"], progress=ctx.progress),
                meta={"key": list(fisher_key)},
            )
        losses = ctx.cache.arrays(
            "unlearning/theta0-losses", Cache.key(*loss_key),
            lambda: {"losses": self._scorer(ctx)([None], desc="θ0 losses")[0],
                     "ids": __import__("numpy").array(list(ctx.train_set.ids), dtype=str)},
            meta={"key": list(loss_key)},
        )["losses"]
        self._state = {(fisher_key, loss_key): (fisher, losses)}  # keep only the latest context's state

    def _scorer(self, ctx: AttributionContext) -> TrainingLosses:
        cfg = self.config
        return TrainingLosses(ctx.model, ctx.train_set, cfg["timesteps"], cfg["captions"], cfg["flip"] != "none",
                              self._seed(ctx), batch_size=cfg["batch_size"], progress=ctx.progress)

    def fisher(self, ctx: AttributionContext) -> dict | None:
        """The (cached) Fisher diagonal for ``ctx`` (None for the ``sgd`` variant)."""
        self.prepare(ctx)
        return self._state[self._keys(ctx)][0]

    def theta0_losses(self, ctx: AttributionContext):
        """The (cached) θ0 losses, ``N × flips`` float64."""
        self.prepare(ctx)
        return self._state[self._keys(ctx)][1]

    # -- per query ------------------------------------------------------------------------------------------------
    def unlearned_weights(self, ctx: AttributionContext, query: Query) -> dict:
        """θ₋ẑ for one query: ``{name: tensor}`` over the selection (the model is left untouched)."""
        self.prepare(ctx)
        cfg = self.config
        n_train = cfg["n_train"] if cfg["n_train"] is not None else len(ctx.train_set)
        return unlearn(ctx.model, query, self.fisher(ctx), selection=cfg["selection"], steps=cfg["steps"],
                       alpha=float(cfg["alpha"]), n_train=int(n_train), batch=cfg["batch"],
                       accumulation=cfg["accumulation"], seed=self._seed(ctx), variant=cfg["variant"],
                       fisher_floor=float(cfg["fisher_floor"]))

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates: Sequence[int] | None = None):
        """Scores ``(len(queries), N)`` (or ``len(candidates)`` columns), higher = more influential. Every query is
        unlearned first; then one walk over the training items evaluates each prepared batch under every query's
        unlearned weights."""
        import numpy as np

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
                  for q in _progress(queries, ctx.progress, desc="unlearning", unit="query")]
        base = self.theta0_losses(ctx)[idx]
        losses = self._scorer(ctx)(thetas, idx.tolist(), desc="scoring")
        flip = self.config["flip"]
        out = np.zeros((len(queries), len(idx)), dtype=np.float64)
        for q, lq in enumerate(losses):
            tau = lq - base
            out[q] = tau[:, 0] if flip == "none" else (tau.max(1) if flip == "max" else tau.mean(1))
        return out
