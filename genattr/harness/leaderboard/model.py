"""Summarising stored results into boards: one per (benchmark, benchmark configuration) (loading them:
:mod:`.runs`).

Runs whose benchmark configuration differs only in the model seeds (``model_seeds``, or the run seed where a run has
none) share one board: their queries pool, each row paired on its model seed (``params["model_seed"]``, the run seed
for rows without one), and a cell present in two runs counts once. So a run extended later with more seeds, or a
benchmark run once per ``--seed``, reads as one table. The run.json of each directory says which configuration its
rows have; rows whose configuration it does not hold stay on their own board.

Configurations of one method that differ only in its ``seed`` option (a second *method* seed: new projections, noise,
Fisher draws on the same models and queries) share one row: a query's value is the mean over the method seeds that
scored it, so n stays the number of queries and the paired intervals compare seed-averaged values; the board lists
the seeds pooled (``method_seeds``, noted under its caption).

A board holds, for every (method, group, metric column), the mean ± standard error over the group's cells, n, and
the paired comparisons of :mod:`genattr.harness.statistics` (rows of different methods are paired by the canonical
JSON of their ``params``: the query's identity). Cells of customized models that failed their verification
(``extra.verified == False``) are left out of every number unless asked otherwise, and listed on the board.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import statistics
from ..cache import hash_json
from .columns import Column, _choose_format, _finite, _is_number, _with_headline, default_display
from .runs import metric_info, regime_checks, seedless_key

#: The method every other one is compared with (a paired difference column), when it is on the board.
REFERENCE_METHOD = "random"

#: What a pool suffix means, where the benchmark is known (shown under the pool's tables).
POOL_NOTES = {
    ("customized-model", None): "The base training items plus the customized model's own exemplars (the own "
                                "pool).",
    ("customized-model", "all"): "Every concept's exemplars in the pool: other concepts' exemplars are "
                                 "distractors (columns with the suffix /all).",
}

#: Plain-language titles of the pools (a benchmark that scores several pools of candidates).
POOL_TITLES = {
    ("customized-model", None): "Pool: the training images and the concept's own exemplars",
    ("customized-model", "all"): "Pool: the training images and every concept's exemplars",
}


def pool_title(benchmark: str, pool: str | None) -> str:
    """The plain-language title of a pool (``None``: the main one)."""
    return POOL_TITLES.get((benchmark, pool)) or ("Main table" if pool is None else f"Pool “{pool}”")


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-")
    return s or "x"


# -- boards ------------------------------------------------------------------------------------------------------
@dataclass
class Board:
    """One benchmark (at one configuration): columns, groups, methods and their statistics."""

    title: str
    benchmark: str
    version: str
    config_hash: str
    scale: str | None
    group_keys: list[str]
    label_keys: list[str]           # group keys that tell groups apart (keys determined by earlier ones left out)
    groups: list[str]               # group labels in display order
    group_values: dict[str, dict]   # label -> the group dict
    columns: dict[str, Column]      # metric column key -> Column, in display order
    methods: list[str]              # method labels (name, or name@hash when one name has several configurations)
    method_names: dict[str, str]    # label -> registered method name
    method_hashes: dict[str, str]   # label -> the (benchmark, method) configuration hash of its rows
    stats: dict[tuple[str, str, str], dict]  # (method, group, column) -> mean, se, n, best, vs_reference, ...
    rows: list[dict]                # the rows behind the numbers
    excluded: list[dict]            # rows left out (unverified concepts)
    unverified: list[str]           # concepts whose customized model failed verification
    include_unverified: bool
    reference: str | None
    directories: list[str] = field(default_factory=list)
    figure: bytes | None = None
    config_hashes: list[str] = field(default_factory=list)  # the runs' benchmark configuration hashes pooled here
    model_seeds: list[int] = field(default_factory=list)     # the model seeds pooled (when more than one config)
    # (method, group, column) -> model seed -> {"mean", "n"}: filled when the rows hold two or more model seeds
    by_seed: dict[tuple[str, str, str], dict[int, dict]] = field(default_factory=dict)
    # method label -> the method seeds pooled in its row ("default" = the run's seed), when more than one
    method_seeds: dict[str, list] = field(default_factory=dict)
    # method label -> model seeds on which an explicit method seed equals the model seed (= the default draws)
    seed_repeats: dict[str, list[int]] = field(default_factory=dict)
    # the packs this board's configuration was scored on across the given runs, when more than one (one board each)
    sibling_packs: list[str] = field(default_factory=list)
    # the θ0 regime checks the runs record for this board's configurations: [{"model_seed", "check"}]
    regime: list[dict] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        """The model seeds the per-seed means cover (empty when the rows come from one model)."""
        return sorted({s for per in self.by_seed.values() for s in per})

    @property
    def slug(self) -> str:
        return slug(self.title)

    @property
    def metrics(self) -> list[str]:
        return list(self.columns)

    @property
    def higher_is_better(self) -> dict[str, bool | None]:
        return {k: c.higher_is_better for k, c in self.columns.items()}

    @property
    def cells(self) -> int:
        return len(self.rows)

    @property
    def pools(self) -> list[str | None]:
        return list(dict.fromkeys(c.pool for c in self.columns.values()))

    def pool_columns(self, pool: str | None) -> list[Column]:
        return [c for c in self.columns.values() if c.pool == pool]

    def headline(self, pool: str | None = None) -> Column:
        """The column the rows are ranked by and the difference columns report: the pool's first column — the
        first metric the benchmark declares, or the one ``summarise(headline=...)`` put first."""
        return self.pool_columns(pool)[0]

    def ranked(self, group: str, pool: str | None = None) -> list[str]:
        """The methods scored in ``group``, best first by the pool's headline mean (the order of a leaderboard);
        methods without a headline value, and every method when the headline has no direction, keep the order in
        which the runs list them, after the ranked ones. Ties keep that order too."""
        cols = self.pool_columns(pool)
        col = cols[0] if cols else None
        present = [m for m in self.methods if any((m, group, c.key) in self.stats for c in cols)]
        if col is None or col.higher_is_better is None:
            return present
        sign = -1.0 if col.higher_is_better else 1.0

        def key(item):
            i, m = item
            mean = (self.stats.get((m, group, col.key)) or {}).get("mean")
            return (0, sign * mean, i) if _finite(mean) else (1, 0.0, i)

        return [m for _, m in sorted(enumerate(present), key=key)]

    def pool_note(self, pool: str | None) -> str:
        note = POOL_NOTES.get((self.benchmark, pool))
        if note:
            return note
        return f"Columns with the suffix /{pool}." if pool else ""

    def inputs(self) -> dict:
        """Where the rows' inputs came from: ``packs`` (the imported artefact packs their rows record; "" for rows
        without one) and ``differ`` — True when the same configuration was also scored on other artefacts (several
        packs, or a pack beside locally trained models): those rows are on boards of their own."""
        packs = sorted({str(r.get("pack") or "") for r in self.rows})
        return {"packs": packs, "differ": len(self.sibling_packs) > 1, "siblings": list(self.sibling_packs)}

    def n_label(self, method: str, group: str) -> int:
        ns = [self.stats.get((method, group, k), {}).get("n", 0) for k in self.columns]
        return max(ns, default=0)

    def summary(self) -> list[dict]:
        """The long table: one record per (method, group, metric column)."""
        out = []
        for key, col in self.columns.items():
            for g in self.groups:
                for m in self.methods:
                    s = self.stats.get((m, g, key))
                    if s is None:
                        continue
                    rec = {"method": m, "group": g, "metric": key, "display": col.header(arrow=False, pool=True),
                           "mean": s["mean"], "sem": s["se"], "n": s["n"],
                           "higher_is_better": col.higher_is_better, "best": s["best"],
                           **{f"group.{k}": self.group_values[g].get(k) for k in self.group_keys}}
                    ref, other = s.get("vs_reference"), s.get("vs_best_other")
                    rec.update({"reference": self.reference if ref else None,
                                "diff_reference": ref["diff"] if ref else None,
                                "diff_reference_lo": ref["lo"] if ref else None,
                                "diff_reference_hi": ref["hi"] if ref else None,
                                "n_reference": ref["n"] if ref else None,
                                "best_other": other["method"] if other else None,
                                "diff_best_other": other["diff"] if other else None,
                                "diff_best_other_lo": other["lo"] if other else None,
                                "diff_best_other_hi": other["hi"] if other else None,
                                "n_best_other": other["n"] if other else None})
                    out.append(rec)
        return out


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


def group_label(group: dict, keys: Sequence[str]) -> str:
    if not keys:
        return "all"
    if len(keys) == 1 and isinstance(group.get(keys[0]), str):
        return group[keys[0]]
    return ", ".join(f"{k}={group.get(k)}" for k in keys)


def pair_key(row: dict) -> str:
    """What pairs rows of different methods: the canonical JSON of ``params`` (the query's identity), or the cell
    id without its leading ``method/`` when a row has no params."""
    p = row.get("params")
    if isinstance(p, dict) and p:
        return json.dumps(p, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    cid, m = str(row.get("cell_id", "")), str(row.get("method", ""))
    return cid[len(m) + 1:] if cid.startswith(m + "/") else cid


def concept_of(row: dict) -> str | None:
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    params = row.get("params") if isinstance(row.get("params"), dict) else {}
    c = extra.get("concept", params.get("concept"))
    return None if c is None else str(c)


def is_unverified(row: dict) -> bool:
    extra = row.get("extra")
    return isinstance(extra, dict) and extra.get("verified") is False


def _seedless_keys(rows: list[dict], runs: dict[str, dict]) -> dict[tuple[str, str], str]:
    """(benchmark, benchmark config hash) -> the hash of that configuration without ``model_seeds`` (with its model
    recipe, when run.json records one), for every configuration some run.json states (the run seed is not part of a
    benchmark's config, only of its hash)."""
    configs: dict[tuple[str, str], Any] = {}
    for run in runs.values():
        for name, b in ((run or {}).get("benchmarks") or {}).items():
            if isinstance(b, dict) and isinstance(b.get("config"), dict) and b.get("config_hash"):
                configs.setdefault((str(name), str(b["config_hash"])), (b["config"], b.get("recipe")))
    out = {}
    for r in rows:
        key = (str(r.get("benchmark", "?")), str(r.get("benchmark_config_hash", "")))
        if key in configs and key not in out:
            # the model recipe too: two configurations that train different models are never one over seeds
            out[key] = seedless_key(key[0], str(r.get("benchmark_version", "")), *configs[key])
    return out


def inputs_of(row: dict) -> str:
    """The artefacts a row was scored on: its pack's hash, else the artefact group of its run directory
    (:func:`~.runs.artefact_groups`; "" for models trained on the machine that agree with the others)."""
    return str(row.get("pack") or "") or str(row.get("_artefacts") or "")


def inputs_name(p: str) -> str:
    """:func:`inputs_of` in words: "pack 0123456789ab", "no pack" or "trained elsewhere (DIR)"."""
    if not p:
        return "no pack"
    return p if p.startswith("trained elsewhere") else f"pack {p[:12]}"


def model_seed_of(row: dict) -> int | None:
    """The seed of the model a row's query came from: ``params["model_seed"]``, else the run seed."""
    p = row.get("params") if isinstance(row.get("params"), dict) else {}
    s = p.get("model_seed", row.get("seed"))
    return int(s) if _is_number(s) else None


LABEL_MAX = 40  # longest descriptive label (name[option=value, ...]) before falling back to name@hash6


def _config_labels(cfgs: dict[str, list[str]], cfg_of: dict[str, Any], first_hash: dict[str, str],
                   without_seed: bool) -> dict[str, str]:
    """Row labels per method identity: the name where a method has one configuration on the board; where it has
    several, the name with the options that tell them apart (``dtrak[lambda_reg=1]``; an option a configuration
    lacks or leaves null shows ``=default``). ``name@hash6`` (the configuration hash) where the options do not tell
    them apart (another method version), nest, or make a label longer than :data:`LABEL_MAX`."""
    labels: dict[str, str] = {}
    for m, idents in cfgs.items():
        if len(idents) == 1:
            labels[idents[0]] = m
            continue
        dicts = [cfg_of.get(i) if isinstance(cfg_of.get(i), dict) else None for i in idents]
        fallback = {i: f"{m}@{first_hash[i][:6]}" for i in idents}
        if any(d is None for d in dicts):
            labels.update(fallback)
            continue
        if without_seed:
            dicts = [{k: v for k, v in d.items() if k != "seed"} for d in dicts]
        keys = sorted({k for d in dicts for k in d})
        differ = [k for k in keys if len({json.dumps(d.get(k, "\0default"), sort_keys=True) for d in dicts}) > 1]

        def show(v: Any) -> str:
            return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), ensure_ascii=False)

        cand = {i: f"{m}[" + ", ".join(f"{k}={show(d[k]) if d.get(k) is not None else 'default'}" for k in differ)
                   + "]"
                for i, d in zip(idents, dicts)}
        nested = any(isinstance(d.get(k), (dict, list)) for d in dicts for k in differ)
        ok = (differ and not nested and len(set(cand.values())) == len(idents)
              and max(len(c) for c in cand.values()) <= LABEL_MAX)
        labels.update(cand if ok else fallback)
    return labels


