"""``genattr pack export RUN_DIR PACK`` / ``genattr pack import PACK``: benchmark artefact packs
(:mod:`genattr.harness.packs`)."""

from __future__ import annotations

import click


@click.group(name="pack")
def pack_command():
    """Benchmark artefact packs: the fixed inputs (models, deltas, queries, θ0, LDS subset outputs, teacher
    rankings) a run's results depend on, content-hashed, to score methods on the same artefacts elsewhere."""


@pack_command.command(name="export")
@click.argument("run_dir", metavar="RUN_DIR")
@click.argument("pack", metavar="PACK")
def export_command(run_dir, pack):
    """Write the artefacts of the benchmarks of RUN_DIR (read from the genattr cache) to the new folder PACK."""
    from genattr.harness import progress
    from genattr.harness.packs import export_pack

    progress.configure_logging(quiet=True)  # the set-up is replayed from the cache: its warnings were the run's
    progress.enable(False)
    m = export_pack(run_dir, pack)
    click.echo(f"genattr: wrote {pack}: {len(m['entries'])} artefacts, {m['bytes'] / 1e6:.1f} MB, pack "
               f"{m['pack_hash'][:12]}", err=True)
    click.echo(m["pack_hash"])


@pack_command.command(name="import")
@click.argument("pack", metavar="PACK")
def import_command(pack):
    """Verify PACK and put its artefacts into the genattr cache (GENATTR_CACHE); later runs use them instead of
    training, and record the pack's hash in their rows."""
    from genattr.harness.packs import import_pack

    got = import_pack(pack)
    click.echo(f"genattr: imported pack {got['pack_hash'][:12]}: {got['imported']} artefacts stored, "
               f"{got['present']} already in the cache", err=True)
    click.echo(got["pack_hash"])
