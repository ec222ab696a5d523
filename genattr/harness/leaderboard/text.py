"""Markdown (also what the terminal shows), CSV and JSON renderings of the boards."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from typing import Sequence

from ..results import SCHEMA_VERSION, clean_json
from .model import Board, pool_title
from .notes import LEGEND, caption, notes

#: Markdown / terminal tables never get wider than this many characters: wide ones are split by metric.
MD_WIDTH = 120


def _md_lines(headers: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    widths = [max(3, w) for w in widths]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body]


def table_width(headers: Sequence[str], body: Sequence[Sequence[str]]) -> int:
    widths = [max([len(h), 3] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    return sum(widths) + 3 * len(widths) + 1


def fit_tables(fixed: list[tuple[str, list[str]]], columns: list[tuple[str, list[str]]],
               width: int = MD_WIDTH) -> list[list[str]]:
    """Markdown tables of the ``fixed`` columns (repeated in each) plus as many of ``columns`` (in order) as fit
    in ``width`` characters; a column that does not fit starts the next table."""
    tables: list[list[str]] = []
    chunk: list[tuple[str, list[str]]] = []

    def emit():
        cols = fixed + chunk
        headers = [h for h, _ in cols]
        body = [list(r) for r in zip(*[c for _, c in cols])]
        tables.append(_md_lines(headers, body))

    for col in columns:
        trial = fixed + chunk + [col]
        headers = [h for h, _ in trial]
        body = [list(r) for r in zip(*[c for _, c in trial])]
        if chunk and table_width(headers, body) > width:
            emit()
            chunk = []
        chunk.append(col)
    if chunk or not tables:
        emit()
    return tables


def _wrap(text: str, width: int = MD_WIDTH) -> str:
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False))


def _row_labels(board: Board, order: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """The fixed columns of a group × method table: the group (shown once per run of rows) and the method."""
    fixed: list[tuple[str, list[str]]] = []
    if board.label_keys:
        glabels, last = [], None
        for g, _ in order:
            glabels.append(g if g != last else "")
            last = g
        fixed.append((" / ".join(board.label_keys), glabels))
    fixed.append(("method", [m for _, m in order]))
    return fixed


def board_tables(board: Board, pool: str | None, width: int = MD_WIDTH, bold=("**", "**")) -> list[list[str]]:
    """One pool's long table (rows: group × method) split to fit ``width``."""
    cols = board.pool_columns(pool)
    order = [(g, m) for g in board.groups for m in board.ranked(g, pool)]
    fixed = _row_labels(board, order)
    fixed.append(("n", [str(board.n_label(m, g)) for g, m in order]))
    values: list[tuple[str, list[str]]] = []
    for c in cols:
        cells = []
        for g, m in order:
            s = board.stats.get((m, g, c.key))
            text = c.mean_se(s)
            cells.append(f"{bold[0]}{text}{bold[1]}" if s and s.get("best") else text)
        values.append((c.header(), cells))
    head = cols[0] if cols else None
    if head is not None and board.reference:
        values.append((f"{head.display} − {board.reference} (95% CI)",
                       [head.interval(board.stats.get((m, g, head.key), {}).get("vs_reference"))
                        for g, m in order]))
    if head is not None and head.higher_is_better is not None and len(board.methods) > 1:
        values.append((f"{head.display} − best other (95% CI)",
                       [head.interval(board.stats.get((m, g, head.key), {}).get("vs_best_other"), name=True)
                        for g, m in order]))
    return fit_tables(fixed, values, width)


def seed_tables(board: Board, width: int = MD_WIDTH) -> list[list[str]]:
    """The headline column's mean per model seed (rows: group × method) and its spread (max − min over seeds)."""
    seeds = board.seeds
    cols = board.pool_columns(board.pools[0]) if board.columns else []
    if len(seeds) < 2 or not cols:
        return []
    head = cols[0]
    order = [(g, m) for g in board.groups for m in board.ranked(g, board.pools[0])
             if (m, g, head.key) in board.by_seed]
    fixed = _row_labels(board, order)
    values = []
    for s in seeds:
        cells = []
        for g, m in order:
            st = board.by_seed[(m, g, head.key)].get(s)
            cells.append("–" if st is None else f"{head.num(st['mean'])} ({st['n']})")
        values.append((f"{head.display} seed {s} (n)", cells))
    spread = []
    for g, m in order:
        means = [st["mean"] for st in board.by_seed[(m, g, head.key)].values()]
        spread.append(head.num(max(means) - min(means)) if len(means) > 1 else "–")
    values.append(("max − min", spread))
    return fit_tables(fixed, values, width)


