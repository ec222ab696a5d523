"""The regime check of leave-K-out's ``small`` θ0 at several training-set sizes N (same recipe, same 400 steps at
batch 64, so the same training cost): where does the miniature stop copying its training images?

Writes ``results/regime/leave-k-out-small.json`` and prints the markdown table docs/benchmarks/leave-k-out.md shows.

Run (a few minutes per new N on one thread; θ0 and the samples are cached):
    OMP_NUM_THREADS=1 python tests/perf/regime_curve.py --n 300,1500
    python tests/perf/regime_curve.py --table results/regime/leave-k-out-small.json

The latent miniature (the ``diffusers`` model's ``small`` recipe on ``shapes`` with held-out combinations; ``--set``
takes leave-K-out options as JSON values; give ``--n``: without it the leave-K-out preset's N applies). The rows of
``results/regime/latent-small.json``, in order (``S`` = ``--set model='"diffusers"' --set dataset='"shapes"'``;
another model than the preset's brings its own recipe, so ``train_config={}`` is the recipe's 1,600 steps and
``E`` = ``--set 'train_config={"steps": 800}'`` the 800 steps the earlier rows used; ``J0`` = ``--set
'dataset_config={"jitter": 0}'``, the scenes without jitter):
    OMP_NUM_THREADS=2 python tests/perf/regime_curve.py --n 300,2000,4000 $S $E $J0 \
        --out results/regime/latent-small.json
    ... --append --n 4000 --seed 1 (then 2) $S $E $J0
    ... --append --n 2000 $S $E --set 'dataset_config={"heldout_min_objects": 1, "jitter": 0}'
    ... --append --n 2000 $S --set 'train_config={"steps": 1600}' $J0
    ... --append --n 8000 $S $E $J0
    ... --append --n 4000 --seed 0 (then 1, 2) $S $E                         # jittered scenes, 800 steps
    ... --append --n 4000 --seed 0 (then 1, 2) $S                            # the recipe: jitter, 1,600 steps
"""
from __future__ import annotations

import argparse
import sys
import warnings

warnings.filterwarnings("ignore")

from perfkit import json_options, read_result, result_options, write_result  # noqa: E402


def table(doc) -> str:
    lines = ["| model | seed | N | steps | epochs | queries from | set-up s | samples | near-copies, pixels [95 %] "
             "| near-copies, features [95 %] | NN ratio, pixels | NN ratio, features "
             "| ε̂ vs optimal denoiser (t = 100 / 200 / 400) | passes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        g = r["regime"]
        den = g.get("denoiser_cosine") or {}
        secs = r.get("seconds")
        dcfg = r.get("dataset_config") or {}
        source = ("held-out items" if not dcfg.get("holdout") else
                  f"held-out combinations, ≥ {dcfg.get('heldout_min_objects', 1)} object(s)")
        if dcfg.get("jitter"):
            source += f"; jitter {dcfg['jitter']:g}"

        def share(space: dict) -> str:
            ci = space.get("near_copy_ci95")
            if not ci:
                return f"{space['near_copy_share']:.0%}"
            return f"{space['near_copy_share']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"

        lines.append(f"| {r.get('model', 'tiny-t2i')} | {r.get('seed', doc.get('seed') or 0)} | {r['n']} | {r['plan']['steps']} | {r['epochs']:.0f} | {source} "
                     f"| {'—' if secs is None else f'{secs:.0f}'} | {g['queries']} | {share(g['pixel'])} "
                     f"| {share(g['features'])} | {g['pixel']['nn_ratio']:.2f} "
                     f"| {g['features']['nn_ratio']:.2f} | {' / '.join(f'{den[k]:.2f}' for k in sorted(den, key=int))} "
                     f"| {'yes' if g['passed'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="300,1500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="a leave-K-out option (JSON value), e.g. model='\"diffusers\"'")
    ap.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    result_options(ap, "results/regime/leave-k-out-small.json")
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)))
        return 0

    import genattr
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache

    genattr.load_plugins()
    import time

    sets = json_options(args.set)
    rows = []
    for n in ([int(x) for x in args.n.split(",")] if args.n else [None]):
        bench = genattr.get_benchmark("leave-k-out", scale="small", **({"n": n} if n else {}), **sets)
        env = RunEnv(cache=Cache(), seed=args.seed, scale="small")
        t0 = time.perf_counter()
        st = bench._setup(env)
        seconds = time.perf_counter() - t0
        plan = st.train_config
        n = len(st.train)
        epochs = int(plan["steps"]) * int(plan["batch_size"]) / n
        rows.append({"n": n, "epochs": epochs, "plan": plan, "model_fingerprint": st.base.fingerprint,
                     "model": bench.config["model"], "options": sets, "seconds": seconds, "seed": args.seed,
                     "dataset_config": bench._source[1],
                     "regime": st.provenance["regime"]})
        print(f"N={n}: {st.provenance['regime']['pixel']}", file=sys.stderr, flush=True)
    if args.append:
        import os

        if os.path.exists(args.out):
            old = read_result(args.out)
            rows = [{"seed": old.get("seed", 0), **r} for r in old["rows"]] + rows
    doc = {"what": "regime check of leave-K-out small θ0 by training-set size (set-up seconds: the first run's, "
                   "what was cached then not counted)", "seed": args.seed,
           "genattr": genattr.__version__, "rows": rows}
    write_result(args.out, doc)
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
