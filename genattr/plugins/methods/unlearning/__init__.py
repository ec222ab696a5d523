"""Attribution by unlearning the synthesized image (Wang, Hertzmann, Efros, Zhu, Zhang, NeurIPS 2024).

The method "unlearns" a synthesized query ẑ from the model with Fisher-preconditioned Newton steps on a weight
subset (by default the cross-attention key/value projections) and scores every training item by how much its
loss rises:

* Objective (EWC form): ``L_unlearn(θ) = −L(ẑ, θ) + (N/2)(θ − θ0)ᵀ F (θ − θ0)``, ``F`` the diagonal Fisher.
* Update, ``S`` times (Hessian ≈ N·F): **θ ← θ + (α / N) · F⁻¹ ∇θ L(ẑ, θ)**; the query gradient averages
  ``batch × accumulation`` draws whose timesteps are drawn without replacement from ``0 … T_train − 1`` (a fresh
  permutation whenever more draws are needed) with fresh noise, all seeded from (seed, query id, step, draw).
  Variant ``sgd`` (the paper's ablation): plain ascent ``θ ← θ + α ∇θ L(ẑ, θ)``, no Fisher. Option
  ``query_timesteps="stratified"`` (not in the paper): one seeded timestep per equal stratum of ``0 … T_train``
  instead of the permutations.
* Step rule (option ``step_rule``; not in the paper except ``"fixed"``, the default): ``"fixed"`` is the paper's
  ``α / N`` for every query; ``"fisher-norm"`` gives each step the same Fisher length ``√(Δθᵀ F Δθ) = step_norm``
  whatever the query's gradient; ``"loss-target"`` sizes each step so that its linearised loss change raises the
  query's loss on the step's draws by ``loss_target^(1/steps)`` (``update.step_scale``). Both adapt the step to the
  query without test data; the study is in docs/methods/unlearning.md.
* Fisher: mean of squared per-sample gradients (``torch.func.vmap`` over ``torch.func.grad``) of the noise loss,
  one random training item, caption, timestep, noise and horizontal flip per sample, each drawn from
  (seed, sample index) — never from a batch position. ``fisher_model="base"``: estimated on the base model the
  benchmark offers (``ctx.extra["base_model"]``, the model the customized models derive from) over the pool
  (``ctx.train_set``), so it is computed once and reused by every customized model, as the paper's code does
  (one Fisher of SD v1.4 over its LAION subset); ``"context"``: on the context's own model. Without a base model in
  the context, ``"base"`` warns and uses the context's model.
* Zero-Fisher guard (not in the paper, whose code divides by ``fisher * N`` undamped): ``F`` is clamped from below
  at ``fisher_floor × mean(F)`` (mean over every selected entry) so an entry the Fisher samples never touched
  cannot produce an infinite step.
* Score: ``τ(ẑ, z) = L(z, θ₋ẑ) − L(z, θ0)``; ``L(z, θ)`` averages the noise loss over ``timesteps`` strided
  timesteps (``seeding.strided_timesteps``) and the item's first ``captions`` captions, with the noise of
  ``seeding.item_noise(seed, item id, caption index, t, shape)`` — identical before and after unlearning and for
  every batch size. τ is computed for the image and its horizontal flip and combined by ``flip`` (``max``, as in the
  paper; ``mean``; or ``none`` for the unflipped image only). Higher = more influential.
* Prescreen + exact refinement (not in the paper, whose scoring is exhaustive; ``prescreen="none"`` is exactly
  that): ``prescreen="linear"`` ranks the pool by the Taylor expansion of τ in Δθ — the first-order term
  ``g_zᵀΔθ`` (per-item loss gradients at θ0 with the scoring settings, from the shared gradient store, optionally
  projected — ``prescreen_projection``/``prescreen_dim`` — and stored as ``prescreen_dtype``) plus, with
  ``prescreen_order=2`` (default), the Gauss–Newton term estimated with ``prescreen_probes`` Hutchinson probes
  (the calibrated steps are far from linear: the first-order term alone misses the exact head);
  ``prescreen="coarse"`` by the exact τ at ``coarse_timesteps`` of the scoring timesteps. The top ``refine`` items then get the exact τ and rank
  above all others, which keep their prescreen order (:mod:`.prescreen`).

θ0 training losses and the Fisher do not depend on the query: :meth:`Unlearning.prepare` computes them once and
caches them in ``ctx.cache`` (keyed by the model and dataset fingerprints and every option that changes them).
The caller's model is never modified: unlearned weights are passed to ``model.denoise_loss(params=…)``.

Presets (option ``preset``; default: the context's scale, ``paper`` → ``coco``):

* ``coco`` — the paper's MSCOCO values: 1 step, α = 0.01, 80 × 625 draws (50,000), T = 20, all captions, Fisher over
  591,435 samples (5 epochs of COCO).
* ``customized`` — the paper's Customized-Model values: 100 steps, α = 0.1, 16 × 10 draws, T = 10, Fisher over
  1,000,000 samples of the base model (``fisher_model="base"``) and N = 400,000,000 in the step (the paper used
  LAION-400M's size, not the pool's).
* ``tiny`` / ``small`` — **scaled deviations** for the built-in models of a few hundred thousand parameters
  trained on ≈ 2 k images: several small Newton steps (5; α = 1e-4 for ``tiny``, which tests plumbing; α = 3e-3 for
  ``small``, calibrated on calibration queries of the leave-K-out digits model, never the benchmark's — at 1e-4 the
  step did not raise the query's own loss); fewer query draws (128 / 512 instead of 50,000), fewer scoring
  timesteps (5) and one caption per item; no flips (``flip="none"``, no flipped Fisher samples) because the built-in
  recipes train without random flips (their captions are not flip-invariant) — so a query's scoring pass costs
  N × 5 UNet evaluations; Fisher over 256 / 1024 samples.
* ``customized-tiny`` / ``customized-small`` — the same for the built-in Customized Model miniature, whose
  fine-tuned (near-memorised) models need α = 1e-2 (calibrated on its training concepts, never the test concepts),
  with 256 draws per step and the Fisher of the base model (``fisher_model="base"``, see
  docs/methods/unlearning.md for the tiny check). The customized-model benchmark selects them (its preset hint
  ``customized``, :data:`HINT_PRESET`), as the paper used other values for that protocol.
* Per-model values (:data:`MODEL_VALUES`): a benchmark names the model it scores with (``preset_model``), and values
  calibrated for that model's built-in recipe are layered over the chosen preset — on the ``diffusers`` model (the
  latent miniature) ``customized-small`` takes α = 3e-3, chosen on its own training concepts
  (:data:`ALPHA_CUSTOMIZED_LATENT`). Explicit options override them; an explicit ``preset`` does not get them.

Every value can be overridden (calibrate ``alpha`` and ``steps`` on training concepts or calibration queries).

Cost in UNet evaluations (counted in :attr:`Unlearning.stats`): Fisher — ``fisher_samples`` per-sample gradients,
once; θ0 — N × T × captions × (2 with flips) forward passes, once; per query — ``steps × batch × accumulation``
gradient evaluations plus the same N × T × captions × (2) forward passes; with a prescreen the latter become
``refine`` × T × captions × (2) plus, for ``coarse``, N × ``coarse_timesteps`` × captions × (2), or, for ``linear``,
one N × T × captions × (2) per-sample-gradient pass per (model, pool) shared by every query (see
docs/methods/unlearning.md and docs/performance.md).

Modules: :mod:`.config` (presets, options), :mod:`.update` (query draws, gradient, Newton steps),
:mod:`.fisher` (Fisher diagonal), :mod:`.losses` (the scoring path), :mod:`.prescreen`, :mod:`.method`.
"""

from .config import (  # noqa: F401
    ALPHA_CUSTOMIZED_LATENT,
    ALPHA_CUSTOMIZED_SMALL,
    ALPHA_SMALL,
    DEFAULTS,
    FISHER_MODELS,
    FLIPS,
    HINT_PRESET,
    MODEL_VALUES,
    OPTIONS,
    PRESCREENS,
    PRESETS,
    QUERY_TIMESTEPS,
    SCALE_PRESET,
    VARIANTS,
    check_config,
    preset_for,
    resolve_config,
)
from .fisher import clamp_fisher, fisher_diagonal, fisher_draws, per_sample_gradients  # noqa: F401
from .losses import TrainingLosses, scoring_timesteps  # noqa: F401
from .method import STAT_KEYS, Unlearning  # noqa: F401
from .prescreen import (  # noqa: F401
    coarse_subset,
    combine_flips,
    heads,
    linear_scores,
    linear_spec,
    merge_head,
    rows_per_item,
)
from .update import _device_of, _eval_mode, query_draws, query_gradient, unlearn  # noqa: F401

_check_config = check_config  # the former private name