def to_markdown(boards: list[Board], figure_links: dict[str, str] | None = None, width: int = MD_WIDTH) -> str:
    out = [_wrap(LEGEND, width), ""] if boards else []
    for b in boards:
        out.append(f"## {b.title}\n")
        out.append(_wrap(caption(b), width))
        note = notes(b)
        if note:
            out.append("\n" + _wrap(note, width))
        pools = b.pools
        for pool in pools:
            if len(pools) > 1 or pool is not None:
                label = pool_title(b.benchmark, pool)
                note = b.pool_note(pool)
                out.append("\n" + _wrap(f"{label}: {note}" if note else label, width))
            for t in board_tables(b, pool, width):
                out.append("")
                out.extend(t)
        tables = seed_tables(b, width)
        if tables:
            out.append("\n" + _wrap(f"Per model seed ({b.headline(b.pools[0]).header(arrow=False)}, mean over the seed's "
                                     "cells, n in brackets): the spread between base models beside the pooled mean.",
                                     width))
            for t in tables:
                out.append("")
                out.extend(t)
        if figure_links and b.title in figure_links:
            out.append(f"\n![{b.title}]({figure_links[b.title]})")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


CSV_HEAD = ["benchmark", "benchmark_version", "benchmark_config_hash", "scale", "method", "group"]
CSV_TAIL = ["metric", "display", "mean", "sem", "n", "higher_is_better", "best", "reference", "diff_reference",
            "diff_reference_lo", "diff_reference_hi", "n_reference", "best_other", "diff_best_other",
            "diff_best_other_lo", "diff_best_other_hi", "n_best_other"]


def to_csv(boards: list[Board]) -> str:
    records = []
    gcols: set[str] = set()
    for b in boards:
        for rec in b.summary():
            rec = {"benchmark": b.benchmark, "benchmark_version": b.version, "benchmark_config_hash": b.config_hash,
                   "scale": b.scale, **rec}
            gcols.update(k for k in rec if k.startswith("group."))
            records.append(rec)
    if not records:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_HEAD + sorted(gcols) + CSV_TAIL, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if v is None else v) for k, v in clean_json(rec).items()})
    return buf.getvalue()


def board_json(b: Board) -> dict:
    return {
        "title": b.title, "benchmark": b.benchmark, "version": b.version, "config_hash": b.config_hash,
        "config_hashes": b.config_hashes, "model_seeds": b.model_seeds, "scale": b.scale, "group_keys": b.group_keys, "label_keys": b.label_keys, "metrics": b.metrics,
        "columns": {k: {"display": c.display, "unit": c.unit, "pool": c.pool, "metric": c.metric,
                        "higher_is_better": c.higher_is_better, "scale_exponent": -c.exp, "decimals": c.decimals}
                    for k, c in b.columns.items()},
        "higher_is_better": b.higher_is_better, "methods": b.methods, "groups": b.groups, "cells": b.cells,
        "reference": b.reference, "unverified_concepts": b.unverified, "unverified_cells": len(b.excluded),
        "regime": b.regime,
        "unverified_included": b.include_unverified, "summary": b.summary(),
        "by_model_seed": [{"method": m, "group": g, "metric": k, "model_seed": s, **st}
                          for (m, g, k), per in b.by_seed.items() for s, st in per.items()],
        "method_seeds": b.method_seeds, "method_seed_repeats": b.seed_repeats,
    }


def to_json(boards: list[Board], runs: dict[str, dict] | None = None) -> str:
    doc: dict = {"schema_version": SCHEMA_VERSION, "benchmarks": [board_json(b) for b in boards]}
    if runs is not None:
        doc["provenance"] = runs
    return json.dumps(clean_json(doc), indent=2, ensure_ascii=False)
