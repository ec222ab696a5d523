"""The prescreen table: exhaustive unlearning vs each prescreen (and lighter updates) on a built-in benchmark.

For each variant and head size M: UNet evaluations per query (scoring + prescreen, plus the linear prescreen's
one-off gradient pass divided by the queries sharing the model), the update's and the scoring's seconds per query,
their ratios to exhaustive, top-10 overlap with the exhaustive ranking, and — customized-model — mean |ΔAP| on the
own pool, — leave-K-out — the overlap of the top-K removal set (identical sets give identical ΔL). Ratios come
from one run: run it alone on the machine, with one torch thread.

    OMP_NUM_THREADS=1 python tests/perf/prescreen_table.py --benchmark leave-k-out --scale small --queries 8
    OMP_NUM_THREADS=1 python tests/perf/prescreen_table.py --benchmark customized-model --scale small
    # faithful scoring (T = 20, all captions): --set timesteps=20 --set captions=null
    # lighter updates: --variants exhaustive,coarse-1,coarse-2,linear,draws-128,draws-128-stratified

Models come from the user's cache (``GENATTR_CACHE``, else ``~/.cache/genattr``); missing ones are built first.
"""
import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")

#: Variants beyond perfkit.PRESCREENS: the update with fewer (or stratified) draws per step, scored exhaustively.
UPDATE_VARIANTS = {
    "draws-128": {"accumulation": 2},
    "draws-128-stratified": {"accumulation": 2, "query_timesteps": "stratified"},
    "draws-256-stratified": {"accumulation": 4, "query_timesteps": "stratified"},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="leave-k-out", choices=["leave-k-out", "customized-model"])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--queries", type=int, default=None, help="leave-k-out: queries of θ0 (default: the benchmark's)")
    ap.add_argument("--refine", default="50,100", help="head sizes M")
    ap.add_argument("--concepts", type=int, default=None,
                    help="customized-model: only the first N test concepts of each split (default: all)")
    ap.add_argument("--only", default=None, help="customized-model: only these concept ids (comma-separated)")
    ap.add_argument("--variants", default="exhaustive,coarse-1,coarse-2,linear")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="unlearning options for every variant (JSON values), e.g. timesteps=20")
    ap.add_argument("--shared-queries", type=int, default=None,
                    help="queries sharing the linear prescreen's gradient pass (default: those measured)")
    ap.add_argument("--count-pool", type=int, default=None,
                    help="also count evaluations per query at this pool size (stand-in model, real scoring path)")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import genattr
    from genattr.harness.cache import Cache
    from genattr.harness.run import parse_value

    import perfkit

    genattr.load_plugins()
    base = {}
    for kv in args.sets:
        key, _, raw = kv.partition("=")
        base[key] = parse_value(raw)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = {**perfkit.PRESCREENS, **UPDATE_VARIANTS}
    unknown = [v for v in names if v not in known]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(known)}")
    if names[0] != "exhaustive":
        names.insert(0, "exhaustive")
    variants = {v: known[v] for v in names}
    cache = Cache()
    t = time.time()
    if args.benchmark == "leave-k-out":
        groups = [perfkit.lko_setup(args.scale, cache, num_queries=args.queries)]
    else:
        groups = perfkit.customized_setups(args.scale, cache)
        if args.concepts:
            by_split: dict = {}
            for g in groups:
                by_split.setdefault(g.extra.get("split"), []).append(g)
            groups = [g for gs in by_split.values() for g in gs[: args.concepts]]
        if args.only:
            groups = [g for g in groups if g.name in args.only.split(",")]
    print(f"setup {time.time() - t:.0f} s: {len(groups)} group(s), "
          f"{sum(len(g.queries) for g in groups)} queries", flush=True)
    refine = [int(m) for m in args.refine.split(",")]
    t = time.time()
    rows = perfkit.compare_prescreens(groups, variants, base, refine, shared_queries=args.shared_queries)
    print(f"measured in {time.time() - t:.0f} s (options {base or 'preset'})")
    print(perfkit.format_rows(rows))
    out = {"benchmark": args.benchmark, "scale": args.scale, "options": base, "rows": rows}
    if args.count_pool:
        counted = perfkit.count_evaluations(
            args.count_pool, {"exhaustive": {}, **{f"{v}-M{m}": {**variants[v], "refine": m}
                                                   for v in names[1:] if variants[v].get("prescreen")
                                                   for m in refine}},
            {"preset": "tiny", "steps": 1, "batch": 4, "accumulation": 1, "fisher_samples": 8,
             **{k: base[k] for k in ("timesteps", "captions", "flip") if k in base}},
            shared_queries=args.shared_queries or 110)
        print(perfkit.format_rows(counted, ["variant", "n", "scoring_evals_per_query", "one_off_gradient_evals",
                                            "evals_per_query", "evals_ratio"]))
        out["counted"] = counted
    perfkit.dump(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
