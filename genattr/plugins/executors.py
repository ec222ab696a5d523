"""Built-in executors: ``local`` (in process) and ``ray`` (Ray tasks; the ``genattr[ray]`` extra).

An executor's ``map(fn, tasks)`` calls the module-level ``fn(task)`` for every JSON-able task and yields
``(task, result)`` pairs as they finish. Configure one with ``--set EXECUTOR.key=value`` (or an ``[EXECUTOR]`` table
in the run's TOML file), e.g. ``--executor ray --set ray.address=auto``. Ray is imported only when the ``ray``
executor is created.
"""

from __future__ import annotations

from genattr import hookimpl
from genattr.harness.errors import UserError


class LocalExecutor:
    """Runs tasks one after another in this process (rows are written as each cell finishes)."""

    name = "local"
    version = "1"
    in_process = True

    def map(self, fn, tasks):
        for task in tasks:
            yield task, fn(task)


class RayExecutor:
    """Runs each task as a Ray task (one CPU, and one GPU per task when the cluster has GPUs); results come back
    to the driver as they finish.

    ``address``: a cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local Ray instance (with
    ``num_cpus`` / ``num_gpus`` when given) — or joins ``RAY_ADDRESS`` when that is set. ``cpus_per_task`` and
    ``gpus_per_task`` are the resource requests (``gpus_per_task`` None: 1 when the cluster has a GPU, else 0).
    ``runtime_env`` is passed to ``ray.init`` (e.g. ``{"env_vars": {...}}``). A Ray instance this executor started
    is shut down when ``map`` ends.
    """

    name = "ray"
    version = "1"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 cpus_per_task: float = 1, gpus_per_task: float | None = None, runtime_env: dict | None = None,
                 max_retries: int = 0):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("the ray executor needs Ray: install genattr[ray]") from None
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.runtime_env = runtime_env
        self.max_retries = max_retries

    def _init(self) -> bool:
        """Connect to (or start) Ray; True when this call started it."""
        import ray

        if ray.is_initialized():
            return False
        kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
        if self.address is not None:
            kwargs["address"] = self.address
        if self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            kwargs["num_gpus"] = self.num_gpus
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env
        ray.init(**kwargs)
        return True

    def map(self, fn, tasks):
        import ray

        started = self._init()
        try:
            gpus = self.gpus_per_task
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.max_retries)(fn)
            pending = {remote.remote(task): task for task in tasks}
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        task = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayTaskError as exc:
                            raise exc.as_instanceof_cause() from None
                        yield task, result
            finally:
                for ref in pending:  # a failure or an interrupted driver: stop what is still queued
                    ray.cancel(ref, force=False)
        finally:
            if started:
                ray.shutdown()


def ray_executor(**config):
    """Runs cells as Ray tasks on a local or remote cluster (needs the genattr[ray] extra)."""
    return RayExecutor(**config)


@hookimpl
def register_executors(register):
    register("local", LocalExecutor, version=LocalExecutor.version, description=LocalExecutor.__doc__.strip())
    register("ray", ray_executor, version=RayExecutor.version,
             description="Runs cells as Ray tasks (a GPU per cell where the cluster has GPUs; needs genattr[ray])")
