"""The performance suite: pytest-benchmark tests with a ``tiny`` variant (collected by the plain test run; CI runs it
once with ``--benchmark-disable`` for correctness) and a ``small`` variant (marked ``slow`` and ``small``: minutes).

    python -m pytest tests/perf -q                                  # tiny, correctness only
    python -m pytest tests/perf -q -s --benchmark-enable             # tiny, with the figures
    python -m pytest tests/perf -q -s -m small --benchmark-enable    # small (builds the small models if missing)
    ... --benchmark-save=NAME / --benchmark-compare                  # pytest-benchmark's saved JSON

Every test records its figures (ratios, overlaps, evaluation counts, images/s) with the ``figures`` fixture: they go
to the benchmark's ``extra_info`` (so they are in the saved JSON) and are printed in one table at the end of the
session. The small variants use the user's cache (``GENATTR_CACHE``, else ``~/.cache/genattr``) so their models
are built once; the tiny variants use the test session's temporary cache.
"""

from __future__ import annotations

import os

import pytest

_FIGURES: list[tuple[str, str, object]] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "small: performance figures at the small scale (minutes; -m small)")


@pytest.fixture
def figures(request):
    """``figures(name=value, …)``: record figures of this test (printed at the end, stored in extra_info)."""
    bench = request.getfixturevalue("benchmark") if "benchmark" in request.fixturenames else None

    def record(**values):
        for k, v in values.items():
            _FIGURES.append((request.node.name, k, v))
            if bench is not None:
                bench.extra_info[k] = v

    return record


@pytest.fixture(scope="session")
def perf_cache(session_cache):
    """The tiny variants' cache (the session's); :func:`user_cache` for small."""
    return session_cache


@pytest.fixture(scope="session")
def user_cache():
    """The user's cache (small models are expensive to build: built once, kept). The test session points
    ``GENATTR_CACHE`` at a temporary folder; ``GENATTR_PERF_CACHE`` (else ``~/.cache/genattr``) is used instead."""
    from pathlib import Path

    from genattr.harness.cache import Cache

    root = os.environ.get("GENATTR_PERF_CACHE") or str(Path.home() / ".cache" / "genattr")
    return Cache(root)


@pytest.fixture
def cache_for(request):
    """``cache_for(scale)``: the user's cache for ``small``, the session's for ``tiny``."""
    return lambda scale: request.getfixturevalue("user_cache" if scale == "small" else "perf_cache")


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    tr = terminalreporter
    tr.section("performance figures")
    width = max(len(t) for t, _, _ in _FIGURES)
    for test, key, value in _FIGURES:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (list, dict)):
            import json

            value = json.dumps(value, default=str)
        tr.write_line(f"{test:<{width}}  {key} = {value}")
