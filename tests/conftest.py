"""Shared test set-up.

* Installed third-party plugins do not load inside the test process (``GENATTR_LOAD_PLUGINS`` is set empty), so a
  user's plugins never change what the tests see; tests that check plugin discovery run ``genattr`` in a subprocess
  with their own environment.
* The cache lives in a per-session temporary directory, never in the user's cache.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

os.environ["GENATTR_LOAD_PLUGINS"] = ""
os.environ.pop("GENATTR_STRICT_PLUGINS", None)
_SESSION_CACHE = tempfile.mkdtemp(prefix="genattr-test-cache-")
os.environ["GENATTR_CACHE"] = _SESSION_CACHE


@pytest.fixture(scope="session")
def session_cache():
    """A :class:`genattr.harness.cache.Cache` shared by the whole test session (trained tiny models are reused)."""
    from genattr.harness.cache import Cache

    return Cache(_SESSION_CACHE)


@pytest.fixture
def clean_env(monkeypatch):
    """An environment for ``genattr`` subprocesses in which installed plugins load normally."""
    env = dict(os.environ)
    env.pop("GENATTR_LOAD_PLUGINS", None)
    env.pop("GENATTR_STRICT_PLUGINS", None)
    return env


@pytest.fixture(autouse=True)
def _genattr_logger_restored():
    """Undo what an in-process ``genattr`` command does to the ``genattr`` logger (its own handler, no propagation),
    so later tests' ``caplog`` sees the warnings."""
    import logging

    log = logging.getLogger("genattr")
    state = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = state


@pytest.fixture
def python():
    return sys.executable


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temporary cache."""
    import shutil

    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
