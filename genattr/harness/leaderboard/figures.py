"""Figures of a board (matplotlib, PNG or SVG bytes), chosen from the shape of the data:

* **scatter** (the paper's Fig. 6): Recall@10 against mAP, one panel per group (split), one point per method with
  its standard errors, when the pool has both columns;
* **lines** against a single numeric group key (ΔL against K), one panel per metric, error bars ± s.e.;
* **bars** otherwise (any other benchmark, e.g. ``lds``): one panel per metric, a bar per method (grouped by group
  when there are several) with its 95 % interval of the mean (± 1.96 s.e.).
"""

from __future__ import annotations

import io
import math

from .columns import Column, _is_number
from .model import Board

#: Figures show (at most) this many metrics: the first ones the benchmark declares (its headline metrics).
FIGURE_MAX_METRICS = 4


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, fmt: str) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    if fmt == "svg":
        import matplotlib

        with matplotlib.rc_context({"svg.hashsalt": "genattr", "svg.fonttype": "path"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _colors(board: Board) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: matplotlib.colors.to_hex(cmap(i % 10)) for i, m in enumerate(board.methods)}


def scatter_columns(board: Board, pool: str | None) -> tuple[Column, Column] | None:
    """(Recall@10, mAP) of the pool when it has both: by column name, or by the registered metric run.json names."""
    recall = ap = None
    for c in board.pool_columns(pool):
        if recall is None and (c.base == "recall@10" or (c.metric == "recall-at-k" and c.base.endswith("10"))):
            recall = c
        if ap is None and (c.base in ("ap", "map") or c.metric == "average-precision"):
            ap = c
    return (recall, ap) if recall is not None and ap is not None else None


def numeric_key(board: Board) -> str | None:
    """The single numeric group key (leave-k-out's K) the lines and the metric × K table are drawn against."""
    if len(board.label_keys) != 1:
        return None
    k = board.label_keys[0]
    vals = [board.group_values[g].get(k) for g in board.groups]
    return k if vals and all(_is_number(v) for v in vals) else None


def kind(board: Board, pool: str | None = None) -> str:
    if scatter_columns(board, pool):
        return "scatter"
    if numeric_key(board) and len(board.groups) > 1:
        return "lines"
    return "bars"


def _finite(x) -> bool:
    return _is_number(x) and math.isfinite(x)


def _se(s: dict | None) -> float:
    return s["se"] if s and _finite(s.get("se")) else 0.0


def scatter(board: Board, pool: str | None, fmt: str = "svg") -> bytes:
    plt = _plt()
    recall, ap = scatter_columns(board, pool)
    colors = _colors(board)
    n = len(board.groups)
    fig, axes = plt.subplots(1, n, figsize=(min(11.0, 4.2 * n + 1.5), 4.0), squeeze=False)
    # points carry numbers, the legend the names ("1 unlearning"): method names written beside the points overlap
    # as soon as two methods score alike
    number = {m: i + 1 for i, m in enumerate(board.methods)}
    for ax, g in zip(axes[0], board.groups):
        for m in board.methods:
            sx, sy = board.stats.get((m, g, ap.key)), board.stats.get((m, g, recall.key))
            if not sx or not sy or not (_finite(sx["mean"]) and _finite(sy["mean"])):
                continue
            ax.errorbar(sx["mean"], sy["mean"], xerr=_se(sx), yerr=_se(sy), fmt="o", ms=7, capsize=3,
                        color=colors[m], label=f"{number[m]} {m}")
            ax.annotate(str(number[m]), (sx["mean"], sy["mean"]), ha="center", va="center", fontsize=6,
                        color="white", fontweight="bold")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(ap.header(arrow=False))
        ax.set_ylabel(recall.header(arrow=False))
        ax.set_title(g)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small", frameon=False)
    title = f"{board.title}: {recall.display} vs {ap.display}" + (f" (pool /{pool})" if pool else "")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, fmt)


def lines(board: Board, pool: str | None, fmt: str = "svg") -> bytes:
    plt = _plt()
    key = numeric_key(board)
    cols = board.pool_columns(pool)[:FIGURE_MAX_METRICS]
    colors = _colors(board)
    n = len(cols)
    fig, axes = plt.subplots(1, n, figsize=(min(11.0, 3.4 * n + 0.6), 3.4), squeeze=False)
    xs_all = sorted({float(board.group_values[g][key]) for g in board.groups})
    for ax, c in zip(axes[0], cols):
        scale = 10.0 ** c.exp
        for m in board.methods:
            pts = [(float(board.group_values[g][key]), board.stats.get((m, g, c.key))) for g in board.groups]
            pts = [(x, s) for x, s in pts if s and _finite(s["mean"])]
            if not pts:
                continue
            ax.errorbar([x for x, _ in pts], [s["mean"] * scale for _, s in pts],
                        yerr=[_se(s) * scale for _, s in pts], marker="o", capsize=3, color=colors[m], label=m)
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        ax.set_xlabel(key)
        ax.set_title(c.header())
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small", frameon=False)
    fig.suptitle(f"{board.title}: mean ± s.e. against {key}" + (f" (pool /{pool})" if pool else ""))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, fmt)


def bars(board: Board, pool: str | None, fmt: str = "svg") -> bytes:
    import numpy as np

    plt = _plt()
    cols = board.pool_columns(pool)[:FIGURE_MAX_METRICS]
    colors = _colors(board)
    n = len(cols)
    fig, axes = plt.subplots(1, n, figsize=(min(11.0, max(4.0, 3.6 * n)), 3.6), squeeze=False)
    for ax, c in zip(axes[0], cols):
        scale = 10.0 ** c.exp
        width = 0.8 / max(1, len(board.methods))
        x = np.arange(len(board.groups))
        for i, m in enumerate(board.methods):
            means, errs = [], []
            for g in board.groups:
                s = board.stats.get((m, g, c.key))
                means.append(s["mean"] * scale if s and _finite(s["mean"]) else 0.0)
                errs.append(1.96 * _se(s) * scale)
            ax.bar(x + (i - (len(board.methods) - 1) / 2) * width, means, width, yerr=errs, capsize=3,
                   color=colors[m], label=m)
        ax.set_xticks(x, board.groups, rotation=0 if len(board.groups) < 4 else 30)
        if len(board.groups) == 1:
            ax.set_xticks([])
        ax.axhline(0, color="#444", lw=0.8)
        ax.set_title(c.header())
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small", frameon=False)
    fig.suptitle(f"{board.title}: mean with 95 % interval (± 1.96 s.e.)" + (f" (pool /{pool})" if pool else ""))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, fmt)


def figure(board: Board, pool: str | None = None, fmt: str = "svg") -> bytes | None:
    if not board.pool_columns(pool):
        return None
    return {"scatter": scatter, "lines": lines, "bars": bars}[kind(board, pool)](board, pool, fmt)


def figure_png(board: Board) -> bytes:
    """The board's headline figure as PNG (beside a markdown file, or in ``--figures DIR``)."""
    return figure(board, board.pools[0], "png") or b""
