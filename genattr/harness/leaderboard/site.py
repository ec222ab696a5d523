"""The leaderboard site: a self-contained static site rendered from Jinja2 templates.

``SITE/index.html`` (every benchmark: sortable tables, figures, provenance), ``SITE/method-<name>.html`` (one page
per method: its per-query results and, where rows carry ``extra.media``, each query image with its top-10 training
images), ``SITE/figures/*.svg`` and ``SITE/media/<run>/…`` (thumbnails copied from the run directories). CSS and
JavaScript are inline: nothing is fetched at view time and no server is needed (open ``index.html``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import figures
from .columns import Column, _finite
from .model import Board, group_label, is_unverified, pair_key, pool_title, slug
from .notes import LEGEND, caption, notes

TEMPLATES = Path(__file__).parent / "templates"
#: Lists what the last rendering wrote into the site directory, so a re-render removes its own stale files only.
MANIFEST = ".genattr-site.json"
#: Thumbnails shown per query on the method pages.
TOP_SHOWN = 10


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=False,
                                                        default=str)
    return env


def _minus(text: str) -> str:
    """Typographic minus signs for numbers shown on the page."""
    out = []
    for i, ch in enumerate(text):
        prev = text[i - 1] if i else " "
        out.append("−" if ch == "-" and (i + 1 < len(text) and text[i + 1].isdigit()) and not prev.isalnum() else ch)
    return "".join(out)


def _sortval(x: Any) -> str:
    return repr(float(x)) if _finite(x) else ""


def _cell(text: str, sort: Any = None, best: bool = False, title: str = "", cls: str = "", href: str = "") -> dict:
    return {"text": _minus(text), "sort": sort if isinstance(sort, str) else _sortval(sort) if sort is not None
            else None, "best": best, "title": title, "cls": cls, "href": href, "flag": ""}


def _head(text: str, col: int, title: str = "", first: str = "desc", numeric: bool = True) -> dict:
    return {"text": text, "col": col, "title": title, "first": first, "numeric": numeric}


def _first(c: Column) -> str:
    return "asc" if c.higher_is_better is False else "desc"


def _tooltip(board: Board, c: Column, s: dict | None) -> str:
    if not s:
        return ""
    parts = [f"n = {s.get('n', 0)}"]
    if _finite(s.get("se")):
        parts.append(f"s.e. {c.num(s['se'])}")
    if s.get("vs_reference"):
        parts.append(f"− {board.reference}: {c.interval(s['vs_reference'])} (n = {s['vs_reference']['n']})")
    if s.get("vs_best_other"):
        o = s["vs_best_other"]
        parts.append(f"− {o['method']}: {c.interval(o)} (n = {o['n']})")
    return _minus("; ".join(parts))


def group_table(board: Board, pool: str | None, group: str, tid: str, method_pages: dict[str, str]) -> dict:
    """Methods × the pool's metrics for one group, with the headline's paired differences."""
    cols = board.pool_columns(pool)
    head = cols[0]
    headers = [_head("Method", 0, first="asc", numeric=False), _head("n", 1, "cells (queries) behind the means")]
    for c in cols:
        headers.append(_head(c.header(), len(headers), title=f"{c.key}: mean ± s.e.", first=_first(c)))
    with_ref = board.reference is not None
    with_other = head.higher_is_better is not None and len(board.methods) > 1
    if with_ref:
        headers.append(_head(f"{head.display} − {board.reference}", len(headers), first=_first(head),
                             title="paired difference over the same queries, 95 % bootstrap interval"))
    if with_other:
        headers.append(_head(f"{head.display} − best other", len(headers), first=_first(head),
                             title="paired difference to the best other method (named), 95 % bootstrap interval"))
    rows = []
    for m in board.ranked(group, pool):
        cells = [_cell(m, sort=m, href=method_pages.get(m, ""), cls="name"),
                 _cell(str(board.n_label(m, group)), sort=float(board.n_label(m, group)))]
        for c in cols:
            s = board.stats.get((m, group, c.key))
            cells.append(_cell(c.mean_se(s), sort=(s or {}).get("mean"), best=bool(s and s.get("best")),
                               title=_tooltip(board, c, s)))
        hs = board.stats.get((m, group, head.key)) or {}
        if with_ref:
            r = hs.get("vs_reference")
            cells.append(_cell(head.interval(r), sort=(r or {}).get("diff"), cls="diff",
                               title=f"n = {r['n']} paired queries" if r else ""))
        if with_other:
            r = hs.get("vs_best_other")
            cells.append(_cell(head.interval(r, name=True), sort=(r or {}).get("diff"), cls="diff",
                               title=f"n = {r['n']} paired queries" if r else ""))
        rows.append({"cells": cells})
    cap = "" if not board.label_keys else group if "=" in group else f"{' / '.join(board.label_keys)}: {group}"
    return {"id": tid, "caption": cap, "headers": headers, "rows": rows, "header_groups": None}


def matrix_table(board: Board, pool: str | None, tid: str, method_pages: dict[str, str]) -> dict:
    """The paper's Table 1 view: methods × (metric, group), e.g. ΔL, ΔG-MSE, ΔG-sim by K."""
    cols = board.pool_columns(pool)
    headers = [_head("Method", 0, first="asc", numeric=False)]
    header_groups = [{"text": "", "span": 1}]
    for c in cols:
        header_groups.append({"text": c.header(), "span": len(board.groups)})
        for g in board.groups:
            headers.append(_head(g, len(headers), title=f"{c.key}, {g}", first=_first(c)))
    rows = []
    for m in board.methods:
        cells = [_cell(m, sort=m, href=method_pages.get(m, ""), cls="name")]
        for c in cols:
            for g in board.groups:
                s = board.stats.get((m, g, c.key))
                cells.append(_cell(c.mean_se(s), sort=(s or {}).get("mean"), best=bool(s and s.get("best")),
                                   title=_tooltip(board, c, s)))
        rows.append({"cells": cells})
    return {"id": tid, "caption": "", "headers": headers, "rows": rows, "header_groups": header_groups}


