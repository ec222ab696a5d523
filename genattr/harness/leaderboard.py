"""The leaderboard: tables, figures and a static HTML page from stored results alone (no models, no torch).

Rows of ``results.jsonl`` are grouped by (benchmark, the cell's group keys, method); each metric is summarised as
mean ± standard error over the group's cells (standard error = sample standard deviation / √n; shown without
"±" when n = 1). The best mean of every column is marked (bold), the direction taken from ``higher_is_better``
stored in the rows. Every benchmark gets one table: methods as rows, one column per (metric, group) — for
leave-k-out that is the paper's Table 1 (ΔL, MSE, similarity by K), for customized-model Figure 6's numbers
(Recall@10, mAP by split). Figures: one panel per metric; lines against the group key when it is a single numeric
key (ΔL against K), grouped bars per group value otherwise (Recall@10 and mAP per split, as Figure 6).

Rows for the same benchmark written with different benchmark configurations (several DIRs of different scales)
are kept apart: the table title then carries the scale and the configuration hash. A method run with two
configurations is shown twice, labelled with a short hash of its configuration.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError
from .results import RESULTS_FILE, SCHEMA_VERSION, check_writable, read_rows, read_run

FORMATS = ("md", "csv", "html", "json")

#: Markdown tables wider than this many value columns are split into several tables (by metric).
MD_MAX_COLUMNS = 8
#: Figures show (at most) this many metrics: the first ones the benchmark declares (its headline metrics).
FIGURE_MAX_METRICS = 4


@dataclass
class Board:
    """One benchmark's summary: a long table (one row per method × group × metric) and its metadata."""

    title: str
    benchmark: str
    version: str
    config_hash: str
    scale: str | None
    group_keys: list[str]
    label_keys: list[str]  # the group keys that tell groups apart (keys determined by earlier ones are left out)
    metrics: list[str]
    higher_is_better: dict[str, bool | None]
    methods: list[str]
    groups: list[str]
    cells: int
    summary: Any  # pandas DataFrame: method, group, metric, mean, sem, n, best (+ one column per group key)
    figure: bytes | None = None
    directories: list[str] = field(default_factory=list)


# -- loading ---------------------------------------------------------------------------------------------------
def load(dirs: Sequence[str | os.PathLike]) -> tuple[list[dict], dict[str, dict]]:
    """All rows of the given run directories (duplicates of the same cell dropped) and their run.json documents."""
    if not dirs:
        raise UserError("give at least one results directory")
    rows: list[dict] = []
    runs: dict[str, dict] = {}
    seen: set[tuple] = set()
    for d in dirs:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise UserError(f"results directory {str(d)!r} does not exist")
        if not (p / RESULTS_FILE).is_file():
            raise UserError(f"no {RESULTS_FILE} in {str(d)!r}; run 'genattr run --out {d}' first")
        runs[str(d)] = read_run(p) or {}
        for r in read_rows(p):
            if int(r.get("schema_version", 0) or 0) > SCHEMA_VERSION:
                raise UserError(f"{p / RESULTS_FILE} was written by a newer genattr; upgrade genattr to read it")
            key = (r.get("config_hash"), r.get("cell_id"))
            if key in seen:
                continue
            seen.add(key)
            r["_dir"] = str(d)
            rows.append(r)
    return rows, runs


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label_keys(keys: Sequence[str], groups: Sequence[dict]) -> list[str]:
    """``keys`` without those whose value is determined by the keys before them (leave-k-out's ``K_frac`` next to
    ``K``), so labels and figure axes stay short."""
    kept: list[str] = []
    for k in keys:
        seen: dict[tuple, Any] = {}
        determined = bool(kept)
        for g in groups:
            head = tuple(json.dumps(g.get(x), sort_keys=True) for x in kept)
            v = json.dumps(g.get(k), sort_keys=True)
            if seen.setdefault(head, v) != v:
                determined = False
                break
        if not determined:
            kept.append(k)
    return kept


def _group_label(group: dict, keys: Sequence[str]) -> str:
    if not keys:
        return "all"
    if len(keys) == 1 and isinstance(group.get(keys[0]), str):
        return group[keys[0]]
    return ", ".join(f"{k}={group.get(k)}" for k in keys)


