"""Self-influence of the gradient methods' draw structures: each of the first 30 training images of the tiny digits
model used as its own query; the rank of itself (1 = first of 30) per configuration.

Writes ``results/self-influence/tiny.json`` (one row per configuration: method, preset, draws, loss, the 30 ranks,
their median and the share ranked first) and prints the markdown table docs/methods/das-retrac.md shows.

Run (about a minute on one thread):
    OMP_NUM_THREADS=1 python tests/perf/self_influence.py [--out results/self-influence/tiny.json]
    python tests/perf/self_influence.py --table results/self-influence/tiny.json   # the table only
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings

warnings.filterwarnings("ignore")

from perfkit import read_result, result_options, write_result  # noqa: E402

POOL = 30
CONFIGS = [
    ("das", preset, {"draws": draws}) for preset in ("tiny", "small") for draws in ("shared", "per-item")
] + [
    ("retrac", preset, {"draws": draws, "loss": loss})
    for preset in ("tiny", "small") for draws in ("shared", "per-item") for loss in ("mse", "l1")
]


def table(rows) -> str:
    lines = ["| method | preset | draws | loss | median self-rank (of 30) | ranked first |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| `{r['method']}` | `{r['preset']}` | `{r['draws']}` | {('`' + r['loss'] + '`') if r['loss'] else '—'} "
                     f"| {r['median_rank']:g} | {r['first']:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    result_options(ap, "results/self-influence/tiny.json")
    ap.add_argument("--cache", default=None, help="genattr cache folder (default: GENATTR_CACHE or the user cache)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)["rows"]))
        return 0

    import torch

    import genattr
    from genattr.datasets.digits import Digits
    from genattr.harness.api import AttributionContext, Query
    from genattr.harness.cache import Cache
    from genattr.harness.models import load_or_train
    from genattr.plugins.models.recipes import recipe

    torch.set_num_threads(1)
    cache = Cache(args.cache)
    r = recipe("digits", "tiny")
    ds = Digits(**r["dataset"])
    model = load_or_train(cache, ds, r["model"], r["train"], seed=0)
    pool = ds.subset(ds.ids[:POOL])
    ctx = AttributionContext(model=model, train_set=pool, cache=cache, scale="tiny")
    queries = [Query(f"train-{i}", pool.item(i).image, pool.item(i).captions[0]) for i in range(POOL)]
    rows = []
    for name, preset, opts in CONFIGS:
        m = genattr.get_method(name, scale=preset, **opts)
        s = m.attribute(ctx, queries)
        ranks = [int((s[i] > s[i, i]).sum()) + 1 for i in range(POOL)]
        rows.append({"method": name, "version": m.version, "preset": preset, "draws": opts["draws"],
                     "loss": opts.get("loss"), "ranks": ranks, "median_rank": statistics.median(ranks),
                     "first": sum(r == 1 for r in ranks) / POOL, "config": m.config})
        print(f"{name} {preset} {opts}: median {rows[-1]['median_rank']}, first {rows[-1]['first']:.2f}",
              file=sys.stderr, flush=True)
    doc = {"what": "self-influence: rank of each training image when it is its own query", "pool": POOL,
           "model": {"name": "tiny-t2i", "recipe": "tiny", "dataset": "digits", "seed": 0,
                     "fingerprint": model.fingerprint},
           "genattr": genattr.__version__, "rows": rows}
    write_result(args.out, doc)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
