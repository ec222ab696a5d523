"""Fault injection for the reliability tests: stop the process at a named point of a run.

``GENATTR_FAULT=kill:NAME`` makes the process send itself ``SIGKILL`` the first time it reaches
``checkpoint(NAME)``; ``kill:NAME:N`` on the N-th time (counted per process). Anything else in the variable is
ignored, so a stray value never changes a run. The points a run passes:

* ``setup`` — a benchmark's setup has just finished in the worker (models trained or loaded);
* ``in-cell`` — a cell is scored, its row not yet written;
* ``append`` — half of a row's line is written to ``results.jsonl`` (``ResultsWriter.append``);
* ``between-cells`` — a row is written, the next cell not yet started.

``tests/test_faults.py`` kills a real ``genattr run`` at each of them and checks that re-running the same command
gives the rows an uninterrupted run gives. Reaching a checkpoint without the variable costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "GENATTR_FAULT"

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _plan() -> tuple[str, int] | None:
    """``(name, n)`` from ``GENATTR_FAULT`` (``kill:NAME`` or ``kill:NAME:N``), or None."""
    spec = os.environ.get(ENV, "")
    if not spec.startswith("kill:"):
        return None
    name, _, n = spec[len("kill:"):].partition(":")
    if not name:
        return None
    try:
        count = int(n) if n else 1
    except ValueError:
        return None
    return name, max(count, 1)


def armed(name: str) -> bool:
    """Whether ``GENATTR_FAULT`` asks to kill the process at checkpoint ``name`` (at some visit)."""
    plan = _plan()
    return plan is not None and plan[0] == name


def checkpoint(name: str) -> None:
    """Count a visit to the point ``name``; ``SIGKILL`` this process when ``GENATTR_FAULT`` asks for this visit."""
    plan = _plan()
    if plan is None or plan[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == plan[1]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Forget the visits counted so far (tests)."""
    with _lock:
        _counts.clear()