def _fmt(mean: float, sem: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if n < 2 or sem is None or math.isnan(sem):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {sem:.2g}"


def summarise(rows: list[dict]) -> list[Board]:
    """Group rows into one :class:`Board` per (benchmark, benchmark configuration)."""
    import pandas as pd

    by_bench: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_bench.setdefault((r.get("benchmark", "?"), r.get("benchmark_config_hash", "")), []).append(r)
    names = [b for b, _ in by_bench]
    boards = []
    for (bench, bhash), brow in by_bench.items():
        # method labels: the name, plus a short config hash where one name has several configurations
        cfgs: dict[str, list[str]] = {}
        for r in brow:
            h = r.get("config_hash", "")
            lst = cfgs.setdefault(r.get("method", "?"), [])
            if h not in lst:
                lst.append(h)
        group_keys: list[str] = []
        metrics: list[str] = []
        hib: dict[str, bool | None] = {}
        records = []
        for r in brow:
            for k in r.get("group", {}) or {}:
                if k not in group_keys:
                    group_keys.append(k)
            for k, v in (r.get("higher_is_better") or {}).items():
                if hib.get(k) is None:
                    hib[k] = v
        label_keys = _label_keys(group_keys, [r.get("group", {}) or {} for r in brow])
        first_seen: dict[str, int] = {}
        for r in brow:
            m = r.get("method", "?")
            label = m if len(cfgs[m]) == 1 else f"{m}@{str(r.get('config_hash', ''))[:6]}"
            g = r.get("group", {}) or {}
            glabel = _group_label(g, label_keys)
            first_seen.setdefault(glabel, len(first_seen))
            for k, v in (r.get("metrics") or {}).items():
                if k not in metrics:
                    metrics.append(k)
                records.append({"method": label, "group": glabel, "metric": k,
                                "value": float("nan") if v is None else float(v),
                                **{f"group.{gk}": g.get(gk) for gk in group_keys}})
        df = pd.DataFrame.from_records(records)
        if df.empty:
            continue
        # order: metrics as the benchmark declares them (then as seen), groups numerically, methods as seen
        declared = [m for m in hib if m in metrics]
        metrics = declared + [m for m in metrics if m not in declared]
        methods = list(dict.fromkeys(df["method"]))
        gvals = {}
        for r in brow:
            g = r.get("group", {}) or {}
            gvals[_group_label(g, label_keys)] = tuple(g.get(k) for k in label_keys)

        def gsort(label: str):
            vals = gvals[label]
            return tuple((0, v, "") if _is_number(v) else (1, 0, str(first_seen[label])) for v in vals) or ((0, 0, ""),)

        groups = sorted(gvals, key=gsort)
        gcols = [f"group.{gk}" for gk in group_keys]
        agg = (df.groupby(["method", "group", "metric"], sort=False)["value"]
               .agg(mean="mean", sem=lambda s: s.std(ddof=1) / math.sqrt(s.count()) if s.count() > 1 else float("nan"),
                    n="count")
               .reset_index())
        if gcols:
            first = df.drop_duplicates(["group"]).set_index("group")[gcols]
            agg = agg.join(first, on="group")
        agg["higher_is_better"] = agg["metric"].map(lambda m: hib.get(m))
        best = []
        for _, r in agg.iterrows():
            direction = hib.get(r["metric"])
            col = agg[(agg["metric"] == r["metric"]) & (agg["group"] == r["group"])]["mean"].dropna()
            if (direction is None or col.empty or math.isnan(r["mean"]) or len(col) < 2
                    or math.isclose(col.max(), col.min(), rel_tol=1e-12, abs_tol=1e-15)):  # all tied: no best
                best.append(False)
                continue
            target = col.max() if direction else col.min()
            best.append(bool(math.isclose(r["mean"], target, rel_tol=1e-12, abs_tol=1e-15)))
        agg["best"] = best
        agg["method"] = pd.Categorical(agg["method"], methods, ordered=True)
        agg["group"] = pd.Categorical(agg["group"], groups, ordered=True)
        agg["metric"] = pd.Categorical(agg["metric"], metrics, ordered=True)
        agg = agg.sort_values(["metric", "group", "method"]).reset_index(drop=True)
        for c in ("method", "group", "metric"):
            agg[c] = agg[c].astype(str)
        scale = brow[0].get("scale")
        title = bench
        if names.count(bench) > 1:
            title = f"{bench} [{scale}, {bhash[:8]}]"
        boards.append(Board(
            title=title, benchmark=bench, version=str(brow[0].get("benchmark_version", "")), config_hash=bhash,
            scale=scale, group_keys=group_keys, label_keys=label_keys, metrics=metrics, higher_is_better=hib,
            methods=methods,
            groups=groups, cells=len(brow), summary=agg,
            directories=list(dict.fromkeys(r["_dir"] for r in brow if "_dir" in r)),
        ))
    return boards


# -- tables -----------------------------------------------------------------------------------------------------
def _arrow(hib: bool | None) -> str:
    return " ↑" if hib is True else " ↓" if hib is False else ""


def wide_table(board: Board, mark=("**", "**"), escape=lambda s: s, metrics: Sequence[str] | None = None):
    """Methods × (metric, group) table of "mean ± sem" strings, the best of each column wrapped in ``mark``."""
    import pandas as pd

    columns = []
    for metric in (metrics if metrics is not None else board.metrics):
        for group in board.groups:
            columns.append((metric, group))
    data = {c: [] for c in columns}
    s = board.summary.set_index(["method", "metric", "group"])
    for method in board.methods:
        for metric, group in columns:
            try:
                r = s.loc[(method, metric, group)]
            except KeyError:
                data[(metric, group)].append("")
                continue
            text = escape(_fmt(r["mean"], r["sem"], int(r["n"])))
            data[(metric, group)].append(f"{mark[0]}{text}{mark[1]}" if r["best"] else text)
    header = [(escape(f"{m}{_arrow(board.higher_is_better.get(m))}"), escape(g)) for m, g in columns]
    df = pd.DataFrame({h: data[c] for h, c in zip(header, columns)}, index=[escape(m) for m in board.methods])
    df.index.name = "method"
    if not board.group_keys:
        df.columns = [h[0] for h in header]
    else:
        df.columns = pd.MultiIndex.from_tuples(header, names=["metric", " / ".join(board.label_keys)])
    return df


def _board_caption(board: Board) -> str:
    parts = [f"version {board.version}"]
    if board.scale:
        parts.append(f"scale {board.scale}")
    parts.append(f"{board.cells} cells")
    if board.label_keys:
        parts.append("columns by " + ", ".join(board.label_keys))
    parts.append(f"config {board.config_hash[:12]}")
    return "; ".join(parts)


def to_markdown(boards: list[Board], figure_links: dict[str, str] | None = None) -> str:
    from tabulate import tabulate

    out = []
    for b in boards:
        out.append(f"## {b.title}\n\n{_board_caption(b)}; mean ± standard error over cells, best in bold.\n")
        per_table = max(1, MD_MAX_COLUMNS // max(1, len(b.groups)))
        for i in range(0, len(b.metrics), per_table):
            df = wide_table(b, metrics=b.metrics[i:i + per_table])
            headers = ["method"] + [" ".join(c) if isinstance(c, tuple) else c for c in df.columns]
            body = [[idx] + list(row) for idx, row in zip(df.index, df.itertuples(index=False))]
            if i:
                out.append("")
            out.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
        if figure_links and b.title in figure_links:
            out.append(f"\n![{b.title}]({figure_links[b.title]})")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def to_csv(boards: list[Board]) -> str:
    import pandas as pd

    frames = []
    for b in boards:
        df = b.summary.copy()
        df.insert(0, "benchmark", b.benchmark)
        df.insert(1, "benchmark_version", b.version)
        df.insert(2, "benchmark_config_hash", b.config_hash)
        df.insert(3, "scale", b.scale)
        frames.append(df)
    if not frames:
        return ""
    cols = ["benchmark", "benchmark_version", "benchmark_config_hash", "scale", "method", "group"]
    all_df = pd.concat(frames, ignore_index=True)
    gcols = sorted(c for c in all_df.columns if c.startswith("group."))
    rest = ["metric", "mean", "sem", "n", "higher_is_better", "best"]
    return all_df[cols + gcols + rest].to_csv(index=False)


def _json_records(df) -> list[dict]:
    recs = json.loads(df.to_json(orient="records"))
    return recs


def to_json(boards: list[Board], runs: dict[str, dict] | None = None) -> str:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "benchmarks": [{
            "title": b.title, "benchmark": b.benchmark, "version": b.version, "config_hash": b.config_hash,
            "scale": b.scale, "group_keys": b.group_keys, "label_keys": b.label_keys,
            "metrics": b.metrics,
            "higher_is_better": b.higher_is_better, "methods": b.methods, "groups": b.groups, "cells": b.cells,
            "summary": _json_records(b.summary),
        } for b in boards],
    }
    if runs is not None:
        doc["provenance"] = runs
    return json.dumps(doc, indent=2, ensure_ascii=False)


# -- figures ----------------------------------------------------------------------------------------------------
def figure_png(board: Board) -> bytes:
    """One panel per metric (the first :data:`FIGURE_MAX_METRICS`): lines against a single numeric group key,
    grouped bars per group value otherwise."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    s = board.summary
    keys = board.label_keys
    numeric = len(keys) == 1 and all(_is_number(v) for v in s[f"group.{keys[0]}"].dropna().tolist()) if keys else False
    shown = board.metrics[:FIGURE_MAX_METRICS]
    n = len(shown)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 3.6 * n), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        sm = s[s["metric"] == metric]
        if numeric:
            key = f"group.{keys[0]}"
            for method in board.methods:
                d = sm[sm["method"] == method].sort_values(key)
                if d.empty:
                    continue
                ax.errorbar(d[key].astype(float), d["mean"], yerr=d["sem"].fillna(0.0), marker="o", capsize=3,
                            label=method)
            xs = sorted({float(v) for v in sm[key].dropna()})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlabel(keys[0])
        else:
            width = 0.8 / max(1, len(board.methods))
            x = np.arange(len(board.groups))
            for i, method in enumerate(board.methods):
                d = sm[sm["method"] == method].set_index("group").reindex(board.groups)
                ax.bar(x + (i - (len(board.methods) - 1) / 2) * width, d["mean"].fillna(0.0), width,
                       yerr=d["sem"].fillna(0.0), capsize=2, label=method)
            ax.set_xticks(x, board.groups, rotation=0 if len(board.groups) < 4 else 30)
        ax.set_title(f"{metric}{_arrow(board.higher_is_better.get(metric))}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(board.title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "benchmark"


# -- HTML -------------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
strong{color:#0a5}
img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}
.caption{color:#555;font-size:.9em}
"""


def _provenance_html(runs: dict[str, dict]) -> str:
    parts = ["<h2 id=\"provenance\">Provenance</h2>"]
    for d, run in runs.items():
        e = html.escape
        env = run.get("environment", {}) or {}
        git = env.get("git") or {}
        pk = env.get("packages", {}) or {}
        rows = [
            ("directory", d),
            ("status", run.get("status")),
            ("genattr", run.get("genattr_version")),
            ("git", (git.get("commit", "") + (" (dirty)" if git.get("dirty") else "")) if git else None),
            ("config hash", run.get("config_hash")),
            ("seed / scale", f"{run.get('seed')} / {run.get('scale')}"),
            ("python / platform", f"{env.get('python')} / {env.get('platform')}"),
            ("devices", ", ".join(env.get("devices", []) or [])),
            ("torch / diffusers / transformers",
             " / ".join(str(pk.get(k)) for k in ("torch", "diffusers", "transformers"))),
            ("wall time (s)", (run.get("timings") or {}).get("wall_s")),
        ]
        parts.append(f"<h3>{e(d)}</h3><table>")
        for k, v in rows:
            parts.append(f"<tr><th>{e(k)}</th><td>{e('' if v is None else str(v))}</td></tr>")
        parts.append("</table>")
        benches = run.get("benchmarks", {}) or {}
        if benches:
            parts.append("<table><tr><th>benchmark</th><th>version</th><th>config hash</th><th>datasets</th>"
                         "<th>models</th><th>setup (s)</th></tr>")
            for name, b in benches.items():
                prov = b.get("provenance") or {}
                ds = prov.get("datasets", {})
                ms = prov.get("models", {})
                fmt = (lambda x: "<br>".join(f"{e(str(k))}: {e(str(v))[:16]}" for k, v in x.items())
                       if isinstance(x, dict) else e(str(x)))
                parts.append(f"<tr><td>{e(name)}</td><td>{e(str(b.get('version')))}</td>"
                             f"<td>{e(str(b.get('config_hash', ''))[:12])}</td><td>{fmt(ds)}</td><td>{fmt(ms)}</td>"
                             f"<td>{e(str(b.get('setup_s', '')))}</td></tr>")
            parts.append("</table>")
        plugins = run.get("plugins", []) or []
        if plugins:
            parts.append("<table><tr><th>plugin</th><th>version</th><th>distribution</th></tr>")
            for p in plugins:
                parts.append(f"<tr><td>{e(str(p.get('name')))}</td><td>{e(str(p.get('version')))}</td>"
                             f"<td>{e(str(p.get('distribution')))}</td></tr>")
            parts.append("</table>")
        parts.append("<details><summary>run.json</summary><pre>"
                     + e(json.dumps(run, indent=2, ensure_ascii=False)) + "</pre></details>")
    return "\n".join(parts)


def to_html(boards: list[Board], runs: dict[str, dict]) -> str:
    e = html.escape
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>genattr leaderboard</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>genattr leaderboard</h1>",
             f"<p class=\"caption\">Generated {e(now)} from {e(', '.join(runs))}. Mean ± standard error over cells; "
             "the best of each column in bold (↑ higher is better, ↓ lower is better).</p>"]
    if boards:
        parts.append("<ul>" + "".join(f"<li><a href=\"#{_slug(b.title)}\">{e(b.title)}</a></li>" for b in boards)
                     + "<li><a href=\"#provenance\">Provenance</a></li></ul>")
    for b in boards:
        df = wide_table(b, mark=("<strong>", "</strong>"), escape=e)
        parts.append(f"<h2 id=\"{_slug(b.title)}\">{e(b.title)}</h2>")
        parts.append(f"<p class=\"caption\">{e(_board_caption(b))}</p>")
        parts.append(df.to_html(escape=False, classes=["leaderboard"], border=0,
                                table_id=f"table-{_slug(b.title)}"))
        png = b.figure if b.figure is not None else figure_png(b)
        parts.append(f"<img alt=\"{e(b.title)} figure\" src=\"data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}\">")
    parts.append(_provenance_html(runs))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- entry point ------------------------------------------------------------------------------------------------
