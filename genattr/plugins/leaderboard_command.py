"""The built-in ``genattr leaderboard`` command (registered by :mod:`genattr.plugins.commands`).

Nothing heavy is imported at module import: numpy, matplotlib and Jinja2 load only when the command runs.
"""

from __future__ import annotations

import click

LEADERBOARD_FORMATS = ("md", "csv", "html", "json")


@click.command(name="leaderboard")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(LEADERBOARD_FORMATS), default="md", show_default=True)
@click.option("--out", metavar="PATH",
              help="md/csv/json: write to the file PATH instead of stdout (markdown: figures as PNG beside it). "
                   "html: the directory the site is written into (required).")
@click.option("--figures", metavar="DIR", help="Also save every benchmark's figure as a PNG in DIR.")
@click.option("--include-unverified", is_flag=True,
              help="Keep cells of customized models that failed verification in the numbers (flagged either way).")
@click.option("--separate-seeds", is_flag=True,
              help="One board per run configuration: do not pool runs that differ only in their model seeds "
                   "(model_seeds, or --seed where a run has none).")
@click.option("--separate-method-seeds", is_flag=True,
              help="One row per method configuration: do not average the method seeds (option 'seed') of a "
                   "method whose configurations differ only in it.")
@click.option("--headline", metavar="METRIC",
              help="Rank rows by METRIC (a key such as ap or delta-loss, or a display name such as mAP) and report "
                   "its paired differences, on every board that has it; default: the first metric a benchmark "
                   "declares (Recall@10, ΔL, LDS).")
@click.option("-m", "--method", "methods", multiple=True, metavar="METHOD",
              help="Only this method's rows (repeat for several; every configuration of each). Default: all.")
def leaderboard_command(dirs, fmt, out, figures, include_unverified, separate_seeds, separate_method_seeds,
                        headline, methods):
    """Tables (mean ± s.e. and n, paired differences with 95 % bootstrap intervals, best marked only when
    separated), figures and a static HTML site from the results in DIRS alone — no models needed."""
    from genattr.harness import leaderboard

    text = leaderboard.render(list(dirs), fmt, out=out, figures_dir=figures, include_unverified=include_unverified,
                              pool_seeds=not separate_seeds, pool_method_seeds=not separate_method_seeds,
                              headline=headline, methods=list(methods) or None)
    if out is None:
        click.echo(text, nl=False)
    elif fmt == "html":
        click.echo(f"genattr: wrote the site {out} (open {out.rstrip('/')}/index.html)", err=True)
    else:
        click.echo(f"genattr: wrote {out}", err=True)
