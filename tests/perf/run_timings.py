"""The time a committed run took, from its ``run.json``: wall seconds, set-up seconds per benchmark, cells, and the
pack its artefacts came from — e.g. the main job with a benchmark artefact pack imported.

    python tests/perf/run_timings.py --table results/main-job/small/2026-12-07-pack/run.json
    python tests/perf/run_timings.py --compare results/main-job/small/2026-12-07-pack results/leave-k-out/small/2026-12-07 …
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(paths) -> str:
    lines = ["| run | benchmarks | cells | set-up s (per benchmark) | wall s | wall min | pack |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in paths:
        doc = json.loads(Path(path).read_text())
        rows = [json.loads(line) for line in (Path(path).parent / "results.jsonl").read_text().splitlines()
                if line.strip()]
        packs = sorted({str(r.get("pack"))[:12] for r in rows if r.get("pack")}) or ["none"]
        t = doc.get("timings") or {}
        setup = ", ".join(f"{b} {s:.0f}" for b, s in (t.get("setup_s") or {}).items())
        lines.append(f"| `{Path(path).parent.name}` | {', '.join(doc['benchmarks'])} | {len(rows)} | {setup} "
                     f"| {t.get('wall_s', float('nan')):.0f} | {t.get('wall_s', float('nan')) / 60:.1f} "
                     f"| {', '.join(packs)} |")
    return "\n".join(lines)


def compare(new_dir: str, old_dirs) -> str:
    """Per (benchmark, method): cells of ``new_dir`` that the runs ``old_dirs`` also hold, and the largest absolute
    difference of any metric between the two."""
    def rows(d):
        out = {}
        for line in (Path(d) / "results.jsonl").read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["benchmark"], r["method"], r["cell_id"])] = r["metrics"]
        return out

    new, old = rows(new_dir), {}
    for d in old_dirs:
        old.update(rows(d))
    groups: dict = {}
    for key, metrics in new.items():
        g = groups.setdefault(key[:2], {"cells": 0, "shared": 0, "max": 0.0})
        g["cells"] += 1
        if key in old:
            g["shared"] += 1
            diffs = [abs(v - old[key][m]) for m, v in metrics.items() if v is not None and old[key].get(m) is not None]
            g["max"] = max([g["max"], *diffs])
    lines = ["| benchmark | method | cells | also in the committed runs | largest metric difference |",
             "| --- | --- | --- | --- | --- |"]
    for (bench, method), g in sorted(groups.items()):
        lines.append(f"| {bench} | {method} | {g['cells']} | {g['shared']} | {g['max']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", nargs="+", metavar="RUN_JSON")
    ap.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="a run directory, then the runs to compare with")
    args = ap.parse_args(argv)
    if args.compare:
        print(compare(args.compare[0], args.compare[1:]))
    if args.table:
        print(table(args.table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
