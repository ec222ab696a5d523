"""Per-query time of ``distilled`` against exhaustive unlearning and unlearning with a prescreen, in one run, on the
same queries of a built-in benchmark (leave-K-out: θ0's queries; Customized Model: the first queries of the first
concepts, each scored under its customized model as the benchmark does).

The methods are created and resolved as the runner creates them (scale and the benchmark's preset hint), so with
the same ``--distilled`` options as a run, ``distilled``'s prepare loads that run's cached teacher rankings, student
and index (its one-off costs are not timed here: they are in the run's rows and the method's ``stats``). The
unlearning variants share every cached one-off (Fisher, θ0 losses); each query's update is computed per variant.

Run (one torch thread; minutes):

    OMP_NUM_THREADS=1 python tests/perf/distilled_speed.py --benchmark customized-model --concepts 2 --queries 2 \\
        --distilled '{"teacher_queries": 128, "teacher_options": {"prescreen": "coarse", "coarse_timesteps": 1,
        "refine": 100}}'
    OMP_NUM_THREADS=1 python tests/perf/distilled_speed.py --benchmark leave-k-out --queries 3
"""
import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", choices=("leave-k-out", "customized-model"), default="leave-k-out")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--queries", type=int, default=3, help="queries per group")
    ap.add_argument("--concepts", type=int, default=2, help="customized-model: concepts (groups) measured")
    ap.add_argument("--distilled", default="{}", help="JSON options of distilled (as the run's --set)")
    ap.add_argument("--prescreen", default='{"prescreen": "coarse", "coarse_timesteps": 2, "refine": 100}',
                    help="JSON options of the prescreened unlearning variant")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    import perfkit
    from genattr import load_plugins
    from genattr.harness.cache import Cache
    from genattr.harness.run.driver import create, resolve_method

    torch.set_num_threads(1)
    load_plugins()
    cache = Cache()
    if args.benchmark == "leave-k-out":
        groups, hint = [perfkit.lko_setup(args.scale, cache, seed=args.seed)], None
    else:
        groups, hint = perfkit.customized_setups(args.scale, cache, seed=args.seed)[: args.concepts], "customized"
    variants = {
        "distilled": ("distilled", json.loads(args.distilled)),
        "unlearning-exhaustive": ("unlearning", {"prescreen": "none"}),
        "unlearning-prescreen": ("unlearning", json.loads(args.prescreen)),
    }
    rows = []
    for label, (name, opts) in variants.items():
        spent = {"prepare_s": 0.0, "attribute_s": 0.0, "queries": 0}
        for g in groups:
            method = create("method", name, opts)
            resolve_method(method, args.scale, hint)
            ctx = g.context(method)
            qs = g.queries[: args.queries]
            t0 = time.perf_counter()
            method.prepare(ctx)
            t1 = time.perf_counter()
            method.attribute(ctx, qs)
            t2 = time.perf_counter()
            spent["prepare_s"] += t1 - t0
            spent["attribute_s"] += t2 - t1
            spent["queries"] += len(qs)
            print(f"{label} {g.name}: prepare {t1 - t0:.2f} s, {len(qs)} queries {t2 - t1:.3f} s", flush=True)
        rows.append({"variant": label, **spent, "per_query_s": spent["attribute_s"] / spent["queries"]})
    ref = rows[1]["per_query_s"]
    print(f"\n{args.benchmark} ({args.scale}), {rows[0]['queries']} queries, one torch thread")
    print("| variant | per query (s) | exhaustive / variant | prepare (s, cached one-offs) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['per_query_s']:.4g} | {ref / r['per_query_s']:.4g} | {r['prepare_s']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
