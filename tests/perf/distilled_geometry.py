"""Choose the distilled student's geometry on training data alone: for each (towers, scale_sign) the last epoch's
training BCE and the duplicate test — every training item used as its own query (image and first caption) and the
rank of itself (the default must put it in the top 1 %) — over several base models.

Writes ``results/distilled-geometry/<scale>.json`` and prints the markdown table docs/methods/distilled.md shows.

Run (a few minutes at ``tiny`` on one thread; the teacher is computed once per base model and shared):
    OMP_NUM_THREADS=1 python tests/perf/distilled_geometry.py --scale tiny --model-seeds 0,1,2
    python tests/perf/distilled_geometry.py --table results/distilled-geometry/tiny.json   # the table only
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings

warnings.filterwarnings("ignore")

from perfkit import read_result, result_options, write_result  # noqa: E402

GEOMETRIES = [("shared", "free"), ("shared", "negative"), ("separate", "free"), ("separate", "negative")]


def table(rows) -> str:
    lines = ["| towers | scale_sign | base models | final a (mean) | training BCE (mean) | duplicate self-rank: median | in top 1 % |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for towers, sign in GEOMETRIES:
        sel = [r for r in rows if r["towers"] == towers and r["scale_sign"] == sign]
        if not sel:
            continue
        ranks = [x for r in sel for x in r["ranks"]]
        top = sum(r["top1pct"] * len(r["ranks"]) for r in sel) / len(ranks)
        lines.append(f"| `{towers}` | `{sign}` | {len(sel)} | {statistics.mean(r['a'] for r in sel):+.2f} "
                     f"| {statistics.mean(r['bce'] for r in sel):.4f} | {statistics.median(ranks):g} of {sel[0]['n']} "
                     f"| {top:.0%} |")
    return "\n".join(lines)


def bench_context(bench, env, model, ds):
    from genattr.harness.api import AttributionContext

    return AttributionContext(model=model, train_set=ds, cache=env.cache, seed=env.seed, scale=env.scale,
                              extra={"benchmark": bench.name, "preset_hint": None})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--model-seeds", default="0,1,2")
    result_options(ap, None)  # default: results/distilled-geometry/<scale>.json
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)["rows"]))
        return 0

    import math

    import torch

    import genattr
    from genattr.harness.api import Query, RunEnv
    from genattr.harness.cache import Cache

    torch.set_num_threads(1)
    genattr.load_plugins()
    cache = Cache()
    rows = []
    for seed in (int(s) for s in args.model_seeds.split(",")):
        env = RunEnv(cache=cache, seed=seed, scale=args.scale)
        bench = genattr.get_benchmark("leave-k-out", scale=args.scale)
        bench.setup(env)
        model, ds, _ = bench.attribution_context(env)
        ctx = bench_context(bench, env, model, ds)
        n = len(ds)
        queries = [Query(f"dup-{i}", ds.item(i).image, ds.item(i).captions[0]) for i in range(n)]
        for towers, sign in GEOMETRIES:
            m = genattr.get_method("distilled", towers=towers, scale_sign=sign)
            m.resolve_config(args.scale)
            m.prepare(ctx)
            s = m.attribute(ctx, queries)
            ranks = [int((s[i] > s[i, i]).sum()) + 1 for i in range(n)]
            cut = max(1, math.ceil(0.01 * n))
            rows.append({"model_seed": seed, "towers": towers, "scale_sign": sign, "n": n,
                         "a": float(m.student(ctx)[0].scale.detach()), "bce": m.stats["training_loss_last"],
                         "ranks": ranks, "top1pct": sum(r <= cut for r in ranks) / n, "version": m.version,
                         "config": {k: v for k, v in m.config.items() if k != "teacher_config"}})
            print(f"seed {seed} {towers}/{sign}: a={rows[-1]['a']:+.2f} bce={rows[-1]['bce']:.4f} "
                  f"median self-rank {statistics.median(ranks)} top1% {rows[-1]['top1pct']:.2f}",
                  file=sys.stderr, flush=True)
    write_result(args.out or f"results/distilled-geometry/{args.scale}.json",
                 {"what": "distilled student geometry on training data", "scale": args.scale,
                  "benchmark_theta0": "leave-k-out", "genattr": genattr.__version__, "rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
