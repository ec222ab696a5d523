"""Calibrate a method's scaled settings (TRAK-family λ, timesteps and projection size; DataInf's damping; unlearning's
α) on the built-in Customized Model miniature's **training** concepts, over several base models.

The test concepts are never used. Every configuration of ``--grid`` (a JSON list of option dicts, merged over the
method's scale preset) is scored on the first ``--queries`` queries of every training concept, over the whole pool
of each concept's model, for every base-model seed of ``--model-seeds`` (the benchmark's ``model_seeds``: the base
model, the training concepts and their queries are those of that seed; the seed also seeds the method, unless
``--method-seeds`` gives method seeds: each is then run on every base model through the method's ``seed`` option;
``default`` in the list is the model seed, so ``default,10`` runs each configuration at two method seeds).
Printed per configuration: mAP per split per run (base model × method seed) and the mean over runs; ``--out``
appends one JSON line per (configuration, base model, method seed). Gradient stores are keyed without λ, so a λ
sweep reuses one store per concept; for a TRAK-family projection-size sweep put ``"unprojected_store": true`` in the
first configuration: the gradients are then taken once per concept and every other size is projected from them.

``--set KEY=VALUE`` passes an option to the benchmark (``--set model=diffusers``: the latent miniature);
``--pool-sample N`` ranks a seeded sample of N base items plus each concept's exemplars (``calibrate(pool_sample=…)``,
for methods whose cost grows with the pool, such as unlearning). Both are recorded in every ``--out`` line, and a
table refuses records that differ in them.

Run (tens of minutes per base model and store on 2 cores; customizes the training concepts first if not cached):
    OMP_NUM_THREADS=1 python tests/perf/calibrate_baselines.py --method trak \\
        --grid '[{"lambda_reg": 0.01}, {"lambda_reg": 0.1}, {"lambda_reg": 1.0}]' --model-seeds 0,1,2 \\
        --out runs/baselines-calibration.jsonl
    OMP_NUM_THREADS=2 python tests/perf/calibrate_baselines.py --method unlearning --set model=diffusers \
        --grid '[{"preset": "customized-small", "alpha": 1e-3}, {"preset": "customized-small", "alpha": 1e-2}]' \
        --pool-sample 300 --model-seeds 0,1,2 --method-seeds default,10 --out runs/alpha-latent.jsonl
    python tests/perf/calibrate_baselines.py --table results/calibration/das-lambda-small.jsonl   # the table only

The table has one row per configuration: mAP per split and their mean, each averaged over the runs (base model ×
method seed) that configuration has, the mean of every run, and the best mean in bold.
"""
import argparse
import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def table(records) -> str:
    """The markdown table of ``--out`` records (one per configuration, base model and method seed)."""
    settings = {json.dumps([r.get("benchmark_options"), r.get("pool_sample")], sort_keys=True) for r in records}
    if len(settings) > 1:
        raise SystemExit("calibrate_baselines: the records differ in their benchmark options or pool sample: "
                         + "; ".join(sorted(settings)))
    runs: dict[str, dict] = {}
    for r in records:
        label = json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True)
        runs.setdefault(label, {})[(r["model_seed"], r.get("method_seed"))] = r["by_split"]
    splits = sorted({k for seeds in runs.values() for s in seeds.values() for k in s},
                    key=lambda k: (k != "object-centric", k))
    rows = []
    for label, seeds in runs.items():
        per_split = {k: statistics.fmean(s[k] for s in seeds.values()) for k in splits}
        run_means = [(key, statistics.fmean(s.values())) for key, s in sorted(seeds.items(), key=lambda kv: (
            kv[0][0], -1 if kv[0][1] is None else kv[0][1]))]
        rows.append((label, len(seeds), per_split, statistics.fmean(per_split.values()), run_means))
    best = max(r[3] for r in rows)
    out = ["| configuration | runs | " + " | ".join(f"{k} mAP" for k in splits)
           + " | mean | per run (base model · method seed: mean) |",
           "| --- | --- | " + " | ".join("---" for _ in splits) + " | --- | --- |"]
    for label, n, per_split, mean, run_means in rows:
        cell = f"**{mean:.3f}**" if mean == best else f"{mean:.3f}"
        per_run = ", ".join(f"{ms} · {'default' if sd is None else sd}: {m:.3f}" for (ms, sd), m in run_means)
        out.append(f"| `{label}` | {n} | " + " | ".join(f"{per_split[k]:.3f}" for k in splits)
                   + f" | {cell} | {per_run} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default=None, help="print the markdown table of an --out file and exit")
    ap.add_argument("--method")
    ap.add_argument("--grid", help="JSON list of option dicts")
    ap.add_argument("--model-seeds", default="0")
    ap.add_argument("--method-seeds", default="",
                    help="comma-separated method seeds (option 'seed'); 'default' (and the default): the model seed, "
                         "e.g. default,10")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--pool-sample", type=int, default=None,
                    help="rank a seeded sample of this many base items plus the concept's exemplars instead of the "
                         "whole pool (calibrate(pool_sample=…); for methods whose cost grows with the pool)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="bench_set",
                    help="a Customized Model option (JSON value, else a string), e.g. model=diffusers")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return 0
    if not args.method or not args.grid:
        ap.error("--method and --grid are required (or --table FILE)")

    import genattr
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark, calibrate
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache

    genattr.load_plugins()
    grid = json.loads(args.grid)
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise SystemExit("--grid must be a JSON list of option dicts")
    from perfkit import json_options

    try:
        options = json_options(args.bench_set, strings=True)
    except ValueError as e:
        ap.error(str(e))
    bench = CustomizedModelBenchmark(scale=args.scale, verify="off", **options)
    method_seeds = [None] if not args.method_seeds else [None if s.strip() == "default" else int(s)
                                                         for s in args.method_seeds.split(",")]
    records = []
    for ms in (int(s) for s in args.model_seeds.split(",")):
        env = RunEnv(cache=Cache(), seed=ms, scale=args.scale)
        for sd in method_seeds:
            t = time.time()
            g_sd = grid if sd is None else [{**g, "seed": sd} for g in grid]
            res = calibrate(bench, env, args.method, g_sd, queries_per_concept=args.queries,
                            pool_sample=args.pool_sample)
            tag = f"base model {ms}" + ("" if sd is None else f", method seed {sd}")
            print(f"{tag}: {time.time() - t:.0f} s", flush=True)
            for row in res["table"]:
                label = json.dumps({k: v for k, v in row["config"].items() if k != "seed"}, sort_keys=True)
                print(f"  {label} {tag}: mAP {row['mean']:.3f} "
                      + ", ".join(f"{k} {v:.3f}" for k, v in sorted(row["by_split"].items())), flush=True)
                rec = {"method": args.method, "config": row["config"], "model_seed": ms}
                if sd is not None:
                    rec["method_seed"] = sd
                if options:
                    rec["benchmark_options"] = options
                if args.pool_sample is not None:
                    rec["pool_sample"] = args.pool_sample
                rec = {**rec, "by_split": row["by_split"], "values": row["values"]}
                records.append(rec)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
    print(table(records), flush=True)  # every configuration over the runs of this call

if __name__ == "__main__":
    sys.exit(main())