def _pool_rows(brow: list[dict]) -> list[dict]:
    """Rows of several runs on one board: each row's params carry its model seed (copies; the stored rows are not
    touched), and a cell two runs both hold (same method configuration, same query) is kept once, first seen."""
    out, seen = [], set()
    for r in brow:
        p = dict(r.get("params")) if isinstance(r.get("params"), dict) else {}
        s = model_seed_of(r)
        if s is not None:
            p["model_seed"] = s
        r = {**r, "params": p}
        key = (_method_identity(r), pair_key(r))
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def _method_identity(r: dict, without_seed: bool = False) -> str:
    """What makes two rows the same method configuration across runs: name, version and resolved config (the
    row's ``config_hash`` also covers the benchmark configuration, which differs between pooled runs).
    ``without_seed``: the method's ``seed`` option left out (configurations that differ only in the method seed
    are one row of the board)."""
    if "method_config" not in r:
        return str(r.get("config_hash", ""))
    cfg = r.get("method_config")
    if without_seed and isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k != "seed"}
    return hash_json([str(r.get("method", "?")), str(r.get("method_version", "")), cfg])


def method_seed_of(r: dict):
    """The row's method seed: its configuration's ``seed`` option, ``"default"`` when absent or null (the run's
    seed: with ``model_seeds``, the model seed)."""
    cfg = r.get("method_config") if isinstance(r.get("method_config"), dict) else {}
    s = cfg.get("seed")
    return int(s) if _is_number(s) else "default"


