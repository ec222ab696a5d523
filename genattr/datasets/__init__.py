"""Built-in datasets: digits and shapes (no download), mscoco and abc (real data from local paths)."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.datasets"


@hookimpl
def register_datasets(register):
    pass
