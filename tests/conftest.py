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
def _genattr_logger_reset():
    """Each test starts with the ``genattr`` logger as a library leaves it (no handler of its own, propagating to
    the root, where ``caplog`` listens): an in-process ``genattr`` command — in a test or in a module- or
    session-scoped fixture — installs its own non-propagating handler, which would hide later warnings."""
    import logging

    from genattr.harness import progress

    log = logging.getLogger("genattr")
    if progress._HANDLER is not None and progress._HANDLER in log.handlers:
        log.removeHandler(progress._HANDLER)
    log.setLevel(logging.NOTSET)
    log.propagate = True
    yield


@pytest.fixture
def python():
    return sys.executable


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temporary cache."""
    import shutil

    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
