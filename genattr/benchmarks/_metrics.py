"""Benchmark metric specs resolved through the metric registry: one path for every built-in benchmark (the
Customized Model's retrieval metrics, the counterfactual metrics of leave-K-out, LDS's datamodeling metrics, teacher
agreement)."""

from __future__ import annotations

from genattr.harness.errors import UserError


def resolve_metric_specs(bench: str, specs, kind: str, takes: str, prepare=None) -> list:
    """``[(column, metric object, info)]`` for a benchmark's ``metrics`` option through the metric registry: each
    spec a registered name or ``{name = ..., options}``; the metric's registered ``kind`` must be ``kind`` (or
    unset; ``takes`` says what such metrics are called with); ``prepare(entry, spec)`` may add options first.
    ``info`` holds the metric name, display name, ``higher_is_better`` and unit."""
    import genattr
    from genattr.harness.manager import registry

    if isinstance(specs, (str, dict)):
        specs = [specs]
    out: list = []
    seen: dict[str, str] = {}
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if not isinstance(spec.get("name"), str):
            raise UserError(f"{bench}: each metric is a name or {{name = ..., options}}, got {spec!r}")
        name = spec.pop("name")
        entry = registry("metrics").get(name)
        if entry.meta.get("kind") not in (None, kind):
            raise UserError(f"{bench}: metric {name!r} is a {entry.meta.get('kind')} metric; this benchmark takes "
                            f"{takes}")
        if prepare is not None:
            prepare(entry, spec)
        try:
            metric = genattr.get_metric(name, **spec)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{bench}: bad options for metric {name!r}: {str(exc).splitlines()[0]}") from None
        column = str(getattr(metric, "column", None) or name)
        if column in seen:
            raise UserError(f"{bench}: metrics {seen[column]!r} and {name!r} both report column {column!r}")
        seen[column] = name
        hib = getattr(metric, "higher_is_better", entry.meta.get("higher_is_better"))
        out.append((column, metric, {"metric": name, "display": str(getattr(metric, "display", None)
                                                                          or entry.meta.get("display") or column),
                                     "higher_is_better": None if hib is None else bool(hib),
                                     "unit": entry.meta.get("unit")}))
    return out
