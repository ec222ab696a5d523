"""Configuration of the Customized Model benchmark: per-scale defaults, validation, the metric columns."""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

from genattr.harness.api import SCALES
from genattr.harness.errors import UserError, did_you_mean

SPLITS = {"object": "object-centric", "style": "artist-style"}
SPLIT_ORDER = ("object-centric", "artist-style")
POOLS = ("own", "all")

#: The retrieval metrics reported (resolved through the metric registry): Recall@10 (the headline), @5 and @100 as
#: AbC reports, and AP (mean over queries = mAP). Each metric's ``column`` names its result column.
DEFAULT_METRICS: list = [{"name": "recall-at-k", "k": 10}, {"name": "recall-at-k", "k": 5},
                         {"name": "recall-at-k", "k": 100}, {"name": "average-precision"}]

#: Per-scale defaults (every key can be overridden in the config).
#:
#: * ``n_object`` / ``n_style`` — test concepts per split; ``exemplars_per_style`` — (min, max) exemplars of a style
#:   concept (objects have one); ``queries_per_concept``; ``sample_steps`` — DDPM steps when synthesizing queries;
#:   ``pool_size`` — base training items in the pool (a seeded subset of the base model's training set, as AbC's
#:   LAION subset is a subset of Stable Diffusion's training data; ``None`` = all of it);
#:   ``n_train_object`` / ``n_train_style`` / ``train_queries_per_concept`` — the training concepts for methods that
#:   learn.
#: * ``paper`` (the public AbC data; ``data_root`` required): ``models_per_split`` customized models per split
#:   (20 models × 20 queries in the unlearning paper: 10 object-centric + 10 artist-style), ``queries_per_model``,
#:   ``pool_size`` = 100,000 LAION images, ``resolution`` 512; ``tasks`` — ``auto`` (the paper's task file when
#:   ``data_root`` holds it, else ``sampled``), ``official``, ``sampled`` or a path to a task file
#:   (:func:`~.abc_data.resolve_tasks`; the resolved configuration holds ``official``, ``sampled`` or the path).
SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        n_object=2, n_style=2, exemplars_per_style=(3, 4), queries_per_concept=2, sample_steps=20, pool_size=None,
        n_train_object=2, n_train_style=2, train_queries_per_concept=2,
    ),
    "small": dict(
        n_object=3, n_style=3, exemplars_per_style=(4, 8), queries_per_concept=8, sample_steps=50, pool_size=None,
        n_train_object=3, n_train_style=3, train_queries_per_concept=4,
    ),
    "paper": dict(
        models_per_split=10, queries_per_model=20, pool_size=100_000, resolution=512, sample_steps=50, tasks="auto",
        abc_subsets={"object-centric": ["observed_imagenet", "unobserved_imagenet"],
                     "artist-style": ["bamfg", "artchive"]},
    ),
}

COMMON_DEFAULTS: dict[str, Any] = dict(
    dataset="shapes",  # the base model's training data (a registered dataset); its items form the pool
    dataset_config=None,  # keyword arguments of the dataset (on top of the model recipe's)
    concepts=None,  # the registered dataset whose concepts(...) gives the concepts; None: the dataset, else shapes
    model=None,  # the registered model of the base model; None: DEFAULT_MODEL of the scale
    model_config=None,  # overrides of the recipe's model configuration
    train_config=None,  # overrides of the recipe's training configuration
    metrics=None,  # retrieval metrics (registered names or {"name": ..., options}); None: DEFAULT_METRICS
    data_root=None,  # folder holding dataset/ (the public AbC layout); None: the built-in miniature
    weights_dir=None,  # Custom-Diffusion deltas, one per customized model (AbC data only)
    base_model="CompVis/stable-diffusion-v1-4",  # path or hub id of the base model of the deltas (AbC data only)
    pools=["own", "all"],  # pool variants reported ("own" is the headline)
    verify="warn",  # warn | error | off
    customize=None,  # overrides of the model recipe's customization plan (built-in data only)
    seed_offset=0,  # mixed into every seed of the benchmark's data (concepts, queries); models use the run seed
    model_seeds=None,  # several base-model training seeds pooled in one run (genattr.benchmarks._seeds)
)

#: The base model when ``model`` is not given, by scale: the latent miniature (Custom Diffusion K/V + token) at
#: ``tiny``; at ``small`` the pixel-space ``tiny-t2i`` (whole-UNet customization) the main job's budget was sized
#: for (the latent miniature at ``small``: ``model="diffusers"``, docs/results/2026-12-latent-testbed.md); Stable
#: Diffusion for the AbC data.
DEFAULT_MODEL = {"tiny": "diffusers", "small": "tiny-t2i", "paper": "diffusers"}

VERIFY_MODES = ("warn", "error", "off")