def seed_table(board: Board, tid: str, method_pages: dict[str, str]) -> dict | None:
    """The headline column's mean per model seed: methods × (group, seed), plus the spread (max − min) per group;
    None when the board's rows come from one model."""
    seeds = board.seeds
    if len(seeds) < 2 or not board.columns:
        return None
    c = board.headline(board.pools[0])
    headers = [_head("Method", 0, first="asc", numeric=False)]
    header_groups = [{"text": "", "span": 1}]
    for g in board.groups:
        header_groups.append({"text": f"{c.header(arrow=False)} · {g}", "span": len(seeds) + 1})
        for sd in seeds:
            headers.append(_head(f"seed {sd}", len(headers), title=f"{c.key}, {g}, model seed {sd}", first=_first(c)))
        headers.append(_head("max − min", len(headers), title=f"spread over model seeds, {g}", first="asc"))
    rows = []
    for m in board.methods:
        cells = [_cell(m, sort=m, href=method_pages.get(m, ""), cls="name")]
        for g in board.groups:
            per = board.by_seed.get((m, g, c.key), {})
            for sd in seeds:
                st = per.get(sd)
                cells.append(_cell("–" if st is None else c.num(st["mean"]), sort=None if st is None else st["mean"],
                                   title="" if st is None else f"n = {st['n']}"))
            means = [st["mean"] for st in per.values()]
            spread = max(means) - min(means) if len(means) > 1 else None
            cells.append(_cell("–" if spread is None else c.num(spread), sort=spread))
        rows.append({"cells": cells})
    return {"id": tid, "caption": "", "headers": headers, "rows": rows, "header_groups": header_groups}


class _Media:
    """Copies the thumbnails rows name (paths relative to their run directory) into ``SITE/media/<run>/``."""

    def __init__(self, site: Path, dirs: list[str]):
        self.site = site
        self.prefix = {d: f"{i + 1}-{slug(Path(d).name or 'run')}" for i, d in enumerate(dirs)}
        self.written: set[str] = set()
        self.missing = 0

    def src(self, run_dir: str, rel: Any) -> str | None:
        if not isinstance(rel, str) or not rel or run_dir not in self.prefix:
            return None
        root = Path(run_dir).expanduser().resolve()
        path = (root / rel).resolve()
        try:
            inside = path.relative_to(root)
        except ValueError:
            self.missing += 1
            return None  # outside its run directory: never copied
        if not path.is_file():
            self.missing += 1
            return None
        dest_rel = Path("media") / self.prefix[run_dir] / inside
        target = self.site / dest_rel
        key = dest_rel.as_posix()
        if key not in self.written:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            self.written.add(key)
        return key