def _per_seed_means(rows: list[dict], label_keys: list[str]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """Mean and n per model seed of every (method label, group, column), when the rows hold two or more model
    seeds (``params.model_seed``): how far the base models disagree, beside the pooled mean."""
    seeds = {s for s in (r.get("params", {}).get("model_seed") if isinstance(r.get("params"), dict) else None
                         for r in rows) if _is_number(s)}
    if len(seeds) < 2:
        return {}
    acc: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for r in rows:
        s = (r.get("params") or {}).get("model_seed")
        if not _is_number(s):
            continue
        g = group_label(r.get("group") or {}, label_keys)
        for k, v in (r.get("metrics") or {}).items():
            if _finite(v):
                acc.setdefault((r["_label"], g, k), {}).setdefault(int(s), []).append(float(v))
    return {key: {s: {"mean": sum(v) / len(v), "n": len(v)} for s, v in sorted(per.items())}
            for key, per in acc.items()}


def summarise(rows: list[dict], runs: dict[str, dict] | None = None, include_unverified: bool = False,
              n_boot: int = statistics.N_BOOT, pool_seeds: bool = True,
              pool_method_seeds: bool = True, headline: str | None = None) -> list[Board]:
    """Group rows into one :class:`Board` per (benchmark, benchmark configuration); with ``pool_seeds``,
    configurations that differ only in their model seeds share a board, with ``pool_method_seeds`` method
    configurations that differ only in their ``seed`` share a row (module docstring). ``headline`` (a metric key
    such as ``ap``, or its display name such as ``mAP``) makes that metric the headline of every board that has
    it — the column the rows are ranked by and the differences report — instead of the first one the benchmark
    declares; a :class:`UserError` when no board has it."""
    runs = runs or {}
    seedless = _seedless_keys(rows, runs) if pool_seeds else {}
    by_bench: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        key = (str(r.get("benchmark", "?")), str(r.get("benchmark_config_hash", "")))
        if key in seedless:
            key = (key[0], "seeds:" + seedless[key])
        by_bench.setdefault(key, []).append(r)
    # rows are pooled only within one set of artefacts: a configuration scored on several packs (or on a pack and
    # on locally trained models) becomes one board per pack, each titled with it
    split: dict[tuple[str, str], list[dict]] = {}
    pack_of_board: dict[tuple[str, str], str | None] = {}
    for (bench, bkey), brow in by_bench.items():
        packs = list(dict.fromkeys(inputs_of(r) for r in brow))
        if len(packs) == 1:
            split[(bench, bkey)] = brow
            continue
        for p in packs:
            k = (bench, f"{bkey}|pack:{p}")
            split[k] = [r for r in brow if inputs_of(r) == p]
            pack_of_board[k] = p
    by_bench = split
    names = [b for b, _ in by_bench]
    boards = []
    for (bench, bkey_full), brow in by_bench.items():
        bkey = bkey_full.split("|pack:", 1)[0]
        member_hashes = list(dict.fromkeys(str(r.get("benchmark_config_hash", "")) for r in brow))
        pooled = len(member_hashes) > 1
        bhash = bkey[len("seeds:"):] if pooled else member_hashes[0]
        if pooled:
            brow = _pool_rows(brow)
        # method labels: the name, plus a short config hash where one name has several configurations
        cfgs: dict[str, list[str]] = {}
        first_hash: dict[str, str] = {}

        def ident_of(r: dict) -> str:
            return _method_identity(r, without_seed=pool_method_seeds)

        cfg_of: dict[str, Any] = {}
        idents = [ident_of(r) for r in brow]  # one hash of the configuration per row
        for r, ident in zip(brow, idents):
            first_hash.setdefault(ident, str(r.get("config_hash", "")))
            cfg_of.setdefault(ident, r.get("method_config"))
            lst = cfgs.setdefault(str(r.get("method", "?")), [])
            if ident not in lst:
                lst.append(ident)
        labels = _config_labels(cfgs, cfg_of, first_hash, without_seed=pool_method_seeds)

        seeds_of: dict[str, list] = {}
        repeats: dict[str, set[int]] = {}
        for r, ident in zip(brow, idents):
            r["_label"] = labels[ident]
            ms = method_seed_of(r)
            lst = seeds_of.setdefault(r["_label"], [])
            if ms not in lst:
                lst.append(ms)
            if ms != "default" and model_seed_of(r) == ms:
                repeats.setdefault(r["_label"], set()).add(ms)
        method_seeds = {m: sorted(v, key=lambda x: (x != "default", x if x != "default" else 0))
                        for m, v in seeds_of.items() if len(v) > 1}
        seed_repeats = {m: sorted(v) for m, v in repeats.items() if m in method_seeds and "default" in method_seeds[m]}

        excluded = [r for r in brow if is_unverified(r)]
        unverified = list(dict.fromkeys(c for c in (concept_of(r) for r in excluded) if c))
        kept = brow if include_unverified else [r for r in brow if not is_unverified(r)]
        # columns: as the benchmark declares them (higher_is_better order), then as seen
        hib: dict[str, bool | None] = {}
        seen_cols: list[str] = []
        for r in brow:
            for k, v in (r.get("higher_is_better") or {}).items():
                if hib.get(k) is None:
                    hib[k] = v
            for k in (r.get("metrics") or {}):
                if k not in seen_cols:
                    seen_cols.append(k)
        keys = [k for k in hib if k in seen_cols] + [k for k in seen_cols if k not in hib]
        info = metric_info(runs, bench, member_hashes[0])
        columns: dict[str, Column] = {}
        for k in keys:
            base, _, pool = k.partition("/")
            mi = info.get(k) or info.get(base) or {}
            direction = hib.get(k)
            if direction is None and isinstance(mi.get("higher_is_better"), bool):
                direction = mi["higher_is_better"]
            display = mi.get("display") or default_display(base)
            columns[k] = Column(key=k, base=base, pool=pool or None, display=str(display), unit=mi.get("unit"),
                                higher_is_better=direction, metric=mi.get("metric"))
        if headline is not None:
            columns = _with_headline(columns, headline)
        # groups
        group_keys: list[str] = []
        for r in brow:
            for k in (r.get("group") or {}):
                if k not in group_keys:
                    group_keys.append(k)
        label_keys = _label_keys(group_keys, [r.get("group") or {} for r in brow])
        first_seen: dict[str, int] = {}
        gvals: dict[str, dict] = {}
        for r in brow:
            g = r.get("group") or {}
            lab = group_label(g, label_keys)
            first_seen.setdefault(lab, len(first_seen))
            gvals.setdefault(lab, dict(g))

        def gsort(lab: str):
            vals = tuple(gvals[lab].get(k) for k in label_keys)
            return tuple((0, v, 0) if _is_number(v) else (1, 0, first_seen[lab]) for v in vals) or ((0, 0, 0),)

        groups = sorted(gvals, key=gsort)
        methods = list(dict.fromkeys(r["_label"] for r in brow))
        method_names = {r["_label"]: str(r.get("method", "?")) for r in brow}
        method_hashes = {r["_label"]: first_hash[ident] for r, ident in zip(brow, idents)}
        refs = [m for m in methods if method_names[m] == REFERENCE_METHOD]
        reference = refs[0] if len(refs) == 1 else None
        # values: (group, column) -> method -> pairing key -> [values]
        values: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
        for r in kept:
            g = group_label(r.get("group") or {}, label_keys)
            m = r["_label"]
            pk = pair_key(r)
            for k, v in (r.get("metrics") or {}).items():
                cell = values.setdefault((g, k), {}).setdefault(m, {})
                if _finite(v):
                    cell.setdefault(pk, []).append(float(v))
                else:
                    cell.setdefault(pk, [])
        stats: dict[tuple[str, str, str], dict] = {}
        for (g, k), per_method in values.items():
            ordered = {m: {pk: (sum(vs) / len(vs) if vs else None) for pk, vs in per_method[m].items()}
                       for m in methods if m in per_method}
            cmp = statistics.compare_methods(ordered, columns[k].higher_is_better, reference=reference,
                                             n_boot=n_boot)
            for m, s in cmp["methods"].items():
                stats[(m, g, k)] = {**s, "best": cmp["best"] == m}
        by_seed = _per_seed_means(kept, label_keys)
        for k, col in columns.items():
            _choose_format(col, [s for (m, g, kk), s in stats.items() if kk == k])
        scale = brow[0].get("scale")
        title = bench if names.count(bench) == 1 else f"{bench} [{scale}, {bhash[:8]}]"
        if (bench, bkey_full) in pack_of_board:
            p = pack_of_board[(bench, bkey_full)]
            title = f"{bench} [{scale}, {bhash[:8]}, {inputs_name(p)}]"
        # the board's own directories: a board split off by its artefacts shows its own models' regime checks
        board_dirs = list(dict.fromkeys(r["_dir"] for r in brow if "_dir" in r))
        boards.append(Board(
            title=title, benchmark=bench, version=str(brow[0].get("benchmark_version", "")), config_hash=bhash,
            scale=scale, group_keys=group_keys, label_keys=label_keys, groups=groups,
            group_values={g: gvals[g] for g in groups}, columns=columns, methods=methods, method_names=method_names,
            method_hashes=method_hashes, stats=stats, rows=kept, excluded=excluded, unverified=unverified,
            include_unverified=include_unverified, reference=reference,
            directories=board_dirs,
            config_hashes=member_hashes, by_seed=by_seed,
            model_seeds=sorted({s for s in map(model_seed_of, brow) if s is not None}) if pooled else [],
            method_seeds=method_seeds, seed_repeats=seed_repeats,
            sibling_packs=sorted(p for (b, k), p in pack_of_board.items()
                                 if b == bench and k.split("|pack:", 1)[0] == bkey),
            regime=regime_checks({d: runs[d] for d in board_dirs if d in runs} if board_dirs else runs, bench,
                                 member_hashes),
        ))
    return boards
