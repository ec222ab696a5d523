"""Content-addressed cache (DESIGN.md, Results and cache).

An entry is a directory ``ROOT/<namespace>/<key[:2]>/<key>/`` holding the entry's files and ``MANIFEST.json`` (the
sha256 of every file). Keys are sha256 digests of the canonical JSON of everything that changes the answer
(component name and version, its configuration, the fingerprints of its inputs) — see :meth:`Cache.key`.
Entries are written into a temporary directory and renamed into place, so a reader never sees half an entry; a
checksum is verified on every read and an entry that fails it is deleted (and so recomputed by the caller).
Tensors are stored as safetensors, arrays as ``.npz`` (loaded with ``allow_pickle=False``), metadata as JSON:
nothing here unpickles.

The root defaults to the user cache directory (``~/.cache/genattr``); ``GENATTR_CACHE`` overrides it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "MANIFEST.json"


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

    # -- directories --------------------------------------------------------------------------------------------
    def lookup(self, namespace: str, key: str) -> Path | None:
        """The entry's directory if present and intact; a corrupt entry is removed and None returned."""
        p = self.path(namespace, key)
        man = p / MANIFEST
        if not man.is_file():
            return None
        try:
            manifest = json.loads(man.read_text())
            files = manifest["files"]
            for rel, digest in files.items():
                f = p / rel
                if not f.is_file() or sha256_file(f) != digest:
                    raise ValueError(f"checksum mismatch for {rel}")
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            self.remove(namespace, key)
            return None
        return p

    def remove(self, namespace: str, key: str) -> None:
        p = self.path(namespace, key)
        if p.exists():
            trash = p.with_name(f".trash-{p.name}-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(OSError):
                os.rename(p, trash)
                p = trash
            shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def writing(self, namespace: str, key: str, meta: dict | None = None) -> Iterator[Path]:
        """Yield a fresh temporary directory; on normal exit a manifest is written and the directory renamed into
        place atomically. On an exception nothing is stored."""
        tmp_parent = self.root / ".tmp"
        tmp_parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{namespace.replace('/', '_')}-", dir=tmp_parent))
        try:
            yield tmp
            files = {}
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
                    files[f.relative_to(tmp).as_posix()] = sha256_file(f)
            (tmp / MANIFEST).write_text(json.dumps({"files": files, "meta": meta or {}}, indent=1, default=str))
            final = self.path(namespace, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and self.lookup(namespace, key) is not None:
                return  # another writer stored it first; ours is discarded in ``finally``
            try:
                os.rename(tmp, final)
            except OSError:
                if self.lookup(namespace, key) is None:  # pragma: no cover - lost a race with a corrupt writer
                    raise
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

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
    def get_tensors(self, namespace: str, key: str) -> dict | None:
        p = self.lookup(namespace, key)
        if p is None:
            return None
        from safetensors.torch import load_file

        return load_file(str(p / "tensors.safetensors"))

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
        p = self.lookup(namespace, key)
        if p is None:
            return None
        import numpy as np

        with np.load(p / "arrays.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

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
        p = self.lookup(namespace, key)
        if p is None:
            return None
        return json.loads((p / "value.json").read_text())

    def put_json(self, namespace: str, key: str, value: Any, meta: dict | None = None) -> None:
        with self.writing(namespace, key, meta) as tmp:
            (tmp / "value.json").write_text(json.dumps(value, default=str))
