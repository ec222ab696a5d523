"""Built-in executors: ``local`` (in process) and ``ray`` (Ray tasks; the ``genattr[ray]`` extra).

An executor's ``map(fn, tasks)`` calls the module-level ``fn(task)`` for every JSON-able task and yields
``(task, result)`` pairs as they finish. Configure one with ``--set EXECUTOR.key=value`` (or an ``[EXECUTOR]`` table
in the run's TOML file), e.g. ``--executor ray --set ray.address=auto``. Ray is imported only when the ``ray``
executor is created.
"""

from __future__ import annotations

from genattr import hookimpl
from genattr.harness.errors import EnvironmentFault, UserError


def _signal_handlers() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None))
            if sig is not None}


def _restore_handlers(handlers: dict) -> None:
    import signal

    for sig, h in handlers.items():
        if h is not None and signal.getsignal(sig) is not h:
            signal.signal(sig, h)


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
    ``runtime_env`` is passed to ``ray.init`` (e.g. ``{"env_vars": {...}}``). ``max_retries``: how often a task whose
    worker process died is run again (default 1); after that the run stops with one line, keeping every row the
    other tasks finished. ``connect_timeout``: seconds to wait for an explicit ``address`` to accept a connection.
    genattr's own signal handling (SIGTERM / SIGINT / SIGHUP → ``interrupted``, exit 130) survives ``ray.init``.
    A Ray instance this executor started is shut down when ``map`` ends.
    """

    name = "ray"
    version = "1"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 cpus_per_task: float = 1, gpus_per_task: float | None = None, runtime_env: dict | None = None,
                 max_retries: int = 1, connect_timeout: float = 30.0):
        from genattr.presets import Integer, Number, Table, Text, check_values

        check_values("ray", dict(address=address, num_cpus=num_cpus, num_gpus=num_gpus, cpus_per_task=cpus_per_task,
                                 gpus_per_task=gpus_per_task, runtime_env=runtime_env, max_retries=max_retries,
                                 connect_timeout=connect_timeout),
                     dict(address=Text(nullable=True), num_cpus=Integer(min=1, nullable=True),
                          num_gpus=Integer(min=0, nullable=True), cpus_per_task=Number(gt=0),
                          gpus_per_task=Number(min=0, nullable=True), runtime_env=Table(nullable=True),
                          max_retries=Integer(min=0), connect_timeout=Number(gt=0)))
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("the ray executor needs Ray: install genattr[ray]") from None
        self.connect_timeout = float(connect_timeout)
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
        self._probe()
        # ray.init installs its own SIGTERM handler; genattr's (interrupted, exit 130, rows kept) must stay
        handlers = _signal_handlers()
        try:
            ray.init(**kwargs)
        finally:
            _restore_handlers(handlers)
        return True

    def _probe(self) -> None:
        """An explicit ``host:port`` address (``ray://`` or a GCS address) that does not accept a connection within
        ``connect_timeout`` seconds is an :class:`EnvironmentFault` now, instead of Ray's minutes of retries."""
        import socket

        addr = self.address
        if not addr or addr == "auto":
            return
        hostport = addr.split("://", 1)[-1].rsplit("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            return
        try:
            socket.create_connection((host, int(port)), timeout=self.connect_timeout).close()
        except OSError as exc:
            raise EnvironmentFault(f"cannot reach the Ray cluster at {addr} ({exc.strerror or type(exc).__name__} "
                                   f"within {self.connect_timeout:g} s); check ray.address or start the cluster") \
                from None

    def map(self, fn, tasks):
        import ray

        started = self._init()
        try:
            gpus = self.gpus_per_task
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            # max_retries: a task whose worker process died (killed, out of memory) runs again that many times;
            # an exception raised by the task itself is not retried
            remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.max_retries)(fn)
            pending = {remote.remote(task): task for task in tasks}
            failure: BaseException | None = None
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        task = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayTaskError as exc:  # the task raised: its own exception, one line
                            cause = getattr(exc, "cause", None)
                            failure = failure or (cause if isinstance(cause, BaseException)
                                                  else exc.as_instanceof_cause())
                            continue
                        except ray.exceptions.RayError as exc:  # the worker died (after the retries)
                            failure = failure or EnvironmentFault(
                                f"a Ray worker died running {task['benchmark']} / {task['method']} cells "
                                f"({type(exc).__name__}, {self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'});"
                                " finished rows are kept; re-run the same command to resume")
                            continue
                        yield task, result  # the other tasks' rows are kept even after a failure
                if failure is not None:
                    raise failure
            finally:
                for ref in pending:  # an interrupted driver: stop what is still queued
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
