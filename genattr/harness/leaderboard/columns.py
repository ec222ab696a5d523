"""Metric columns of a leaderboard board: display names, number formats and the headline metric."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any

from .. import statistics
from ..errors import UserError

if TYPE_CHECKING:
    from .model import Board

#: Display names of the built-in metric columns (run.json's ``metric_info`` overrides them).
DISPLAY = {"ap": "mAP", "map": "mAP", "delta-loss": "ΔL", "delta-gen-mse": "ΔG-MSE", "delta-gen-sim": "ΔG-sim",
           "lds": "LDS", "loss": "loss", "score": "score"}

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


# -- columns and number formats -----------------------------------------------------------------------------------
def default_display(base: str) -> str:
    m = re.fullmatch(r"recall@(\d+)", base)
    if m:
        return f"Recall@{m.group(1)}"
    return DISPLAY.get(base, base)


@dataclass
class Column:
    """One metric column of a board, with how it is shown."""

    key: str                      # as stored in the rows, e.g. "recall@10/all"
    base: str                     # without the pool suffix, e.g. "recall@10"
    pool: str | None              # the suffix after "/" ("all"), None for the headline pool
    display: str                  # e.g. "Recall@10"
    unit: str | None = None
    higher_is_better: bool | None = None
    metric: str | None = None     # the registered metric that produced it, when run.json says
    exp: int = 0                  # values are shown × 10^exp (exp = 3 → "×10⁻³")
    decimals: int = 3

    @property
    def scale_label(self) -> str:
        return f"×10{str(-self.exp).translate(_SUPERSCRIPT)}" if self.exp else ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better is True else "↓" if self.higher_is_better is False else ""

    def header(self, arrow: bool = True, pool: bool = False) -> str:
        parts = [self.display + (f" ({self.pool})" if pool and self.pool else "")]
        if self.unit:
            parts.append(f"[{self.unit}]")
        if self.scale_label:
            parts.append(self.scale_label)
        if arrow and self.arrow:
            parts.append(self.arrow)
        return " ".join(parts)

    def num(self, x: Any, signed: bool = False) -> str:
        if not _finite(x):
            return "–"
        v = float(x) * 10.0 ** self.exp
        text = f"{v:+.{self.decimals}f}" if signed else f"{v:.{self.decimals}f}"
        if text.lstrip("+-").strip("0.") == "":  # rounds to zero: no sign
            text = f"{0.0:.{self.decimals}f}"
        return text

    def mean_se(self, stat: dict | None) -> str:
        if not stat or not _finite(stat.get("mean")):
            return "–"
        if stat.get("n", 0) < 2 or not _finite(stat.get("se")):
            return self.num(stat["mean"])
        return f"{self.num(stat['mean'])} ± {self.num(stat['se'])}"

    def interval(self, r: dict | None, name: bool = False) -> str:
        if not r or not _finite(r.get("diff")):
            return "–"
        text = self.num(r["diff"], signed=True)
        if r.get("n", 0) < statistics.MIN_PAIRS:  # too few pairs for a percentile interval to mean anything
            text += f" (n={r.get('n', 0)})"
        elif _finite(r.get("lo")) and _finite(r.get("hi")):
            text += f" [{self.num(r['lo'], signed=True)}, {self.num(r['hi'], signed=True)}]"
        if name and r.get("method"):
            text += f" {r['method']}"
        return text


def _choose_format(col: Column, stats: list[dict]) -> None:
    """One scale and one number of decimals per column: values below 0.01 are shown ×10⁻³ (or ×10⁻⁶); decimals
    give the median standard error two significant digits (between 1 and 6) — the median, so that one method at
    chance with a near-zero spread (random's mAP) does not stretch every other row to five decimals."""
    means = [abs(s["mean"]) for s in stats if _finite(s.get("mean"))]
    top = max(means, default=0.0)
    exp = 0
    if 0 < top < 0.01:
        exp = 3
        while top * 10.0 ** exp < 0.1 and exp < 12:
            exp += 3
    ses = [s["se"] * 10.0 ** exp for s in stats if _finite(s.get("se")) and s["se"] > 0]
    if ses:
        dec = 1 - math.floor(math.log10(median(ses)))
    else:
        scaled = top * 10.0 ** exp
        dec = 2 - math.floor(math.log10(scaled)) if scaled > 0 else 2
    col.exp = exp
    col.decimals = int(min(6, max(1, dec)))


def _matches_headline(col: Column, headline: str) -> bool:
    h = headline.strip().lower()
    return h in (col.base.lower(), col.display.lower())


def _with_headline(columns: dict[str, Column], headline: str) -> dict[str, Column]:
    """``columns`` with the ``headline`` metric first within each pool (other columns keep their order)."""
    order = list(columns)
    pools = list(dict.fromkeys(c.pool for c in columns.values()))

    def key(k: str):
        c = columns[k]
        return (pools.index(c.pool), 0 if _matches_headline(c, headline) else 1, order.index(k))

    return {k: columns[k] for k in sorted(order, key=key)}


def check_headline(boards: list[Board], headline: str | None) -> None:
    """A ``headline`` that no board's metric matches is a user mistake (one line naming the metrics there are)."""
    if headline is None or not boards:
        return
    if not any(_matches_headline(c, headline) for b in boards for c in b.columns.values()):
        known = sorted({c.base for b in boards for c in b.columns.values()})
        raise UserError(f"--headline {headline!r} matches no metric of these results; known: {', '.join(known)}")
