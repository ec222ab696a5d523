"""Presets, defaults and validation of the unlearning method's options (see the package docstring for what each
preset is and docs/methods/unlearning.md for the tables)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from genattr.harness.api import PARAMETER_SELECTIONS
from genattr.harness.errors import UserError

from .._presets import check_seed

#: α of the ``small`` preset, calibrated on the leave-K-out digits model with calibration queries of its own (fresh
#: seeds, never the benchmark's queries) by ``tests/perf/calibrate_leave_k_out.py``; see docs/methods/unlearning.md.
ALPHA_SMALL = 3e-3

#: α of the built-in Customized Model presets, calibrated on the benchmark's training concepts (never the test
#: concepts) with ``tests/perf/calibrate_customized.py``; see docs/methods/unlearning.md for the table.
ALPHA_CUSTOMIZED_SMALL = 1e-2

#: α of the ``customized-small`` preset on the ``diffusers`` model's built-in recipe (the latent miniature), chosen on
#: that benchmark's training concepts over three base models × two method seeds by ``tests/perf/calibrate_baselines.py``
#: (``results/calibration/unlearning-alpha-latent-small.jsonl``); see docs/methods/unlearning.md.
ALPHA_CUSTOMIZED_LATENT = 3e-3

#: The paper's values (``coco``, ``customized``) and the scaled values of the built-in scales (``tiny``, ``small``).
PRESETS: dict[str, dict[str, Any]] = {
    "coco": dict(
        steps=1, alpha=0.01, batch=80, accumulation=625, timesteps=20, captions=None, flip="max",
        fisher_samples=591_435, n_train=None, fisher_flips=True,
    ),
    "customized": dict(
        steps=100, alpha=0.1, batch=16, accumulation=10, timesteps=10, captions=None, flip="max",
        fisher_samples=1_000_000, n_train=400_000_000, fisher_flips=True, fisher_model="base",
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
        fisher_samples=256, n_train=None, fisher_flips=False, fisher_model="base",
    ),
    # prescreen chosen from the measured table (docs/performance.md): on this miniature scoring is 50 of 62 s per
    # query; the exact τ at 2 of the 5 timesteps, then all 5 on the top 100, took 0.63× the time with top-10 overlap
    # 0.90 and mean |ΔAP| 0.004 against exhaustive scoring (8 queries of 2 test concepts)
    "customized-small": dict(
        steps=5, alpha=ALPHA_CUSTOMIZED_SMALL, batch=64, accumulation=4, timesteps=5, captions=1, flip="none",
        fisher_samples=1024, n_train=None, fisher_flips=False, fisher_model="base",
        prescreen="coarse", coarse_timesteps=2, refine=100,
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

#: Values calibrated for one model's built-in recipe, layered over a preset the scale and hint chose for a benchmark
#: that scores with that model (``resolve_config(…, model=…)``): ``{(preset, registered model name): {option: value}}``.
#: Order of resolution: ``DEFAULTS`` → the preset → these → explicit options. An explicit ``preset`` gets its own
#: values only. The ``tiny-t2i`` miniature, where ``customized-small`` was calibrated, has no entry.
MODEL_VALUES: dict[tuple[str, str], dict[str, Any]] = {
    ("customized-small", "diffusers"): {"alpha": ALPHA_CUSTOMIZED_LATENT},
}

#: Options shared by every preset (each overridable).
DEFAULTS: dict[str, Any] = dict(
    selection="cross-attn-kv",  # weights updated (and whose Fisher is estimated)
    variant="newton",  # "newton" (Fisher-preconditioned) or "sgd" (plain ascent, the ablation)
    fisher_floor=1e-6,  # F is clamped from below at fisher_floor × mean(F)
    fisher_batch=32,  # per-sample gradients taken together (vmap width)
    fisher_model="context",  # "context": Fisher of the context's model; "base": of ctx.extra["base_model"]
    per_sample="vmap",  # "vmap" (torch.func) or "loop" (one backward per sample; same values)
    batch_size=256,  # UNet evaluations per forward pass when scoring training items
    query_timesteps="random",  # timesteps of the query draws: "random" (permutations) or "stratified"
    prescreen="none",  # "none" (exhaustive), "linear" (g_iᵀΔθ) or "coarse" (few timesteps), then exact on the head
    refine=100,  # M: items re-scored exactly after a prescreen
    coarse_timesteps=2,  # timesteps of the coarse prescreen (a strided subset of the scoring timesteps)
    prescreen_order=2,  # linear prescreen: 1 (g_zᵀΔθ) or 2 (plus the Gauss–Newton term, Hutchinson-estimated)
    prescreen_probes=8,  # Hutchinson probes of the second-order term
    prescreen_projection="identity",  # linear prescreen: "identity", "rademacher" or "gaussian"
    prescreen_dim=4096,  # its projection dimension (random projections only)
    prescreen_dtype="float32",  # dtype of its stored gradients: "float32" or "float16"
    seed=None,  # seed of every draw (Fisher, query draws, scoring noise); None: the context's seed
)

#: Step-rule options (not in the paper). They enter the configuration only when given, so the configuration — and
#: every cache and result keyed on it — of the paper's rule is what it was before they existed; absent means
#: ``step_rule="fixed"`` (α/N). ``"fisher-norm"``: each step of Fisher length ``step_norm``; ``"loss-target"``: each
#: step sized so the linearised query loss rises by ``loss_target^(1/steps)`` (see ``update.step_scale``).
STEP_DEFAULTS: dict[str, Any] = dict(step_rule="fixed", step_norm=5e-5, loss_target=2.0)  # calibrated: docs/methods

FLIPS = ("max", "mean", "none")
VARIANTS = ("newton", "sgd")
PRESCREENS = ("none", "linear", "coarse")
FISHER_MODELS = ("context", "base")
QUERY_TIMESTEPS = ("random", "stratified")
STEP_RULES = ("fixed", "fisher-norm", "loss-target")
OPTIONS = tuple(DEFAULTS) + tuple(PRESETS["coco"]) + tuple(STEP_DEFAULTS) + ("preset",)
# fisher_flips: Fisher samples use random horizontal flips (as the paper's training did); set per preset.


def preset_for(scale: str, preset_hint: str | None = None) -> str:
    """The preset chosen when none is given: the hint's own for the scale (:data:`HINT_PRESET`), else the scale's."""
    table = HINT_PRESET.get(preset_hint or "", {})
    if scale in table:
        return table[scale]
    if scale not in SCALE_PRESET:
        raise UserError(f"unlearning: no preset for scale {scale!r}; pass preset=…")
    return SCALE_PRESET[scale]


def _choice(cfg: Mapping[str, Any], key: str, allowed) -> None:
    if cfg[key] not in allowed:
        raise UserError(f"unlearning: {key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")


def check_config(cfg: Mapping[str, Any]) -> None:
    """One-line :class:`UserError` for the first bad option."""
    def positive_int(k):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"unlearning: option {k!r} must be a positive integer, got {v!r}")

    for k in ("batch", "accumulation", "timesteps", "fisher_samples", "fisher_batch", "batch_size", "refine",
              "prescreen_dim", "prescreen_probes"):
        positive_int(k)
    if isinstance(cfg["steps"], bool) or not isinstance(cfg["steps"], int) or cfg["steps"] < 0:
        raise UserError(f"unlearning: option 'steps' must be a non-negative integer, got {cfg['steps']!r}")
    for k in ("captions", "n_train"):
        if cfg[k] is not None:
            positive_int(k)
    check_seed("unlearning", cfg["seed"])
    for k in ("alpha", "fisher_floor") + (("step_norm",) if "step_norm" in cfg else ()):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserError(f"unlearning: option {k!r} must be a non-negative number, got {v!r}")
    if not isinstance(cfg["fisher_flips"], bool):
        raise UserError(f"unlearning: option 'fisher_flips' must be true or false, got {cfg['fisher_flips']!r}")
    _choice(cfg, "selection", PARAMETER_SELECTIONS)
    _choice(cfg, "variant", VARIANTS)
    _choice(cfg, "flip", FLIPS)
    _choice(cfg, "per_sample", ("vmap", "loop"))
    _choice(cfg, "prescreen", PRESCREENS)
    _choice(cfg, "fisher_model", FISHER_MODELS)
    _choice(cfg, "query_timesteps", QUERY_TIMESTEPS)
    if "step_rule" in cfg:
        _choice(cfg, "step_rule", STEP_RULES)
    lt = cfg.get("loss_target", STEP_DEFAULTS["loss_target"])
    if isinstance(lt, bool) or not isinstance(lt, (int, float)) or not math.isfinite(lt) or lt <= 1:
        raise UserError(f"unlearning: option 'loss_target' must be a number above 1 (the aimed loss ratio), "
                        f"got {lt!r}")
    _choice(cfg, "prescreen_projection", ("identity", "rademacher", "gaussian"))
    _choice(cfg, "prescreen_dtype", ("float32", "float16"))
    if cfg["prescreen_order"] not in (1, 2) or isinstance(cfg["prescreen_order"], bool):
        raise UserError(f"unlearning: prescreen_order must be 1 or 2, got {cfg['prescreen_order']!r}")
    coarse = cfg["coarse_timesteps"]
    if isinstance(coarse, (list, tuple)):
        if not coarse or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in coarse):
            raise UserError(f"unlearning: coarse_timesteps must be a positive count or a list of timesteps, "
                            f"got {coarse!r}")
    elif isinstance(coarse, bool) or not isinstance(coarse, int) or coarse < 1:
        raise UserError(f"unlearning: coarse_timesteps must be a positive count or a list of timesteps, "
                        f"got {coarse!r}")


def resolve_config(preset: str, overrides: Mapping[str, Any], model: str | None = None) -> dict:
    """The full configuration: ``DEFAULTS``, then the preset's values, then the values calibrated for ``model`` on that
    preset (:data:`MODEL_VALUES`, when ``model`` is given), then ``overrides``."""
    from genattr.presets import resolve

    overrides = {**MODEL_VALUES.get((preset, model or ""), {}), **overrides}
    cfg = resolve("unlearning", preset, overrides, presets=PRESETS, common=DEFAULTS, optional=STEP_DEFAULTS,
                  what="preset")
    if isinstance(cfg["coarse_timesteps"], tuple):
        cfg["coarse_timesteps"] = list(cfg["coarse_timesteps"])
    cfg["preset"] = preset
    check_config(cfg)
    return cfg


def step_options(cfg: Mapping[str, Any]) -> dict:
    """``step_rule``, ``step_norm`` and ``loss_target`` of a configuration, with :data:`STEP_DEFAULTS` for those
    not given."""
    return {k: cfg.get(k, v) for k, v in STEP_DEFAULTS.items()}
