"""The built-in ``genattr leaderboard`` command (registered by :mod:`genattr.plugins.commands`).

Nothing heavy is imported at module import: pandas, matplotlib and Jinja2 load only when the command runs.
"""

from __future__ import annotations

import click

LEADERBOARD_FORMATS = ("md", "csv", "html", "json")


@click.command(name="leaderboard")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(LEADERBOARD_FORMATS), default="md", show_default=True)
@click.option("--out", metavar="PATH", help="Write to PATH instead of stdout (markdown: figures as PNG beside it).")
@click.option("--figures", metavar="DIR", help="Also save every figure as a PNG in DIR.")
def leaderboard_command(dirs, fmt, out, figures):
    """Tables (mean ± standard error, best per column marked), figures and an HTML page from the results in DIRS
    alone — no models needed."""
    from genattr.harness import leaderboard

    text = leaderboard.render(list(dirs), fmt, out=out, figures_dir=figures)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"genattr: wrote {out}", err=True)
