"""Content-addressed cache (DESIGN.md, Results and cache).

An entry is a directory ``ROOT/<namespace>/<key[:2]>/<key>/`` holding the entry's files and ``MANIFEST.json`` (the
sha256 of every file). Keys are sha256 digests of the canonical JSON of everything that changes the answer
(component name and version, its configuration, the fingerprints of its inputs) — see :meth:`Cache.key`.
Entries are written into a temporary directory and renamed into place, so a reader never sees half an entry; a
checksum is verified on every read. An entry that fails it — a file missing, truncated or changed, a manifest
missing, truncated or garbage, a stray file where the entry's directory should be — is moved aside atomically
(renamed to ``.trash-*`` next to it, then deleted) with one warning on the ``genattr.cache`` logger, and so is
recomputed by the caller. A cache that cannot be written (read-only, full, not a directory) is a one-line
:class:`~genattr.harness.errors.UserError` naming ``GENATTR_CACHE``.
Tensors are stored as safetensors, arrays as ``.npz`` (loaded with ``allow_pickle=False``), metadata as JSON:
nothing here unpickles.

The root defaults to the user cache directory (``~/.cache/genattr``); ``GENATTR_CACHE`` overrides it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import EnvironmentFault, UserError, disk_full

MANIFEST = "MANIFEST.json"

log = logging.getLogger("genattr.cache")


def default_root() -> Path:
    env = os.environ.get("GENATTR_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "genattr"


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON; tuples become lists; non-JSON values fall back to ``str``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RECORDERS: list[dict] = []


@contextlib.contextmanager
def recording():
    """Record every ``(namespace, key)`` entry a :class:`Cache` in this process hands out (found or created) while
    the block runs; yields the (insertion-ordered) dict of them. Used to find a benchmark's artefacts (packs)."""
    touched: dict = {}
    _RECORDERS.append(touched)
    try:
        yield touched
    finally:
        _RECORDERS.remove(touched)