def _query_label(row: dict, board: Board) -> str:
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    params = row.get("params") if isinstance(row.get("params"), dict) else {}
    if extra.get("query_id") is not None:
        seed = params.get("model_seed")  # the same query id recurs once per model seed
        return str(extra["query_id"]) if seed is None else f"s{seed}/{extra['query_id']}"
    rest = {k: v for k, v in params.items() if k not in board.group_keys}
    return ", ".join(f"{k}={v}" for k, v in rest.items()) or str(row.get("cell_id", ""))


def _label_for(board: Board, row: dict) -> str:
    """The method label :func:`~.model.summarise` gave the row (one configuration of a method may span runs, so
    its label is not recoverable from the row's own config hash)."""
    return str(row.get("_label") or row.get("method", "?"))


def _method_rows(board: Board, label: str) -> list[dict]:
    """Every row of the method on the board (unverified ones too, flagged), in group then query order."""
    seen, out = set(), []
    for r in board.rows + board.excluded:
        if id(r) not in seen and _label_for(board, r) == label:
            seen.add(id(r))
            out.append(r)
    order = {g: i for i, g in enumerate(board.groups)}
    out.sort(key=lambda r: (order.get(group_label(r.get("group") or {}, board.label_keys), 0), pair_key(r)))
    return out


def query_table(board: Board, rows: list[dict], cols: list[Column], tid: str) -> dict:
    headers = []
    if board.label_keys:
        headers.append(_head(" / ".join(board.label_keys), 0, first="asc", numeric=False))
    headers.append(_head("Query", len(headers), first="asc", numeric=False))
    headers.append(_head("Prompt", len(headers), first="asc", numeric=False))
    for c in cols:
        headers.append(_head(c.header(), len(headers), title=c.key, first=_first(c)))
    out = []
    for r in rows:
        extra = r.get("extra") if isinstance(r.get("extra"), dict) else {}
        cells = []
        if board.label_keys:
            cells.append(_cell(group_label(r.get("group") or {}, board.label_keys), cls="text"))
        flag = ""
        if is_unverified(r):
            flag = "unverified (included)" if board.include_unverified else "unverified (excluded)"
        q = _cell(_query_label(r, board), sort=_query_label(r, board), cls="text flagged" if flag else "text",
                  title=flag)
        q["flag"] = flag
        cells.append(q)
        cells.append(_cell(str(extra.get("prompt", "")), cls="text prompt"))
        metrics = r.get("metrics") or {}
        for c in cols:
            v = metrics.get(c.key)
            cells.append(_cell(c.num(v), sort=v))
        out.append({"cells": cells})
    return {"id": tid, "caption": "", "headers": headers, "rows": out, "header_groups": None}


def gallery(board: Board, rows: list[dict], media: _Media) -> list[dict]:
    """Per query: the query image and its top-10 training images, where the row carries ``extra.media``."""
    items = []
    head = board.columns[next(iter(board.columns))] if board.columns else None
    for r in rows:
        extra = r.get("extra") if isinstance(r.get("extra"), dict) else {}
        med = extra.get("media")
        if not isinstance(med, dict):
            continue
        run_dir = r.get("_dir", "")
        top = []
        for i, t in enumerate((med.get("top") or [])[:TOP_SHOWN]):
            if not isinstance(t, dict):
                continue
            score = t.get("score")
            top.append({"rank": i + 1, "id": str(t.get("id", "")), "src": media.src(run_dir, t.get("image")),
                        "score": f"{score:.4g}" if _finite(score) else "",
                        "positive": t.get("positive") if isinstance(t.get("positive"), bool) else None})
        metric = ""
        if head is not None and head.key in (r.get("metrics") or {}):
            metric = f"{head.header(arrow=False)} {head.num(r['metrics'][head.key])}"
        items.append({"label": _query_label(r, board), "group": group_label(r.get("group") or {}, board.label_keys)
                      if board.label_keys else "", "prompt": str(extra.get("prompt", "")),
                      "src": media.src(run_dir, med.get("query")), "top": top, "metric": _minus(metric),
                      "unverified": is_unverified(r)})
    if items and not any(q["src"] or any(t["src"] for t in q["top"]) for q in items):
        return []  # the run directory's pictures are not here (committed results keep no media): no empty gallery
    return items


def _pairs(d: Any) -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [(str(k), str(v)) for k, v in d.items()]
    return [] if d in (None, "", {}) else [("", str(d))]


