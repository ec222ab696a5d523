"""Run one method on the cells of one split of the built-in Customized Model benchmark, outside a run directory.

A diagnosis tool: for example, unlearning with a different step on the artist-style cells only, on exactly the
queries and pools of the benchmark (the runner has no cell filter, and a different method configuration would be a
separate run of every cell). Rows go to ``--out`` (JSON lines, resumable); mean ± standard error is printed.

Run: python tests/perf/customized_split_cells.py --split artist-style --method unlearning --set alpha=1e-3 \\
         [--scale small] [--out FILE.jsonl]
"""
import argparse
import json
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
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark, mean_se
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache
    from genattr.harness.run import parse_value

    config = {}
    for kv in args.sets:
        key, _, raw = kv.partition("=")
        config[key] = parse_value(raw)
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
        ms = mean_se([r[key] for r in rows])
        print(f"{args.method} {config} {args.split} {key}: {ms['mean']:.4f} ± {ms['se']:.4f} (n={ms['n']})")


if __name__ == "__main__":
    sys.exit(main())
