"""Benchmark artefact packs: export a finished run's artefacts from one cache, import them into an empty one, and
a run there trains nothing, gives the same rows and records the pack's hash; a damaged pack is refused."""

from __future__ import annotations

import json

import pytest

from genattr.harness import results
from genattr.harness import run as runner
from genattr.harness.cache import Cache
from genattr.harness.errors import UserError
from genattr.harness.packs import ARTEFACT_NAMESPACES, export_pack, import_pack


def _run(tmp_path, cache, out, methods=("pixel",)):
    spec = runner.build_spec(["customized-model"], list(methods), scale="tiny", out=str(tmp_path / out),
                             device="cpu", quiet=True, cache_root=str(cache))
    return runner.run(spec)


def _entries(cache_root):
    root = cache_root / "models"
    return sorted(p.name for p in root.rglob("*") if p.is_dir() and len(p.name) == 64) if root.is_dir() else []


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pack")
    _run(tmp, tmp / "cache-a", "a")
    manifest = export_pack(tmp / "a", tmp / "pack", Cache(tmp / "cache-a"))
    return tmp, manifest


@pytest.fixture(scope="module")
def imported(exported):
    """The pack imported into an empty cache and the same run made there (run directory ``b``): what the import
    returned, and the cache's model entries before and after the run."""
    tmp, _ = exported
    got = import_pack(tmp / "pack", Cache(tmp / "cache-b"))
    before = _entries(tmp / "cache-b")
    _run(tmp, tmp / "cache-b", "b")
    return got, before, _entries(tmp / "cache-b")


def test_a_pack_round_trip_trains_nothing_and_gives_the_same_rows(exported, imported):
    tmp, manifest = exported
    got, before, after = imported
    assert {e["namespace"] for e in manifest["entries"]} <= set(ARTEFACT_NAMESPACES)
    assert {"models/trained", "models/autoencoder", "models/customized", "customized-model-queries"} <= \
        {e["namespace"] for e in manifest["entries"]}
    assert got == {"pack_hash": manifest["pack_hash"], "imported": len(manifest["entries"]), "present": 0,
                   "entries": len(manifest["entries"])}
    assert before
    assert after == before  # no model trained or customized
    a, b = results.read_rows(tmp / "a"), results.read_rows(tmp / "b")
    assert [r["cell_id"] for r in a] == [r["cell_id"] for r in b]
    assert [r["metrics"] for r in a] == [r["metrics"] for r in b]
    assert {r.get("pack") for r in b} == {manifest["pack_hash"]} and all("pack" not in r for r in a)
    run_b = json.loads((tmp / "b" / "run.json").read_text())
    assert run_b["benchmarks"]["customized-model"]["provenance"]["pack"] == manifest["pack_hash"]
    # importing again stores nothing new; exporting from the second cache gives the same pack hash
    assert import_pack(tmp / "pack", Cache(tmp / "cache-b"))["present"] == len(manifest["entries"])
    again = export_pack(tmp / "b", tmp / "pack-b", Cache(tmp / "cache-b"))
    assert again["pack_hash"] == manifest["pack_hash"]


def test_a_damaged_pack_is_refused_before_anything_is_stored(exported, tmp_path):
    import shutil

    tmp, manifest = exported
    bad = tmp_path / "bad"
    shutil.copytree(tmp / "pack", bad)
    e = manifest["entries"][0]
    rel = next(iter(e["files"]))
    f = bad / "entries" / e["namespace"] / e["key"] / rel
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(UserError, match="missing or damaged"):
        import_pack(bad, Cache(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "models").exists()
    with pytest.raises(UserError, match="not a genattr pack"):
        import_pack(tmp_path, Cache(tmp_path / "cache"))
    with pytest.raises(UserError, match="exists and is not empty"):
        export_pack(tmp / "a", tmp / "pack", Cache(tmp / "cache-a"))


def test_the_leaderboard_pools_rows_only_within_one_pack(exported, imported):
    """Runs of one configuration scored on a pack and on locally trained models are two boards, each saying so."""
    from genattr.harness import leaderboard

    tmp, manifest = exported
    md = leaderboard.render([tmp / "a", tmp / "b"], "md")
    assert f"pack {manifest['pack_hash'][:12]}" in md and "no pack" in md
    assert md.count("## customized-model") == 2 and "Inputs differ" in md
    one = leaderboard.render([tmp / "b"], "md")
    assert "Inputs differ" not in one and f"pack {manifest['pack_hash'][:12]}" in one