#: Options that must be non-negative integers (counts) and positive integers.
_COUNTS = ("n_object", "n_style", "n_train_object", "n_train_style", "seed_offset")
_POSITIVE = ("queries_per_concept", "train_queries_per_concept", "sample_steps", "models_per_split",
             "queries_per_model", "resolution")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def benchmark_config(config: Mapping[str, Any]) -> dict:
    """The resolved configuration (scale defaults, then ``config``), validated: unknown keys, types and ranges are
    one-line :class:`UserError` s."""
    cfg = dict(config)
    scale = cfg.pop("scale", None) or "tiny"
    if scale not in SCALES:
        raise UserError(f"customized-model: unknown scale {scale!r}{did_you_mean(str(scale), SCALES)}; "
                        f"scales: {', '.join(SCALES)}")
    from genattr.presets import check_names, resolve

    # the scales' option sets differ (the AbC data's options exist only at paper), so names are checked against all
    check_names("customized-model", cfg, set(COMMON_DEFAULTS).union(*(set(d) for d in SCALE_DEFAULTS.values())))
    known_here = set(COMMON_DEFAULTS) | set(SCALE_DEFAULTS[scale])
    out = {"scale": scale, **resolve("customized-model", scale, {k: v for k, v in cfg.items() if k in known_here},
                                     presets=SCALE_DEFAULTS, common=COMMON_DEFAULTS),
           **{k: v for k, v in cfg.items() if k not in known_here}}
    for k in _COUNTS:
        if k in out and not (_int(out[k]) and out[k] >= 0):
            raise UserError(f"customized-model: {k} must be a non-negative integer, got {out[k]!r}")
    for k in _POSITIVE:
        if k in out and not (_int(out[k]) and out[k] >= 1):
            raise UserError(f"customized-model: {k} must be a positive integer, got {out[k]!r}")
    if out.get("pool_size") is not None and not (_int(out["pool_size"]) and out["pool_size"] >= 1):
        raise UserError(f"customized-model: pool_size must be a positive integer or null, got {out['pool_size']!r}")
    if "exemplars_per_style" in out:
        e = out["exemplars_per_style"]
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and all(_int(v) and v >= 1 for v in e) and e[0] <= e[1]):
            raise UserError(f"customized-model: exemplars_per_style must be [min, max] with 1 <= min <= max, got {e!r}")
        out["exemplars_per_style"] = tuple(e)
    if out["model"] is None:
        out["model"] = DEFAULT_MODEL[scale]
    for k in ("dataset", "model"):
        if not isinstance(out[k], str) or not out[k]:
            raise UserError(f"customized-model: {k} must be a registered {k} name, got {out[k]!r}")
    for k in ("dataset_config", "model_config", "train_config", "customize"):
        if out[k] is not None and not isinstance(out[k], Mapping):
            raise UserError(f"customized-model: {k} must be a table of options, got {out[k]!r}")
    from genattr.harness.models import check_plan

    check_plan("customized-model", "train_config", out["train_config"])
    check_plan("customized-model", "customize", out["customize"])
    if out["verify"] not in VERIFY_MODES:
        raise UserError(f"customized-model: verify must be one of {', '.join(VERIFY_MODES)}, got {out['verify']!r}")
    pools = list(out["pools"]) if isinstance(out["pools"], (list, tuple)) else [out["pools"]]
    if not pools or any(p not in POOLS for p in pools):
        raise UserError(f"customized-model: pools must be a non-empty subset of {list(POOLS)}, got {out['pools']!r}")
    out["pools"] = [p for p in POOLS if p in pools]
    out["metrics"] = metric_specs(out["metrics"])
    from .._seeds import check_model_seeds

    out["model_seeds"] = check_model_seeds(out["model_seeds"], "customized-model")
    if scale == "paper" and not out["data_root"]:
        raise UserError("customized-model: scale 'paper' needs data_root=<folder holding dataset/> "
                        "(the public AbC benchmark, see docs/benchmarks/customized-model.md)")
    if out["data_root"] and "tasks" in out:
        from .abc_data import resolve_tasks

        out["tasks"] = resolve_tasks(out["data_root"], out["tasks"])  # auto -> official | sampled: hashed as run
    return out


def metric_specs(specs) -> list[dict]:
    """``[{"name": registered metric, **options}]`` from the ``metrics`` option (names or tables)."""
    if specs is None:
        return copy.deepcopy(DEFAULT_METRICS)
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    out = []
    for s in specs:
        if isinstance(s, str):
            out.append({"name": s})
        elif isinstance(s, Mapping) and isinstance(s.get("name"), str):
            out.append(dict(s))
        else:
            raise UserError(f"metrics: each entry must be a metric name or {{name = ..., options}}, got {s!r}")
    if not out:
        raise UserError("metrics: give at least one metric")
    return out


def pool_column(column: str, pool: str) -> str:
    """The result column of a metric on a pool variant: ``own`` is the headline (no suffix), others ``/pool``."""
    return column if pool == "own" else f"{column}/{pool}"


def metric_columns(pools: Sequence[str], columns: Sequence[str] | None = None) -> list[str]:
    """Every result column: each metric column (default: those of :data:`DEFAULT_METRICS`) for each pool variant."""
    if columns is None:
        columns = [f"recall@{m['k']}" if m["name"] == "recall-at-k" else "ap" for m in DEFAULT_METRICS]
    return [pool_column(c, p) for p in pools for c in columns]


def mean_se(values: Sequence[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "n": n}
