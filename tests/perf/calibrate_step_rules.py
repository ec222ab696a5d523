"""The unlearning step-rule study on the Customized Model miniature's **training** concepts (never the test concepts).

Each configuration of the grid (the paper's fixed α and the adaptive rules ``fisher-norm`` and ``loss-target``,
docs/methods/unlearning.md) is scored with every method seed on the first ``--queries`` queries of every training
concept, ranking a seeded sample of ``--pool-sample`` base items plus the concept's own exemplars
(``calibrate(pool_sample=…)``). Printed per configuration: mAP per split averaged over the method seeds, the
seed-to-seed spread, and the realised steps (mean Fisher length and linearised loss rise per step, and the query
loss on the last step's draws over the first's — from ``Unlearning.step_trace``). Pixel on the same pools for
reference. Every query's record is appended to ``--out`` as one JSON line, so an interrupted study keeps its results.

Run (tens of minutes on 2 cores; customizes the six training concepts first if they are not cached):

    OMP_NUM_THREADS=1 python tests/perf/calibrate_step_rules.py --seeds 0,1 --out runs/step-rules.jsonl \\
        --grid '[{"alpha":1e-3},{"alpha":1e-2},{"step_rule":"fisher-norm","step_norm":0.1}, …]'
"""
import argparse
import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

DEFAULT_GRID = [
    {"alpha": 1e-3}, {"alpha": 1e-2},
    {"step_rule": "loss-target", "loss_target": 1.5}, {"step_rule": "loss-target", "loss_target": 3.0},
    {"step_rule": "loss-target", "loss_target": 10.0},
]


def _label(cfg):
    return ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("preset", "seed"))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default=json.dumps(DEFAULT_GRID), help="JSON list of unlearning option sets")
    ap.add_argument("--seeds", default="0,1", help="method seeds (unlearning's option seed)")
    ap.add_argument("--preset", default="customized-small")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--pool-sample", type=int, default=300)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--run-seed", type=int, default=0, help="the benchmark's seed (training concepts' queries)")
    ap.add_argument("--out", default=None, help="JSON lines, one per scored query")
    ap.add_argument("--no-pixel", action="store_true")
    args = ap.parse_args(argv)

    import genattr
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark, calibrate
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache

    genattr.load_plugins()
    bench = CustomizedModelBenchmark(scale=args.scale, verify="off")
    env = RunEnv(cache=Cache(), seed=args.run_seed, scale=args.scale)
    t = time.time()
    bench._load(env, "train")
    print(f"training concepts ready in {time.time() - t:.0f} s", flush=True)
    out = open(args.out, "a") if args.out else None

    def record(r):
        rec = {k: v for k, v in r.items() if k != "method"}
        trace = getattr(r.get("method"), "step_trace", None)
        if trace:
            rec["trace"] = trace
        print("  ", json.dumps(rec, default=str)[:400], flush=True)
        if out is not None:
            out.write(json.dumps(rec, default=str) + "\n")
            out.flush()

    if not args.no_pixel:
        pixel = calibrate(bench, env, "pixel", [{}], pool_sample=args.pool_sample, queries_per_concept=args.queries)
        print("pixel", json.dumps({k: pixel["table"][0][k] for k in ("mean", "by_split")}), flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = json.loads(args.grid)
    summary = []
    for g in grid:
        per_seed = []
        traces: list = []

        def keep(r, traces=traces):
            record(r)
            tr = getattr(r.get("method"), "step_trace", None)
            if tr:
                traces.append([dict(s) for s in tr])

        for seed in seeds:
            t = time.time()
            res = calibrate(bench, env, "unlearning", [{**g, "seed": seed}], base_config={"preset": args.preset},
                            pool_sample=args.pool_sample, queries_per_concept=args.queries, on_result=keep)
            row = res["table"][0]
            per_seed.append(row["by_split"])
            print(f"{_label(g)} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["by_split"].items())
                  + f" ({time.time() - t:.0f} s)", flush=True)
        splits = sorted(per_seed[0])
        mean = {k: statistics.fmean(s[k] for s in per_seed) for k in splits}
        spread = {k: (max(s[k] for s in per_seed) - min(s[k] for s in per_seed)) for k in splits}
        steps = {"fisher_length": statistics.fmean(s["fisher_length"] for tr in traces for s in tr),
                 "predicted_rise": statistics.fmean(s["predicted_rise"] for tr in traces for s in tr),
                 "loss_last_over_first": statistics.fmean(tr[-1]["loss"] / tr[0]["loss"] for tr in traces
                                                          if tr[0]["loss"] > 0)} if traces else {}
        summary.append({"config": g, "mean": mean, "spread": spread, "steps": steps})
        print(f"== {_label(g)}: " + ", ".join(f"{k} {mean[k]:.3f} (seed spread {spread[k]:.3f})" for k in splits)
              + (f"; step Fisher length {steps['fisher_length']:.3g}, linearised rise {steps['predicted_rise']:.3g},"
                 f" last/first step loss {steps['loss_last_over_first']:.2f}" if steps else ""), flush=True)
    print(json.dumps(summary, indent=1, default=str), flush=True)
    if out is not None:
        out.write(json.dumps({"summary": summary}, default=str) + "\n")
        out.close()


if __name__ == "__main__":
    sys.exit(main())