def provenance(runs: dict[str, dict], boards: list[Board]) -> list[dict]:
    row_hashes: dict[tuple[str, str, str], str] = {}
    for b in boards:
        for r in b.rows + b.excluded:
            row_hashes.setdefault((r.get("_dir", ""), b.benchmark, str(r.get("method"))), str(r.get("config_hash")))
    out = []
    for d, run in runs.items():
        run = run or {}
        env = run.get("environment") or {}
        git = env.get("git") or {}
        pk = env.get("packages") or {}
        facts = [
            ("status", run.get("status")), ("genattr", run.get("genattr_version")),
            ("git", (str(git.get("commit", "")) + (" (dirty)" if git.get("dirty") else "")) if git else None),
            ("run config hash", run.get("config_hash")), ("seed", run.get("seed")), ("scale", run.get("scale")),
            ("cell seeds", (run.get("seeds") or {}).get("cells")),
            ("python", env.get("python")), ("platform", env.get("platform")),
            ("devices", ", ".join(map(str, env.get("devices") or [])) or None),
            ("packages", ", ".join(f"{k} {v}" for k, v in pk.items()) if isinstance(pk, dict) else None),
            ("created / updated", f"{run.get('created_at', '')} / {run.get('updated_at', '')}"
             if run.get("created_at") else None),
            ("wall time (s)", (run.get("timings") or {}).get("wall_s")),
        ]
        benches = []
        for name, b in (run.get("benchmarks") or {}).items():
            b = b or {}
            prov = b.get("provenance") or {}
            benches.append({"name": name, "version": b.get("version"), "config_hash": str(b.get("config_hash", "")),
                            "datasets": _pairs(prov.get("datasets")), "models": _pairs(prov.get("models")),
                            "setup_s": b.get("setup_s"), "config": b.get("config"),
                            "provenance": {k: v for k, v in prov.items() if k not in ("datasets", "models")}})
        methods = []
        for name, m in (run.get("methods") or {}).items():
            m = m or {}
            configs = m.get("configs") if isinstance(m.get("configs"), dict) else None
            hashes = dict(m.get("config_hashes") or {})
            for bname in (run.get("benchmarks") or {}):
                h = row_hashes.get((d, bname, name))
                if h and bname not in hashes:
                    hashes[bname] = h
            methods.append({"name": name, "version": m.get("version"), "plugin": m.get("plugin"),
                            "hashes": sorted(hashes.items()),
                            "configs": sorted(configs.items()) if configs else
                            ([("all benchmarks", m.get("config"))] if "config" in m else [])})
        invocations = [{"argv": " ".join(map(str, i.get("argv") or [])), "started": i.get("started_at"),
                        "status": i.get("status"), "cells": f"{i.get('cells_run', '')} run, "
                                                             f"{i.get('cells_skipped', '')} skipped"}
                       for i in (run.get("invocations") or []) if isinstance(i, dict)]
        plugins = [{k: str(p.get(k, "")) for k in ("name", "version", "distribution")}
                   for p in run.get("plugins") or [] if isinstance(p, dict)]
        out.append({"dir": d, "id": f"run-{slug(d)}", "facts": [(k, str(v)) for k, v in facts if v not in (None, "")],
                    "benchmarks": benches, "methods": methods, "plugins": plugins, "invocations": invocations,
                    "run": run})
    return out


#: Papers and code of the built-in methods, shown on their pages (a plugin's method shows its registered
#: description only).
REFERENCES: dict[str, dict[str, str]] = {
    "unlearning": {"paper": "https://arxiv.org/abs/2406.09408", "code": "https://github.com/PeterWang512/AttributeByUnlearning"},
    "distilled": {"paper": "https://arxiv.org/abs/2510.13329", "code": "https://github.com/PeterWang512/FastGDA"},
    "trak": {"paper": "https://arxiv.org/abs/2303.14186", "code": "https://github.com/MadryLab/trak"},
    "journeytrak": {"paper": "https://arxiv.org/abs/2312.06205", "code": "https://github.com/MadryLab/journey-TRAK"},
    "dtrak": {"paper": "https://arxiv.org/abs/2311.00500", "code": "https://github.com/sail-sg/D-TRAK"},
    "datainf": {"paper": "https://arxiv.org/abs/2310.00902", "code": "https://github.com/ykwon0407/DataInf"},
    "das": {"paper": "https://arxiv.org/abs/2410.18639", "code": "https://github.com/Jinxu-Lin/DAS"},
    "retrac": {"paper": "https://arxiv.org/abs/2401.09031", "code": "https://github.com/txie1/diffusion-ReTrac"},
    "abc-clip": {"paper": "https://arxiv.org/abs/2306.09345", "code": "https://github.com/PeterWang512/GenDataAttribution"},
    "abc-dino": {"paper": "https://arxiv.org/abs/2306.09345", "code": "https://github.com/PeterWang512/GenDataAttribution"},
}

