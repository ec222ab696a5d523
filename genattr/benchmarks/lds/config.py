"""The LDS benchmark's configuration: name and version, the scale presets, the options every scale shares, the
metric columns (:func:`resolve_metrics`) and the validation of a configuration (:func:`_validate`)."""

from __future__ import annotations

from typing import Any

from genattr.harness.errors import UserError

from .._counterfactual import RETRAIN_MODES, theta0
from .subsets import subset_size

NAME = "lds"
VERSION = "1"

#: D-TRAK's LDS set-up: 64 subsets of half the training set, 3 training seeds per subset.
PAPER_SUBSETS, PAPER_BETA, PAPER_SEEDS = 64, 0.5, 3

SCALES: dict[str, dict] = {
    # CI: a handful of subsets, seconds of training each
    "tiny": theta0("tiny", subsets=6, beta=0.5, train_seeds=1, ceiling=False, num_queries=4, num_real_queries=0,
                   loss_stride=5),
    "small": theta0("small", subsets=32, beta=0.5, train_seeds=1, ceiling=True, num_queries=50, num_real_queries=0,
                    loss_stride=5),
    "paper": theta0("paper", subsets=PAPER_SUBSETS, beta=PAPER_BETA, train_seeds=PAPER_SEEDS, ceiling=True,
                    num_queries=110, num_real_queries=0, loss_stride=5),
}

COMMON = {"train_seed": None, "guidance_scale": None, "retrain": "independent", "metrics": None, "group": "method"}

#: The datamodeling metrics reported when ``metrics`` is not given.
DEFAULT_METRICS = ["lds"]

GROUPS = ("method", "query")

#: Rows :meth:`LDSBenchmark.summarize` adds when the results carry the ceiling.
CEILING_ROW, BOUND_ROW = "ceiling: seed vs seed (ρ)", "ceiling: bound √ρ"

#: The metric kind this benchmark calls: ``metric(scores, subsets, outputs) -> float``.
METRIC_KIND = "datamodeling"


def resolve_metrics(cfg: dict) -> list[tuple[str, Any, dict]]:
    """``[(column, metric object, info)]`` for the ``metrics`` option through the metric registry (datamodeling
    metrics, called as ``metric(scores, subsets, outputs)``; the column is the registered name)."""
    from .._counterfactual import resolve_metric_specs

    return resolve_metric_specs("lds", cfg.get("metrics") or DEFAULT_METRICS, METRIC_KIND,
                                f"{METRIC_KIND} metrics (scores, subsets, outputs)")


def _validate(cfg: dict) -> None:
    """Types and ranges of the options (one line per mistake)."""
    from genattr.harness.models import check_plan

    check_plan("lds", "train_config", cfg["train_config"])

    def integer(k, low):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"lds: {k} must be an integer ≥ {low}, got {v!r}")

    for k in ("num_queries", "query_steps", "loss_stride", "train_seeds"):
        integer(k, 1)
    integer("subsets", 3)
    integer("num_real_queries", 0)
    if cfg["n"] is not None:
        integer("n", 2)
    b = cfg["beta"]
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < float(b) < 1:
        raise UserError(f"lds: beta must be a fraction in (0, 1), got {b!r}")
    if cfg["n"] is not None:
        subset_size(int(cfg["n"]), float(b))
    if not isinstance(cfg["ceiling"], bool):
        raise UserError(f"lds: ceiling must be true or false, got {cfg['ceiling']!r}")
    for k in ("dataset", "model"):
        if not isinstance(cfg[k], str) or not cfg[k]:
            raise UserError(f"lds: {k} must be a registered {k} name, got {cfg[k]!r}")
    from genattr.harness.manager import registry

    registry("datasets").get(cfg["dataset"])
    registry("models").get(cfg["model"])
    if cfg["retrain"] not in RETRAIN_MODES:
        raise UserError(f"lds: unknown retrain mode {cfg['retrain']!r}; choose from {', '.join(RETRAIN_MODES)}")
    if cfg["group"] not in GROUPS:
        raise UserError(f"lds: group must be one of {', '.join(GROUPS)}, got {cfg['group']!r}")
    for k in ("dataset_config", "model_config", "train_config"):
        if cfg[k] is not None and not isinstance(cfg[k], dict):
            raise UserError(f"lds: {k} must be a table of options, got {cfg[k]!r}")
