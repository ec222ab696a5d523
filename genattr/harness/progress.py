"""One progress display and one warning channel for the terminal.

* :func:`bar` — a progress bar for an inner loop (training steps, scoring chunks): shown only while progress is
  enabled, and cleared from the screen when it finishes (``leave=False``), so a run's terminal holds one line per
  stage instead of a trail of finished bars.
* :func:`stage` — names what the run is doing while no cell is running ("setup customized-model: training the base
  model"): the runner's cell bar shows it in its description.
* :func:`configure_logging` — warnings of every ``genattr.*`` logger printed once each, as
  ``genattr: warning: …`` (through the progress bars, so they do not tear them), and nothing below errors with
  ``quiet``.

Nothing here imports torch; tqdm is imported when a bar is shown.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterable


class _State:
    enabled = True
    stream = None
    outer = None  # the runner's cell bar, when one is shown
    base_desc = ""


_state = _State()


def enable(enabled: bool, stream=None) -> None:
    """Turn bars on or off for this process (the runner does it from ``--quiet``)."""
    _state.enabled = bool(enabled)
    _state.stream = stream


def enabled() -> bool:
    return _state.enabled


class _Quiet:
    """A stand-in for a bar that is not shown: iterates its iterable, ignores updates."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, *a, **k) -> None:
        pass

    def set_description_str(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def interactive() -> bool:
    """Whether bars go to a terminal. Redirected to a file or a pipe (a batch job's log), only the run's cell bar is
    written, at most every :data:`LOG_INTERVAL` seconds, so logs hold lines, not thousands of redraws;
    ``GENATTR_PROGRESS=always`` shows every bar anyway."""
    import os

    if os.environ.get("GENATTR_PROGRESS") == "always":
        return True
    stream = _state.stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: Seconds between updates of the cell bar when progress goes to a log rather than a terminal.
LOG_INTERVAL = 60.0


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True, leave: bool = False, _outer: bool = False):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``) when progress is on and ``enabled``; cleared
    when done unless ``leave``. Not on a terminal (:func:`interactive`) only the run's cell bar is shown."""
    if not (enabled and _state.enabled):
        return _Quiet(iterable)
    tty = interactive()
    if not tty and not _outer:
        return _Quiet(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                file=_state.stream or sys.stderr, mininterval=0.1 if tty else LOG_INTERVAL)


def outer(total: int, desc: str, unit: str = "cell"):
    """The run's one persistent bar (cells, with ETA); :func:`stage` writes into its description."""
    b = bar(total=total, desc=desc, unit=unit, leave=True, _outer=True)
    _state.outer = b if not isinstance(b, _Quiet) else None
    _state.base_desc = desc
    return b


def close_outer() -> None:
    if _state.outer is not None:
        _state.outer.close()
    _state.outer = None


@contextlib.contextmanager
def stage(desc: str):
    """Show ``desc`` as the current stage (in the cell bar's description) for the duration."""
    b = _state.outer if interactive() else None  # in a log, stages would only add redraws
    if b is not None:
        b.set_description_str(desc)
        b.refresh()
    else:
        logging.getLogger("genattr.progress").debug(desc)
    try:
        yield
    finally:
        if b is not None and _state.outer is b:
            b.set_description_str(_state.base_desc)
            b.refresh()


class _Once(logging.Filter):
    """Passes each distinct message once per process."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` when tqdm is loaded, so a warning does not tear a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            tqdm_mod = sys.modules.get("tqdm.auto") or sys.modules.get("tqdm")
            if tqdm_mod is not None and hasattr(tqdm_mod, "tqdm"):
                tqdm_mod.tqdm.write(msg, file=self.stream)
            else:
                self.stream.write(msg + "\n")
                self.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


_HANDLER: logging.Handler | None = None


def configure_logging(quiet: bool = False, stream=None) -> None:
    """Print ``genattr.*`` warnings once each as ``genattr: warning: …`` (errors only with ``quiet``)."""
    global _HANDLER
    log = logging.getLogger("genattr")
    if _HANDLER is not None:
        log.removeHandler(_HANDLER)
    h = _TqdmHandler(stream or sys.stderr)
    h.setFormatter(logging.Formatter("genattr: %(levelname)s: %(message)s".replace("%(levelname)s", "%(levelname_l)s")))
    h.addFilter(_Once())
    h.addFilter(_lower_level)
    log.addHandler(h)
    log.setLevel(logging.ERROR if quiet else logging.WARNING)
    log.propagate = False
    _HANDLER = h


def _lower_level(record: logging.LogRecord) -> bool:
    record.levelname_l = record.levelname.lower()
    return True


def warn(logger: str, message: str, *args: Any) -> None:
    """``logging.getLogger(logger).warning(message)``: the one way built-ins warn the user."""
    logging.getLogger(logger).warning(message, *args)