#: The site's glossary: every term its tables and captions use, in plain words.
GLOSSARY: list[tuple[str, str]] = [
    ("mean ± s.e.", "the average over the benchmark's cells (queries) and its standard error; n is the number of cells"),
    ("paired difference", "method − other, computed query by query on the queries both scored, with a 95 % bootstrap "
                          "interval [lo, hi]; an interval that excludes 0 separates the two methods"),
    ("bold", "the best method of a column, marked only when its paired interval against every other method excludes 0"),
    ("pool", "the candidate training items a method ranks; the Customized Model scores the concept's own exemplars "
             "among the base training images, and again with every concept's exemplars as distractors"),
    ("Recall@10, mAP", "how many of the true sources (the exemplars a model was customized on) a ranking puts in its "
                       "top 10, and the mean average precision of the whole ranking"),
    ("ΔL, ΔG", "leave-K-out: how much the query's loss rises (ΔL) and its regenerated image changes (ΔG) when the "
               "method's top K training items are removed and the model retrained"),
    ("LDS", "linear datamodeling score: the rank correlation between a method's predicted and the measured outputs of "
            "models trained on random subsets of the training set"),
    ("mAP(k)", "teacher agreement: the average precision of a slow, faithful method's top k in a method's ranking"),
    ("config hash", "sha256 of the resolved configuration of a benchmark and method: rows with the same hash were "
                    "computed the same way"),
    ("pack", "the content hash of the artefacts (models, deltas, queries) rows were scored on (genattr pack); rows "
             "with different packs saw different models"),
    ("unverified", "a customized model that does not reproduce its concept: its queries measure nothing and are left "
                   "out unless asked"),
]


def _registered_description(name: str) -> str:
    try:
        from ..manager import registry

        return str(registry("methods").get(name).description or "")
    except Exception:  # noqa: BLE001 - a method whose plugin is not installed here
        return ""


def _downloads(site: Path, board: Board) -> list[dict]:
    """``tables/<board>.csv`` and ``.json``: every number of the board's tables (the long form), for download."""
    from .text import to_csv, to_json

    base = f"tables/{board.slug}"
    (site / "tables").mkdir(parents=True, exist_ok=True)
    _write(site / f"{base}.csv", to_csv([board]))
    _write(site / f"{base}.json", to_json([board]))
    return [{"label": "CSV", "href": f"{base}.csv"}, {"label": "JSON", "href": f"{base}.json"}]


def _method_info(runs: dict[str, dict], name: str) -> dict:
    for run in runs.values():
        m = ((run or {}).get("methods") or {}).get(name)
        if isinstance(m, dict):
            return m
    return {}


