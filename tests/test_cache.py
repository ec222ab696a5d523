"""The content-addressed cache: a damaged entry is moved aside and recomputed with one warning; a cache that cannot
be written is one line naming GENATTR_CACHE (tests/test_faults.py does the same through whole runs)."""

from __future__ import annotations

import errno
import json
import logging
import os

import numpy as np
import pytest

from genattr.harness.cache import MANIFEST, Cache
from genattr.harness.errors import EnvironmentFault, UserError

NS = "tests/things"
KEY = Cache.key("a thing", 1)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def clear(self):
        self.records.clear()


@pytest.fixture
def caplog():
    """The warnings of the ``genattr.cache`` logger (a handler of its own: the CLI's logging set-up may stop
    ``genattr`` records from reaching the root logger, where pytest's caplog listens)."""
    log = logging.getLogger("genattr.cache")
    h, level = _Records(), log.level
    log.addHandler(h)
    log.setLevel(logging.WARNING)
    try:
        yield h
    finally:
        log.removeHandler(h)
        log.setLevel(level)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


class Counter:
    """``create`` for get_or_create / ``compute`` for arrays(), counting calls."""

    def __init__(self):
        self.calls = 0

    def files(self, tmp):
        self.calls += 1
        (tmp / "data.txt").write_text("payload")

    def arrays(self):
        self.calls += 1
        return {"x": np.arange(5.0)}


def _entry(cache: Cache, key: str = KEY):
    return cache.path(NS, key)


# -- damaged entries ------------------------------------------------------------------------------------------------
def test_deleted_manifest_is_recomputed_with_one_warning(tmp_path, caplog):
    """Before: OSError [Errno 39] Directory not empty on the rename, on every later run."""
    cache, c = Cache(tmp_path), Counter()
    cache.get_or_create(NS, KEY, c.files)
    (_entry(cache) / MANIFEST).unlink()
    p = cache.get_or_create(NS, KEY, c.files)
    assert c.calls == 2 and (p / "data.txt").read_text() == "payload" and (p / MANIFEST).is_file()
    warned = _warnings(caplog)
    assert len(warned) == 1 and NS in warned[0] and "MANIFEST.json missing" in warned[0]
    caplog.clear()
    cache.get_or_create(NS, KEY, c.files)  # and it stays fixed
    assert c.calls == 2 and not _warnings(caplog)
    assert not [q for q in _entry(cache).parent.iterdir() if q.name.startswith(".trash-")]
    cache.remove(NS, KEY)
    cache.remove(NS, KEY)  # already gone: nothing to do
    assert cache.lookup(NS, KEY) is None and list(_entry(cache).parent.iterdir()) == []


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) // 2)])


def _garbage(path):
    path.write_bytes(os.urandom(64))


