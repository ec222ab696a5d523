"""Calibrate the unlearning step size α of the built-in Customized Model miniature on its **training** concepts.

The test concepts are never used. Each configuration is scored on the first ``--queries`` queries of every
training concept, ranking a seeded sample of ``--pool-sample`` base items plus the concept's own exemplars
(``calibrate(pool_sample=…)``), so a configuration costs one unlearning per query and a small scoring pass.
Pixel similarity on the same pools is printed for reference.

Run: python tests/perf/calibrate_customized.py [--alphas 1e-4,1e-3,3e-3,1e-2,3e-2] [--out FILE.json]
(tens of minutes on 2 cores; customizes the six training concepts first if they are not cached).
"""
import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="1e-4,1e-3,3e-3,1e-2,3e-2")
    ap.add_argument("--preset", default="customized-small")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--pool-sample", type=int, default=300)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import genattr
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark, calibrate
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache

    genattr.load_plugins()
    bench = CustomizedModelBenchmark(scale=args.scale, verify="off")
    env = RunEnv(cache=Cache(), seed=0, scale=args.scale)
    t = time.time()
    bench._load(env, "train")
    print(f"training concepts ready in {time.time() - t:.0f} s", flush=True)
    report = {"pool_sample": args.pool_sample, "queries_per_concept": args.queries, "scale": args.scale}
    pixel = calibrate(bench, env, "pixel", [{}], pool_sample=args.pool_sample, queries_per_concept=args.queries)
    report["pixel"] = pixel["table"][0]
    print("pixel", json.dumps({k: pixel["table"][0][k] for k in ("mean", "by_split")}), flush=True)
    grid = [{"alpha": float(a)} for a in args.alphas.split(",")]
    t = time.time()
    res = calibrate(bench, env, "unlearning", grid, base_config={"preset": args.preset},
                    pool_sample=args.pool_sample, queries_per_concept=args.queries,
                    on_result=lambda r: print("  ", r, flush=True))
    report["unlearning"] = res
    report["unlearning_s"] = round(time.time() - t, 1)
    for row in res["table"]:
        print(f"alpha={row['config']['alpha']:g} mAP={row['mean']:.3f} by split "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["by_split"].items()), flush=True)
    print("best", res["best"], f"({report['unlearning_s']} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
