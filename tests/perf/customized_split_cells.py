"""Run one method on the cells of one split of the built-in Customized Model benchmark, outside a run directory.

A diagnosis tool: for example, unlearning with a different step on the artist-style cells only, on exactly the
queries and pools of the benchmark (the runner has no cell filter, and a different method configuration would be a
separate run of every cell). Rows go to ``--out`` (JSON lines, resumable); mean ± standard error is printed.

Run: python tests/perf/customized_split_cells.py --split artist-style --method unlearning --set alpha=1e-3 \\
         [--scale small] [--out FILE.jsonl]
"""
import argparse
import json
import math
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="artist-style", choices=["object-centric", "artist-style"])
    ap.add_argument("--method", default="unlearning")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="method configuration; values parsed as JSON where possible")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import genattr
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache

    config = {}
    for kv in args.sets:
        key, _, raw = kv.partition("=")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    genattr.load_plugins()
    bench = CustomizedModelBenchmark(scale=args.scale)
    env = RunEnv(cache=Cache(), seed=0, scale=args.scale)
    bench.setup(env)
    method = genattr.get_method(args.method, **config)
    done = {}
    if args.out:
        try:
            with open(args.out) as f:
                done = {r["cell"]: r for r in map(json.loads, f)}
        except FileNotFoundError:
            pass
    rows = []
    for cell in bench.cells([args.method]):
        if cell.params["split"] != args.split:
            continue
        if cell.id in done:
            rows.append(done[cell.id])
            continue
        t = time.time()
        out = bench.run_cell(cell, method, env)
        rec = {"cell": cell.id, "config": config, "ap": out["ap"], "recall@10": out["recall@10"],
               "ranks_own": out["extra"]["ranks_own"], "s": round(time.time() - t, 1)}
        print(json.dumps(rec), flush=True)
        rows.append(rec)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    for key in ("ap", "recall@10"):
        x = [r[key] for r in rows]
        m = sum(x) / len(x)
        se = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1) / len(x)) if len(x) > 1 else 0.0
        print(f"{args.method} {config} {args.split} {key}: {m:.4f} ± {se:.4f} (n={len(x)})")


if __name__ == "__main__":
    sys.exit(main())