class Cache:
    """A content-addressed store of directories. Thread/process safe for distinct keys; for the same key the first
    complete writer wins and later writers discard their copy."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    # -- keys ---------------------------------------------------------------------------------------------------
    @staticmethod
    def key(*parts: Any) -> str:
        """sha256 over the canonical JSON of ``parts``."""
        return hash_json(list(parts))

    def path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / key

    # -- errors ---------------------------------------------------------------------------------------------------
    def unwritable(self, exc: OSError) -> Exception:
        """The one-line error for a cache that cannot be written: a full disk is an :class:`EnvironmentFault` (free
        space and re-run), a read-only or non-directory root a :class:`UserError` (point GENATTR_CACHE elsewhere)."""
        if disk_full(exc):
            return self.full()
        reason = exc.strerror or type(exc).__name__
        return UserError(f"cannot write the cache at {self.root} (GENATTR_CACHE): {reason}; "
                         "set GENATTR_CACHE to a writable folder")

    def full(self) -> EnvironmentFault:
        return EnvironmentFault(f"disk full while writing the cache at {self.root} (GENATTR_CACHE); free space (or "
                                "set GENATTR_CACHE to a larger disk) and re-run: finished work is kept")

    # -- directories --------------------------------------------------------------------------------------------
    @staticmethod
    def problem(path: Path) -> str | None:
        """Why the entry at ``path`` cannot be used (manifest or a file missing, unreadable or changed), or None."""
        if not path.is_dir():
            return "not a directory"
        man = path / MANIFEST
        if not man.is_file():
            return f"{MANIFEST} missing"
        try:
            manifest = json.loads(man.read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            return f"{MANIFEST} unreadable ({type(exc).__name__})"
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            return f"{MANIFEST} malformed"
        for rel, digest in sorted(files.items()):
            f = path / rel
            try:
                if not f.is_file():
                    return f"{rel} missing"
                if sha256_file(f) != digest:
                    return f"checksum mismatch for {rel}"
            except OSError as exc:
                return f"{rel} unreadable ({exc.strerror or type(exc).__name__})"
        return None

    def lookup(self, namespace: str, key: str) -> Path | None:
        """The entry's directory if present and intact; an unusable entry is moved aside (one warning) and None
        returned, so the caller recomputes it."""
        p = self.path(namespace, key)
        if not os.path.lexists(p):
            return None
        why = self.problem(p)
        if why is None:
            for touched in _RECORDERS:
                touched[(namespace, key)] = None
            return p
        self.discard(namespace, key, why)
        return None

    def discard(self, namespace: str, key: str, why: str) -> None:
        """Move an unusable entry aside with one warning saying ``why``; the next lookup recomputes it."""
        if self._move_aside(self.path(namespace, key)):
            log.warning("cache entry %s/%s is unusable (%s); moved aside, it will be recomputed",
                        namespace, key[:12], why)

    def remove(self, namespace: str, key: str) -> None:
        """Delete an entry (moved aside atomically first, so no reader sees it half deleted)."""
        self._move_aside(self.path(namespace, key))

    def _move_aside(self, p: Path) -> bool:
        """Rename ``p`` to ``.trash-*`` beside it and delete that; False when ``p`` was already gone."""
        trash = p.with_name(f".trash-{p.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(p, trash)
        except FileNotFoundError:
            return False  # another process moved it first
        except OSError as exc:
            raise self.unwritable(exc) from None
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(trash)
        return True

    @contextlib.contextmanager
    def writing(self, namespace: str, key: str, meta: dict | None = None) -> Iterator[Path]:
        """Yield a fresh temporary directory; on normal exit a manifest is written and the directory renamed into
        place atomically. On an exception nothing is stored. A cache that cannot be written is a one-line
        :class:`UserError` (before the caller computes anything)."""
        tmp_parent = self.root / ".tmp"
        try:
            tmp_parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{namespace.replace('/', '_')}-", dir=tmp_parent))
        except OSError as exc:
            raise self.unwritable(exc) from None
        try:
            try:
                yield tmp
            except Exception as exc:  # what the caller writes inside the block
                if disk_full(exc):
                    raise self.full() from None
                raise
            try:
                self._store(tmp, namespace, key, meta)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR):
                    raise self.unwritable(exc) from None
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _store(self, tmp: Path, namespace: str, key: str, meta: dict | None) -> None:
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
                files[f.relative_to(tmp).as_posix()] = sha256_file(f)
        (tmp / MANIFEST).write_text(json.dumps({"files": files, "meta": meta or {}}, indent=1, default=str))
        final = self.path(namespace, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self.lookup(namespace, key) is not None:
                return  # another writer stored it first; ours is discarded by the caller
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                continue  # something took the place meanwhile: look again (an unusable one is moved aside)
            _fsync_dir(final.parent)
            return
        raise OSError(errno.EEXIST, f"cannot store cache entry {final}: the place stays taken")

    def get_or_create(self, namespace: str, key: str, create: Callable[[Path], None], meta: dict | None = None) -> Path:
        """The entry's directory, calling ``create(tmpdir)`` to fill it first when missing or corrupt."""
        p = self.lookup(namespace, key)
        if p is not None:
            return p
        with self.writing(namespace, key, meta) as tmp:
            create(tmp)
        p = self.lookup(namespace, key)
        assert p is not None
        return p

    # -- typed helpers ------------------------------------------------------------------------------------------
    def _load(self, namespace: str, key: str, name: str, load: Callable[[Path], Any]) -> Any | None:
        """``load(entry/name)``, or None (the entry moved aside) when the entry is missing, unusable or its file does
        not load."""
        p = self.lookup(namespace, key)
        if p is None:
            return None
        try:
            return load(p / name)
        except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the entry is unusable
            self.discard(namespace, key, f"{name} does not load: {type(exc).__name__}")
            return None

    def get_tensors(self, namespace: str, key: str) -> dict | None:
        from safetensors.torch import load_file

        return self._load(namespace, key, "tensors.safetensors", lambda f: load_file(str(f)))

    def put_tensors(self, namespace: str, key: str, tensors: dict, meta: dict | None = None) -> None:
        from safetensors.torch import save_file

        with self.writing(namespace, key, meta) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))

    def tensors(self, namespace: str, key: str, compute: Callable[[], dict], meta: dict | None = None) -> dict:
        """Cached ``compute()`` (a dict of tensors)."""
        got = self.get_tensors(namespace, key)
        if got is not None:
            return got
        value = compute()
        self.put_tensors(namespace, key, value, meta)
        return value

    def get_arrays(self, namespace: str, key: str) -> dict | None:
        import numpy as np

        def load(f: Path) -> dict:
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}

        return self._load(namespace, key, "arrays.npz", load)

    def put_arrays(self, namespace: str, key: str, arrays: dict, meta: dict | None = None) -> None:
        import numpy as np

        with self.writing(namespace, key, meta) as tmp:
            np.savez(tmp / "arrays.npz", **arrays)

    def arrays(self, namespace: str, key: str, compute: Callable[[], dict], meta: dict | None = None) -> dict:
        """Cached ``compute()`` (a dict of numpy arrays)."""
        got = self.get_arrays(namespace, key)
        if got is not None:
            return got
        value = compute()
        self.put_arrays(namespace, key, value, meta)
        return value

    def get_json(self, namespace: str, key: str) -> Any | None:
        return self._load(namespace, key, "value.json", lambda f: json.loads(f.read_text()))

    def put_json(self, namespace: str, key: str, value: Any, meta: dict | None = None) -> None:
        with self.writing(namespace, key, meta) as tmp:
            (tmp / "value.json").write_text(json.dumps(value, default=str))