DAMAGE = {
    "manifest truncated": lambda p: _truncate(p / MANIFEST),
    "manifest garbage": lambda p: _garbage(p / MANIFEST),
    "manifest a list": lambda p: (p / MANIFEST).write_text("[1, 2]"),
    "manifest files a list": lambda p: (p / MANIFEST).write_text('{"files": ["arrays.npz"]}'),
    "manifest missing": lambda p: (p / MANIFEST).unlink(),
    "file truncated": lambda p: _truncate(p / "arrays.npz"),
    "file garbage": lambda p: _garbage(p / "arrays.npz"),
    "file missing": lambda p: (p / "arrays.npz").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_moved_aside_and_recomputed(tmp_path, caplog, damage):
    cache, c = Cache(tmp_path), Counter()
    first = cache.arrays(NS, KEY, c.arrays)
    DAMAGE[damage](_entry(cache))
    again = cache.arrays(NS, KEY, c.arrays)
    assert c.calls == 2 and np.array_equal(first["x"], again["x"])
    warned = _warnings(caplog)
    assert len(warned) == 1 and "moved aside" in warned[0], warned
    assert Cache.problem(_entry(cache)) is None  # the new entry is whole
    caplog.clear()
    assert np.array_equal(cache.arrays(NS, KEY, c.arrays)["x"], first["x"]) and c.calls == 2
    assert not _warnings(caplog)


def test_a_file_where_the_entry_should_be(tmp_path, caplog):
    cache, c = Cache(tmp_path), Counter()
    p = _entry(cache)
    p.parent.mkdir(parents=True)
    p.write_text("not an entry")
    assert (cache.get_or_create(NS, KEY, c.files) / "data.txt").read_text() == "payload"
    assert len(_warnings(caplog)) == 1


def test_entry_whose_file_does_not_load_is_recomputed(tmp_path, caplog):
    """A manifest that matches a garbage file (checksums pass) still does not serve the garbage."""
    cache, c = Cache(tmp_path), Counter()
    cache.arrays(NS, KEY, c.arrays)
    p = _entry(cache)
    (p / "arrays.npz").write_bytes(b"garbage, consistently")
    man = json.loads((p / MANIFEST).read_text())
    from genattr.harness.cache import sha256_file

    man["files"]["arrays.npz"] = sha256_file(p / "arrays.npz")
    (p / MANIFEST).write_text(json.dumps(man))
    assert np.array_equal(cache.arrays(NS, KEY, c.arrays)["x"], np.arange(5.0)) and c.calls == 2
    assert len(_warnings(caplog)) == 1 and "does not load" in _warnings(caplog)[0]


def test_damaged_json_and_tensor_entries(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    cache = Cache(tmp_path)
    cache.put_json(NS, "j" * 64, {"a": 1})
    _garbage(cache.path(NS, "j" * 64) / "value.json")
    assert cache.get_json(NS, "j" * 64) is None
    calls = []
    t = cache.tensors(NS, "t" * 64, lambda: calls.append(1) or {"w": torch.ones(3)})
    _truncate(cache.path(NS, "t" * 64) / "tensors.safetensors")
    assert torch.equal(cache.tensors(NS, "t" * 64, lambda: calls.append(1) or {"w": torch.ones(3)})["w"], t["w"])
    assert len(calls) == 2 and len(_warnings(caplog)) == 2


def test_a_damaged_entry_that_appears_while_computing_is_replaced(tmp_path, caplog):
    """The rename into place meets a leftover directory (another process's damaged entry): moved aside too."""
    cache = Cache(tmp_path)

    def create(tmp):
        p = _entry(cache)
        p.mkdir(parents=True)
        (p / "stray.bin").write_bytes(b"x")  # no manifest
        (tmp / "data.txt").write_text("payload")

    p = cache.get_or_create(NS, KEY, create)
    assert (p / "data.txt").read_text() == "payload" and not (p / "stray.bin").exists()
    assert len(_warnings(caplog)) == 1


# -- a cache that cannot be written ---------------------------------------------------------------------------------
def _read_only(monkeypatch, root):
    """Make every directory creation and rename under ``root`` fail as on a read-only file system (works as root,
    where chmod does not stop anything)."""
    real_mkdir, real_rename = os.mkdir, os.rename
    root = str(root)

    def under(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(root)

    def mkdir(path, *a, **k):
        if under(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_mkdir(path, *a, **k)

    def rename(src, dst, *a, **k):
        if under(src) or under(dst):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(src))
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "rename", rename)


def _one_line_naming_cache(exc: UserError, root) -> None:
    msg = str(exc)
    assert "\n" not in msg and "GENATTR_CACHE" in msg and str(root) in msg, msg


def test_read_only_cache_is_one_line_naming_genattr_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    _read_only(monkeypatch, root)
    c = Counter()
    with pytest.raises(UserError) as err:
        Cache(root).get_or_create(NS, KEY, c.files)
    _one_line_naming_cache(err.value, root)
    assert "Read-only file system" in str(err.value) and c.calls == 0  # refused before computing


def test_read_only_cache_with_a_damaged_entry(tmp_path, monkeypatch):
    """Whole entries are still served from a read-only cache; a damaged one cannot be replaced: one line."""
    cache, c = Cache(tmp_path / "cache"), Counter()
    cache.get_or_create(NS, KEY, c.files)
    cache.get_or_create(NS, KEY[::-1], c.files)
    (_entry(cache) / MANIFEST).unlink()
    _read_only(monkeypatch, tmp_path / "cache")
    assert (cache.get_or_create(NS, KEY[::-1], c.files) / "data.txt").read_text() == "payload" and c.calls == 2
    with pytest.raises(UserError) as err:
        cache.get_or_create(NS, KEY, c.files)
    _one_line_naming_cache(err.value, tmp_path / "cache")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_chmod_read_only_cache(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(UserError) as err:
            Cache(root).get_or_create(NS, KEY, Counter().files)
        _one_line_naming_cache(err.value, root)
        assert "Permission denied" in str(err.value)
    finally:
        root.chmod(0o755)


def test_cache_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as err:
        Cache(tmp_path / "file" / "cache").get_or_create(NS, KEY, Counter().files)
    _one_line_naming_cache(err.value, tmp_path / "file" / "cache")


def test_full_disk_while_storing(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        if ".tmp" in os.fspath(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(EnvironmentFault) as err:  # a full disk is the machine's fault: exit 1
        cache.get_or_create(NS, KEY, Counter().files)
    _one_line_naming_cache(err.value, tmp_path)
    assert not list((tmp_path / ".tmp").iterdir())  # the half-stored copy is gone

    def create(tmp):
        raise PermissionError(errno.EACCES, "the computation's own problem")

    with pytest.raises(PermissionError):  # not a cache error: not reworded
        cache.get_or_create(NS, KEY, create)
