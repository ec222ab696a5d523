"""The run directories a leaderboard reads: their rows (``results.jsonl``) and run documents (``run.json``), and
what a board takes from those documents (the benchmark's metric descriptions, its base models' regime checks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..results import RESULTS_FILE, SCHEMA_VERSION, read_rows, read_run


def _expand(dirs: Sequence[str | os.PathLike]) -> list:
    """``dirs`` with a folder of run directories (no results file of its own, run directories below it — ``runs``)
    replaced by those run directories, sorted, with one note saying which."""
    out: list = []
    for d in dirs:
        p = Path(d).expanduser()
        children = sorted(c for c in p.iterdir() if (c / RESULTS_FILE).is_file()) \
            if p.is_dir() and not (p / RESULTS_FILE).is_file() else []
        if children:
            from ..progress import warn

            warn("genattr.leaderboard", f"{d} holds {len(children)} run directories; pooling "
                                        f"{', '.join(c.name for c in children)}")
            out.extend(children)
        else:
            out.append(d)
    return out


def load(dirs: Sequence[str | os.PathLike]) -> tuple[list[dict], dict[str, dict]]:
    """All rows of the given run directories (duplicates of the same cell dropped) and their run.json documents."""
    if not dirs:
        raise UserError("give at least one results directory")
    rows: list[dict] = []
    runs: dict[str, dict] = {}
    seen: set[tuple] = set()
    expanded = _expand(dirs)
    for d in expanded:
        p = Path(d).expanduser()
        if not p.exists():
            raise UserError(f"results directory {str(d)!r} does not exist")
        if not p.is_dir():
            raise UserError(f"{str(d)!r} is not a directory; give the run directory that holds {RESULTS_FILE}")
        if not (p / RESULTS_FILE).is_file():
            raise UserError(f"no {RESULTS_FILE} in {str(d)!r}; run 'genattr run --out {d}' first")
        runs[str(d)] = read_run(p) or {}
    group = artefact_groups(runs)
    for d in expanded:
        p = Path(d).expanduser()
        got = read_rows(p)
        if not got:
            raise UserError(f"no results yet in {str(d)!r}")
        for r in got:
            if int(r.get("schema_version", 0) or 0) > SCHEMA_VERSION:
                raise UserError(f"{p / RESULTS_FILE} was written by a newer genattr; upgrade genattr to read it")
            # a cell scored on another pack, or on other models trained elsewhere, is another cell
            key = (r.get("config_hash"), r.get("cell_id"), r.get("pack") or "", group[str(d)])
            if key in seen:
                continue
            seen.add(key)
            r["_dir"] = str(d)
            if group[str(d)]:
                r["_artefacts"] = group[str(d)]
            rows.append(r)
    return rows, runs


def seedless_key(benchmark: str, version: str, config: dict, recipe: Any = None) -> str:
    """The hash of a benchmark configuration without ``model_seeds`` (with its model recipe, when run.json records
    one): configurations with the same key differ only in their base models' seeds."""
    from ..cache import hash_json

    cfg = {k: v for k, v in config.items() if k != "model_seeds"}
    seedless = {"benchmark": benchmark, "version": version, "config": cfg}
    return hash_json(seedless if recipe is None else {**seedless, "recipe": recipe})


def _artefacts_by_seed(run: dict):
    """``((benchmark, seedless configuration key, pack, model seed, path), fingerprint)`` for every dataset and model
    a run's set-up reported (``run.json``; per model seed with ``model_seeds``, else under the run seed)."""
    from ..run.provenance import artefact_fingerprints

    for name, b in ((run or {}).get("benchmarks") or {}).items():
        if not isinstance(b, dict) or not isinstance(b.get("config"), dict):
            continue
        prov = b.get("provenance") if isinstance(b.get("provenance"), dict) else {}
        same = seedless_key(str(name), str(b.get("version", "")), b["config"], b.get("recipe"))
        # rows scored on different packs get boards of their own (model.summarise): compared within a pack only
        pack = prov.get("pack")
        for path, fp in artefact_fingerprints(prov).items():
            head, _, rest = path.partition(".")
            if head == "model_seeds" and "." in rest:
                seed, _, rest = rest.partition(".")
            else:
                seed, rest = str(run.get("seed")), path
            yield (str(name), same, pack, seed, rest), fp


def artefact_groups(runs: dict[str, dict]) -> dict[str, str]:
    """Run directory → its artefact group: "" for every directory whose datasets and models agree with those before
    it, else a label naming the first directory of its own group. Two directories that hold one configuration
    (model seeds aside, on the same pack or both on models trained on a machine) but report different datasets or
    models for the same model seed — a base model retrained elsewhere — share only query names; the leaderboard puts
    their rows on boards of their own (like rows of different packs) instead of pairing them or dropping the
    second's cells as duplicates."""
    groups: list[dict] = []
    labels: list[str] = []
    out: dict[str, str] = {}
    for d, run in runs.items():
        items = list(_artefacts_by_seed(run))
        for gi, g in enumerate(groups):
            if all(g.get(k, fp) == fp for k, fp in items):
                break
        else:
            groups.append({})
            labels.append("" if not labels else f"trained elsewhere ({Path(d).name})")
            gi = len(groups) - 1
        groups[gi].update(items)
        out[d] = labels[gi]
    return out


def metric_info(runs: dict[str, dict], bench: str, bhash: str) -> dict[str, dict]:
    """``metric_info`` of the benchmark from run.json (the entry with the same configuration hash first)."""
    found: dict[str, dict] = {}
    for run in runs.values():
        b = ((run or {}).get("benchmarks") or {}).get(bench) or {}
        info = b.get("metric_info")
        if isinstance(info, dict):
            if b.get("config_hash") == bhash:
                return info
            found = found or info
    return found


def regime_checks(runs: dict[str, dict], bench: str, hashes: list[str]) -> list[dict]:
    """``[{"model_seed", "check"}]``: the regime checks of the base models (θ0) that run.json records for the
    configurations ``hashes`` of ``bench`` (per model seed with ``model_seeds``; else the run's seed), each seed
    once."""
    out: list[dict] = []
    seen: set[str] = set()
    for run in runs.values():
        b = ((run or {}).get("benchmarks") or {}).get(bench) or {}
        if b.get("config_hash") not in hashes:
            continue
        prov = b.get("provenance") if isinstance(b.get("provenance"), dict) else {}
        per = prov.get("model_seeds") if isinstance(prov.get("model_seeds"), dict) else {str(run.get("seed")): prov}
        for seed, p in per.items():
            check = p.get("regime") if isinstance(p, dict) else None
            if isinstance(check, dict) and str(seed) not in seen:
                seen.add(str(seed))
                out.append({"model_seed": str(seed), "check": check})
    return out
