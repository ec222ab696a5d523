"""LDS of each method's head only: a diagnostic over a finished LDS run (docs/benchmarks/lds.md, "How much of LDS
is the head?").

For every method of the run, its scores are read back from the benchmark's score cache (computed again where
missing) and scored with the registered ``lds`` metric and with ``lds`` option ``top=k`` for each k: the items
outside the top k all take the (k+1)-th score, so the tail's order and scale no longer count. Prints mean ± s.e.
over the run's queries and the paired difference to plain LDS with its 95 % bootstrap interval.

    OMP_NUM_THREADS=1 python tests/perf/lds_top_k.py runs/lds-small-cpu --top 30,75,150
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished `genattr run lds` directory")
    ap.add_argument("--top", default="30,75,150", help="comma-separated k (counts, or fractions of N)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the run's methods")
    args = ap.parse_args(argv)

    import numpy as np

    import genattr
    from genattr.benchmarks.lds.benchmark import LDSBenchmark
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache
    from genattr.harness.statistics import mean_se, paired_bootstrap
    from genattr.plugins.metrics.lds import LDS

    run = json.loads((Path(args.run) / "run.json").read_text())
    bcfg = run["benchmarks"]["lds"]["config"]
    scale = run["scale"]
    overrides = {k: v for k, v in bcfg.items() if k not in ("scale",)}
    bench = LDSBenchmark(scale, **overrides)
    configs = {m: v["configs"]["lds"] for m, v in run["methods"].items()}
    cache = Cache(os.environ.get("GENATTR_CACHE", os.path.expanduser("~/.cache/genattr")))
    env = RunEnv(cache=cache, seed=int(run["seed"]), scale=scale, method_configs=configs)
    st = bench._ready(env)
    f = st.outputs[: int(bench.config["train_seeds"])]
    tops = [float(t) if "." in t else int(t) for t in args.top.split(",")]
    metrics = [("lds", LDS())] + [(f"top {t:g}", LDS(top=t)) for t in tops]
    names = args.methods.split(",") if args.methods else list(configs)
    table = {}
    print(f"{len(st.queries)} queries, M = {len(st.subsets)}, N = {len(st.train)}")
    print("| method | " + " | ".join(c for c, _ in metrics) + " |")
    print("| --- " * (len(metrics) + 1) + "|")
    for name in names:
        method = genattr.get_method(name)  # the run's resolved configuration keys the cached scores
        if hasattr(method, "resolve_config"):
            method.resolve_config(scale, bench.preset_hint)
        scores = np.asarray(bench.method_scores(method, st.queries, env, st, bench.preset_hint))
        vals = {c: {k: float(m(scores[k], st.membership, f[:, :, k])) for k in range(len(st.queries))}
                for c, m in metrics}
        cells = []
        for c, _ in metrics:
            ms = mean_se(list(vals[c].values()))
            cell = f"{ms['mean']:.3f} ± {ms['se']:.3f}"
            if c != "lds":
                d = paired_bootstrap(vals[c], vals["lds"])
                cell += f" ({d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}])"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        table[name] = vals
    print()
    for c, _ in metrics:  # the two highest means per column, paired
        first, second = sorted(table, key=lambda m: -float(np.mean(list(table[m][c].values()))))[:2]
        d = paired_bootstrap(table[first][c], table[second][c])
        print(f"{c}: {first} - {second} = {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")


if __name__ == "__main__":
    main()
