"""Built-in executors: ``local`` (in process) and ``ray``."""

from __future__ import annotations

from genattr import hookimpl


class LocalExecutor:
    """Runs tasks one after another in this process."""

    name = "local"
    version = "1"

    def map(self, fn, tasks):
        for task in tasks:
            yield task, fn(task)


@hookimpl
def register_executors(register):
    register("local", LocalExecutor, version=LocalExecutor.version, description=LocalExecutor.__doc__.strip())
