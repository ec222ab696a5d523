"""Built-in metrics: retrieval (Recall@K, AP) and counterfactual (ΔL, ΔG)."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.plugins.metrics"


@hookimpl
def register_metrics(register):
    pass