def render(dirs: Sequence[str | os.PathLike], fmt: str = "md", out: str | os.PathLike | None = None,
           figures_dir: str | os.PathLike | None = None) -> str:
    """Render the leaderboard of ``dirs`` in ``fmt``; write it to ``out`` when given (PNG figures beside a
    markdown file), PNG figures to ``figures_dir`` when given. Returns the rendered text."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out_path = Path(out).expanduser() if out is not None else None
    if out_path is not None:
        if out_path.is_dir():
            raise UserError(f"--out {str(out)!r} is a directory; give a file path")
        check_writable(out_path.parent, "--out")
    if figures_dir is not None:
        figures_dir = check_writable(figures_dir, "--figures")
    rows, runs = load(dirs)
    boards = summarise(rows)
    figure_files: dict[str, Path] = {}
    want_pngs = figures_dir is not None or (fmt == "md" and out_path is not None)
    if want_pngs or fmt == "html":
        for b in boards:
            b.figure = figure_png(b)
    if want_pngs:
        base = figures_dir if figures_dir is not None else out_path.parent
        stem = "" if figures_dir is not None else out_path.stem + "-"
        for b in boards:
            f = Path(base) / f"{stem}{_slug(b.title)}.png"
            f.write_bytes(b.figure)
            figure_files[b.title] = f
    if fmt == "md":
        links = None
        if out_path is not None:
            links = {t: os.path.relpath(p, out_path.parent) for t, p in figure_files.items()}
        text = to_markdown(boards, links)
    elif fmt == "csv":
        text = to_csv(boards)
    elif fmt == "json":
        text = to_json(boards, runs)
    else:
        text = to_html(boards, runs)
    if out_path is not None:
        try:
            out_path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write to --out {str(out)!r}: {exc.strerror}") from None
    return text
