"""The Customized Model benchmark's concept verification of one or more committed runs, as a markdown table: per
concept, the share of its queries whose nearest rendering is the concept's own (the render check, against chance),
the nearest-exemplar accuracy in pixel and style space, and whether it passed; then the verified share per split and
the run's set-up time.

    python tests/perf/verification_table.py --table results/customized-model/small/2026-12-07/run.json [RUN.json ...]
"""
from __future__ import annotations

import argparse
import json
import os


def table(paths) -> str:
    lines = ["| run | customization | concept | split | render check (own / chance) | nearest exemplars, pixels "
             "| nearest exemplars, style | verified |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    totals = []
    for path in paths:
        doc = json.load(open(path))
        bench = doc["benchmarks"]["customized-model"]
        cfg = bench["config"]
        run_name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        base_label = f"{cfg.get('model') or 'tiny-t2i'} {cfg.get('scale', '')} ({run_name})".replace("  ", " ")
        seeds = bench["provenance"].get("model_seeds")  # a model_seeds run: one provenance per base model
        per_seed = sorted(seeds.items(), key=lambda kv: int(kv[0])) if seeds else [(None, bench["provenance"])]
        for seed, prov in per_seed:
            label = base_label if seed is None else f"{base_label} base model {seed}"
            totals += _concept_rows(lines, label, cfg, prov)
    return "\n".join(lines) + "\n\n" + "; ".join(totals) + "."


def _concept_rows(lines: list, label: str, cfg: dict, prov: dict) -> list[str]:
    """Append one row per concept of a run's (or one base model's) provenance; return its totals."""
    totals = []
    ver = prov["verification"]["concepts"]
    given, recorded = cfg.get("customize") or {}, prov.get("customize") or {}
    weights = given.get("weights") or recorded.get("weights") or "recipe"
    augment = given.get("augment") or recorded.get("augment")
    if augment and augment != "none":
        weights += f", {augment} augmentation"
    per_split: dict[str, list[bool]] = {}
    for c in prov["concepts"]:
        v = ver.get(c["id"], {})
        r = v.get("render") or {}
        per_split.setdefault(c["split"], []).append(bool(c.get("verified")))
        lines.append(f"| {label} | {weights} | {c['id']} | {c['split']} | "
                     f"{r.get('nearest_own', float('nan')):.2f} / {r.get('chance', float('nan')):.2f} | "
                     f"{v.get('pixel', {}).get('nearest_own', float('nan')):.2f} | "
                     f"{v.get('style', {}).get('nearest_own', float('nan')):.2f} | "
                     f"{'yes' if c.get('verified') else 'no'} |")
    totals += [f"{label}, {split}: {sum(ok)} of {len(ok)} verified" for split, ok in per_split.items()]
    if prov.get("setup_s") is not None:
        totals.append(f"{label} set-up {prov['setup_s']:.0f} s (what the cache held then not counted)")
    return totals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", nargs="+", required=True, metavar="RUN_JSON")
    args = ap.parse_args(argv)
    print(table(args.table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
