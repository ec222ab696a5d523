"""Benchmark artefact packs: the fixed inputs a benchmark's results depend on, so that two machines score methods
on the same models and queries.

A pack is a folder::

    PACK/manifest.json                 format, genattr version, the run's configuration, the entries, the pack hash
    PACK/entries/<namespace>/<key>/…   one cache entry each (its files and the cache's own manifest)

The entries are the cache entries a benchmark's set-up reads — the base model (θ0), the frozen VAE a latent model's
recipe trains once per dataset, customized models and their deltas, query images, LDS subset-model outputs, teacher rankings: the namespaces of :data:`ARTEFACT_NAMESPACES` —
found by setting each benchmark of a finished run up again (from the cache, so nothing is trained) while the
cache records what it reads (:func:`genattr.harness.cache.recording`). A method's own caches (features, gradient
stores, Fisher diagonals) are never part of a pack. The pack hash is the sha256 of the entries' names and file
digests: the same artefacts give the same hash on every machine.

``import_pack`` verifies every file against the manifest and stores the entries in the cache (existing entries are
kept); it also records the pack (namespace ``packs``), so a run whose set-up reads only that pack's entries records
its hash in every row (``pack``) and in ``run.json``. With a pack imported, ``genattr run`` trains nothing that the
pack holds: the Customized Model, LDS and teacher agreement then cost only the new method's scoring (leave-K-out
still retrains without each method's own top K).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from .cache import MANIFEST, Cache, hash_json, sha256_file
from .errors import UserError

FORMAT = "genattr-pack/1"
PACKS_NS = "packs"

#: Cache namespaces that hold a benchmark's fixed artefacts (everything else is a method's own cache).
ARTEFACT_NAMESPACES = ("models/trained", "models/autoencoder", "models/customized", "customized-model-queries",
                       "leave-k-out/queries", "lds/outputs", "teacher/rankings", "teacher/queries")


def is_artefact(namespace: str) -> bool:
    return namespace in ARTEFACT_NAMESPACES


def artefacts_of_run(run_dir: str | os.PathLike, cache: Cache) -> tuple[list[tuple[str, str]], dict]:
    """``([(namespace, key)], run document)``: the artefact entries the set-up of every benchmark of the run reads
    from ``cache`` (each benchmark rebuilt from the configuration ``run.json`` recorded; set up from the cache)."""
    import genattr

    from .api import RunEnv
    from .cache import recording
    from .results import read_run

    d = Path(run_dir).expanduser()
    doc = read_run(d) if d.is_dir() else None
    if not doc or not doc.get("benchmarks"):
        raise UserError(f"{run_dir!r} holds no run.json with benchmarks; give a run directory of 'genattr run'")
    found: dict[tuple[str, str], None] = {}
    for name, info in doc["benchmarks"].items():
        cfg = dict(info.get("config") or {})
        bench = genattr.get_benchmark(name, **cfg)
        env = RunEnv(cache=cache, seed=int(doc.get("seed", 0)), scale=str(doc.get("scale") or cfg.get("scale")),
                     progress=False)
        with recording() as touched:
            bench.setup(env)
            extra = getattr(bench, "artefacts", None)
            if callable(extra):
                extra(env)  # artefacts a benchmark computes after set-up (teacher rankings)
        for ns, key in touched:
            if is_artefact(ns):
                found[(ns, key)] = None
    return list(found), doc


def _entry_files(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of an entry's files, without the cache's own manifest (rewritten on import)."""
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.relative_to(path).as_posix() != MANIFEST}


def pack_hash(entries: Iterable[dict]) -> str:
    return hash_json([{"namespace": e["namespace"], "key": e["key"], "files": e["files"]} for e in
                      sorted(entries, key=lambda e: (e["namespace"], e["key"]))])