def render_site(boards: list[Board], runs: dict[str, dict], out_dir: str | os.PathLike) -> str:
    """Write the site into ``out_dir``; returns the text of ``index.html``."""
    site = Path(out_dir)
    old = _previous_files(site)
    env = _env()
    written: list[str] = []
    labels = list(dict.fromkeys(m for b in boards for m in b.methods))
    pages = {m: f"method-{slug(m)}.html" for m in labels}
    if len(set(pages.values())) < len(pages):  # two labels with the same slug
        pages = {m: f"method-{i + 1}-{slug(m)}.html" for i, m in enumerate(labels)}
    (site / "figures").mkdir(parents=True, exist_ok=True)
    bctx = []
    for b in boards:
        pools = []
        for pool in b.pools:
            psl = "headline" if pool is None else slug(pool)
            tables = [group_table(b, pool, g, f"table-{b.slug}-{psl}-{slug(g)}", pages) for g in b.groups]
            fig = figures.figure(b, pool, "svg")
            fig_rel = None
            if fig:
                fig_rel = f"figures/{b.slug}-{psl}.svg"
                (site / fig_rel).write_bytes(fig)
                written.append(fig_rel)
            matrix = None
            if figures.numeric_key(b) and len(b.groups) > 1:
                matrix = matrix_table(b, pool, f"table-{b.slug}-{psl}-by-{slug(b.label_keys[0])}", pages)
            pools.append({"label": "headline" if pool is None else f"/{pool}", "pool": pool, "note": b.pool_note(pool),
                          "title": pool_title(b.benchmark, pool),
                          "tables": tables, "matrix": matrix, "figure": fig_rel,
                          "figure_kind": figures.kind(b, pool), "id": f"{b.slug}-{psl}"})
        downloads = _downloads(site, b)
        written.extend(d["href"] for d in downloads)
        bctx.append({"title": b.title, "slug": b.slug, "caption": caption(b), "note": notes(b), "downloads": downloads,
                     "note_included": b.include_unverified, "pools": pools, "dirs": b.directories,
                     "config_hash": b.config_hash, "group_by": " / ".join(b.label_keys),
                     "seeds": seed_table(b, f"table-{b.slug}-by-model-seed", pages),
                     "numeric_key": figures.numeric_key(b)})
    media = _Media(site, list(runs))
    methods_ctx = []
    for m in labels:
        sections = []
        for b in boards:
            if m not in b.methods:
                continue
            name = b.method_names[m]
            rows = _method_rows(b, m)
            headline = b.pool_columns(b.pools[0])
            others = [p for p in b.pools[1:]]
            info = _method_info(runs, name)
            configs = info.get("configs") if isinstance(info.get("configs"), dict) else {}
            config = configs.get(b.benchmark) if configs else None
            if config is None:
                config = next((r.get("method_config") for r in rows if "method_config" in r), info.get("config"))
            summary = []
            for pool in b.pools:
                for g in b.groups:
                    t = group_table(b, pool, g, "", pages)
                    row = next((r for r in t["rows"] if r["cells"][0]["text"] == _minus(m)), None)
                    if row is not None:
                        summary.append({"pool": "headline" if pool is None else f"/{pool}", "group": g,
                                        "pool_title": pool_title(b.benchmark, pool),
                                        "headers": t["headers"][1:], "cells": row["cells"][1:]})
            gal = gallery(b, rows, media)
            sections.append({
                "title": b.title, "slug": b.slug, "name": name, "version": next(
                    (str(r.get("method_version")) for r in rows if r.get("method_version") is not None), ""),
                "config_hash": b.method_hashes.get(m, ""), "config": config, "summary": summary,
                "queries": query_table(b, rows, headline, f"queries-{b.slug}"),
                "other_pools": [{"label": f"/{p}", "table": query_table(b, rows, b.pool_columns(p),
                                                                         f"queries-{b.slug}-{slug(p)}")}
                                for p in others],
                "gallery": gal, "top_n": max((len(q["top"]) for q in gal), default=0),
                "has_positive": any(t["positive"] for q in gal for t in q["top"]),
                "n_unverified": sum(1 for r in rows if is_unverified(r)),
                "include_unverified": b.include_unverified,
            })
        info = _method_info(runs, next((b.method_names[m] for b in boards if m in b.methods), m))
        registered = next((b.method_names[m] for b in boards if m in b.methods), m)
        methods_ctx.append({"label": m, "page": pages[m], "sections": sections, "plugin": info.get("plugin"),
                            "version": info.get("version"), "description": _registered_description(registered),
                            "links": REFERENCES.get(registered, {})})
    prov = provenance(runs, boards)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    common = {"generated": now, "dirs": list(runs), "legend": LEGEND, "boards": bctx, "methods": methods_ctx,
              "glossary": GLOSSARY}
    index = env.get_template("index.html").render(**common, provenance=prov, page="index")
    _write(site / "index.html", index)
    written.append("index.html")
    for mctx in methods_ctx:
        text = env.get_template("method.html").render(**common, method=mctx, page=mctx["page"])
        _write(site / mctx["page"], text)
        written.append(mctx["page"])
    written.extend(sorted(media.written))
    for rel in old - set(written):  # stale files of an earlier rendering
        p = site / rel
        if p.is_file():
            p.unlink()
    _write(site / MANIFEST, json.dumps({"files": written}, indent=1) + "\n")
    return index


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror}") from None


def _previous_files(site: Path) -> set[str]:
    try:
        doc = json.loads((site / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    files = doc.get("files") if isinstance(doc, dict) else None
    out = set()
    for f in files or []:
        if isinstance(f, str) and not os.path.isabs(f) and ".." not in Path(f).parts:
            out.add(f)
    return out
