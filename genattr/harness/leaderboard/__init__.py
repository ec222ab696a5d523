"""The leaderboard: tables, figures and a static site from stored results alone (no models, no torch).

Rows of ``results.jsonl`` are grouped by (benchmark, benchmark configuration) into boards, then by the cell's group
keys (split, K) and method. Every metric column is summarised as mean ± standard error over the group's cells
(:mod:`genattr.harness.statistics`), with n. Methods are compared over the same queries (rows paired by their
``params``): each method's paired difference to ``random`` and to the best other method, with a 95 % percentile
bootstrap interval, and a column's best is marked only when its interval against every other method excludes 0.
Columns with a pool suffix (customized-model's ``recall@10/all``) get tables of their own; cells of customized
models that failed verification (``extra.verified == False``) are left out of every number and listed.

Formats: ``md`` (also what ``genattr run`` prints; every table fits :data:`MD_WIDTH` columns, wide ones split by
metric), ``csv`` and ``json`` (the long summary), ``html`` (a static site in a directory, see :mod:`.site`).

Rows for the same benchmark written with different benchmark configurations (several DIRs of different scales)
are kept apart: the title then carries the scale and the configuration hash. A method run with two configurations
is shown twice, labelled with a short hash of its configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import UserError, did_you_mean
from ..results import check_writable
from .figures import FIGURE_MAX_METRICS, figure_png
from .columns import Column, check_headline
from .model import Board, slug, summarise
from .runs import load
from .text import MD_WIDTH, to_csv, to_json, to_markdown

FORMATS = ("md", "csv", "html", "json")

__all__ = ["FORMATS", "MD_WIDTH", "FIGURE_MAX_METRICS", "Board", "Column", "load", "summarise", "render",
           "to_markdown", "to_csv", "to_json", "figure_png"]


def render(dirs: Sequence[str | os.PathLike], fmt: str = "md", out: str | os.PathLike | None = None,
           figures_dir: str | os.PathLike | None = None, include_unverified: bool = False,
           pool_seeds: bool = True, pool_method_seeds: bool = True, headline: str | None = None,
           methods: Sequence[str] | None = None) -> str:
    """Render the leaderboard of ``dirs`` in ``fmt``. ``md``/``csv``/``json``: write to the file ``out`` when
    given (PNG figures beside a markdown file), PNG figures to ``figures_dir`` when given. ``html``: write the
    static site into the directory ``out`` (required). ``methods``: only these methods' rows (every configuration
    of each); a name no row has is a :class:`UserError` naming the methods there are. Returns the rendered text
    (``index.html`` for html)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out_path = Path(out).expanduser() if out is not None else None
    if fmt == "html":
        if out_path is None:
            raise UserError("--format html writes a site into a directory; give --out SITE/")
        if out_path.exists() and not out_path.is_dir():
            raise UserError(f"--out {str(out)!r} is a file; --format html writes a site into a directory")
        if out_path.suffix.lower() in (".html", ".htm") and not out_path.exists():
            raise UserError(f"--format html writes a site into a directory; give --out SITE/ (not {str(out)!r}); "
                            "it holds index.html")
    elif out_path is not None:
        if out_path.is_dir():
            raise UserError(f"--out {str(out)!r} is a directory; give a file path")
        check_writable(out_path.parent, "--out")
    if figures_dir is not None:
        figures_dir = check_writable(figures_dir, "--figures")
    rows, runs = load(dirs)
    if methods:
        have = sorted({str(r.get("method")) for r in rows})
        missing = [m for m in methods if m not in have]
        if missing:
            raise UserError(f"--method {missing[0]!r}: no results of it in these runs"
                            f"{did_you_mean(missing[0], have)}; methods there: {', '.join(have)}")
        rows = [r for r in rows if r.get("method") in set(methods)]
    boards = summarise(rows, runs, include_unverified=include_unverified, pool_seeds=pool_seeds,
                       pool_method_seeds=pool_method_seeds, headline=headline)
    check_headline(boards, headline)
    if fmt == "html":
        from .site import render_site

        site = check_writable(out_path, "--out")
        text = render_site(boards, runs, site)
        if figures_dir is not None:
            _write_pngs(boards, Path(figures_dir), "")
        return text
    figure_files: dict[str, Path] = {}
    if figures_dir is not None:
        figure_files = _write_pngs(boards, Path(figures_dir), "")
    elif fmt == "md" and out_path is not None:  # figures beside the markdown file
        figure_files = _write_pngs(boards, out_path.parent, out_path.stem + "-")
    if fmt == "md":
        links = None
        if out_path is not None:
            links = {t: os.path.relpath(p, out_path.parent) for t, p in figure_files.items()}
        text = to_markdown(boards, links)
    elif fmt == "csv":
        text = to_csv(boards)
    else:
        text = to_json(boards, runs)
    if out_path is not None:
        try:
            out_path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write to --out {str(out)!r}: {exc.strerror}") from None
    return text


def _write_pngs(boards: list[Board], base: Path, stem: str) -> dict[str, Path]:
    files = {}
    for b in boards:
        png = figure_png(b)
        if not png:
            continue
        f = base / f"{stem}{slug(b.title)}.png"
        try:
            f.write_bytes(png)
        except OSError as exc:
            raise UserError(f"cannot write the figure {str(f)!r}: {exc.strerror}") from None
        b.figure = png
        files[b.title] = f
    return files