def export_pack(run_dir: str | os.PathLike, pack: str | os.PathLike, cache: Cache | None = None) -> dict:
    """Write the pack of the run ``run_dir`` to the folder ``pack`` (which must not exist, or be empty); returns
    its manifest."""
    from genattr import __version__

    cache = cache or Cache()
    out = Path(pack).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"pack folder {str(out)!r} exists and is not empty; choose a new folder")
    entries_found, doc = artefacts_of_run(run_dir, cache)
    if not entries_found:
        raise UserError(f"the benchmarks of {run_dir!r} read no artefact from the cache at {cache.root}; run it "
                        "there first (or set GENATTR_CACHE to the cache it used)")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "entries").mkdir(parents=True)
    entries = []
    for ns, key in sorted(entries_found):
        src = cache.lookup(ns, key)
        if src is None:
            raise UserError(f"cache entry {ns}/{key[:12]} vanished while exporting; run the export again")
        dst = tmp / "entries" / ns / key
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MANIFEST))
        entries.append({"namespace": ns, "key": key, "files": _entry_files(dst)})
    manifest = {
        "format": FORMAT, "genattr_version": __version__, "pack_hash": pack_hash(entries),
        "run": {"seed": doc.get("seed"), "scale": doc.get("scale"), "config_hash": doc.get("config_hash"),
                "benchmarks": {b: {"version": i.get("version"), "config": i.get("config"),
                                   "config_hash": i.get("config_hash"),
                                   "fingerprints": (i.get("provenance") or {}).get("models")}
                               for b, i in doc["benchmarks"].items()}},
        "entries": entries,
        "bytes": sum((tmp / "entries" / e["namespace"] / e["key"] / f).stat().st_size for e in entries
                     for f in e["files"]),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return manifest


def read_manifest(pack: str | os.PathLike) -> dict:
    p = Path(pack).expanduser()
    f = p / "manifest.json"
    if not f.is_file():
        raise UserError(f"{str(pack)!r} is not a genattr pack (no manifest.json)")
    try:
        manifest = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{f} is unreadable ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{str(pack)!r} is not a {FORMAT} pack (format {manifest.get('format')!r})"
                        if isinstance(manifest, dict) else f"{f} is not a pack manifest")
    return manifest


def import_pack(pack: str | os.PathLike, cache: Cache | None = None) -> dict:
    """Verify the pack and store its entries in ``cache``; returns ``{"pack_hash", "imported", "present"}``. A file
    whose digest differs from the manifest, or a manifest whose hash does not match its entries, is a one-line
    :class:`UserError` before anything is stored."""
    cache = cache or Cache()
    src = Path(pack).expanduser()
    manifest = read_manifest(src)
    entries = manifest.get("entries") or []
    if pack_hash(entries) != manifest.get("pack_hash"):
        raise UserError(f"{src}: the manifest's entries do not give its pack hash; the pack is damaged")
    for e in entries:
        if not is_artefact(str(e.get("namespace"))):
            raise UserError(f"{src}: entry namespace {e.get('namespace')!r} is not a benchmark artefact")
        base = src / "entries" / e["namespace"] / e["key"]
        for rel, digest in e["files"].items():
            f = base / rel
            if ".." in Path(rel).parts or not f.is_file() or sha256_file(f) != digest:
                raise UserError(f"{src}: {e['namespace']}/{e['key'][:12]}/{rel} is missing or damaged; the pack "
                                "cannot be imported")
    imported = present = 0
    for e in entries:
        if cache.lookup(e["namespace"], e["key"]) is not None:
            present += 1
            continue
        base = src / "entries" / e["namespace"] / e["key"]
        with cache.writing(e["namespace"], e["key"], {"pack": manifest["pack_hash"]}) as tmp:
            for rel in e["files"]:
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base / rel, dst)
        imported += 1
    cache.put_json(PACKS_NS, manifest["pack_hash"], {"pack_hash": manifest["pack_hash"],
                                                       "entries": [[e["namespace"], e["key"]] for e in entries],
                                                       "genattr_version": manifest.get("genattr_version")})
    return {"pack_hash": manifest["pack_hash"], "imported": imported, "present": present, "entries": len(entries)}


def pack_of(touched: Iterable[tuple[str, str]], cache: Cache) -> str | None:
    """The hash of an imported pack holding every artefact entry of ``touched``, or None (none read, or some not
    from one pack)."""
    wanted = {(ns, k) for ns, k in touched if is_artefact(ns)}
    if not wanted:
        return None
    root = cache.root / PACKS_NS
    if not root.is_dir():
        return None
    for shard in sorted(root.iterdir()):
        for entry in sorted(shard.iterdir()) if shard.is_dir() else ():
            doc = cache.get_json(PACKS_NS, entry.name)
            if doc and wanted <= {tuple(x) for x in doc.get("entries", ())}:
                return str(doc["pack_hash"])
    return None
