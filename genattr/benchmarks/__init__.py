"""Built-in benchmarks: the Customized Model benchmark and the leave-K-out counterfactual."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.benchmarks"


@hookimpl
def register_benchmarks(register):
    pass
