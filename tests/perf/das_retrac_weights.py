"""Cost of the weights DAS and ReTrac take gradients over: the full UNet (their official code's default) against the
cross-attention K/V of the built-in presets, on leave-K-out's ``small`` θ0 — seconds per training item to build the
gradient store, measured in one run on the first ``--items`` items, and that cost scaled to the N training items.

Writes ``results/perf/das-retrac-weights.json`` and prints the markdown table docs/methods/das-retrac.md shows.

Run (a few minutes on one thread; θ0 from the cache or trained first):
    OMP_NUM_THREADS=1 python tests/perf/das_retrac_weights.py --items 24
    python tests/perf/das_retrac_weights.py --table results/perf/das-retrac-weights.json
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from perfkit import read_result, result_options, write_result  # noqa: E402


def table(doc) -> str:
    lines = ["| method | weights | parameters | store s / item | × K/V | store for N items (min) | stored floats / item "
             "| store for N items (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {r["method"]: r["s_per_item"] for r in doc["rows"] if r["selection"] == "cross-attn-kv"}
    for r in doc["rows"]:
        floats = int(r["config"].get("proj_dim") or r["parameters"])  # projected: k; exact: every parameter
        lines.append(f"| `{r['method']}` | `{r['selection']}` | {r['parameters']:,} | {r['s_per_item']:.3f} "
                     f"| {r['s_per_item'] / base[r['method']]:.1f} | {r['s_per_item'] * doc['n'] / 60:.1f} "
                     f"| {floats:,} | {floats * 4 * doc['n'] / 1e6:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=24)
    result_options(ap, "results/perf/das-retrac-weights.json")
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)))
        return 0

    import tempfile

    import torch

    import genattr
    from genattr.harness.api import AttributionContext, RunEnv
    from genattr.harness.cache import Cache

    torch.set_num_threads(1)
    genattr.load_plugins()
    cache = Cache()
    env = RunEnv(cache=cache, seed=0, scale="small")
    bench = genattr.get_benchmark("leave-k-out", scale="small")
    model, train, _ = bench.attribution_context(env)
    sub = train.subset(train.ids[: args.items])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # a fresh store for every measurement
        for name in ("das", "retrac"):
            for selection in ("cross-attn-kv", "full"):
                ctx = AttributionContext(model=model, train_set=sub, cache=Cache(tmp + f"/{name}-{selection}"),
                                         scale="small")
                m = genattr.get_method(name, scale="small", selection=selection)
                t0 = time.perf_counter()
                m.train_features(ctx)
                dt = time.perf_counter() - t0
                n_par = sum(int(p.numel()) for p in model.parameters(selection).values())
                rows.append({"method": name, "selection": selection, "parameters": n_par, "items": len(sub),
                             "seconds": round(dt, 3), "s_per_item": dt / len(sub), "config": m.config})
                print(f"{name} {selection}: {dt:.1f} s for {len(sub)} items", file=sys.stderr, flush=True)
    doc = {"what": "gradient-store cost by weight selection", "n": len(train), "items_measured": args.items,
           "threads": torch.get_num_threads(), "model_fingerprint": model.fingerprint,
           "genattr": genattr.__version__, "rows": rows}
    write_result(args.out, doc)
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
