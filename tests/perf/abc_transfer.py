"""Does AbC's learned mapper transfer to a concept it was not trained on? Leave-one-training-concept-out on the
built-in Customized Model's **training** concepts (the test concepts are never used).

For every base model of ``--model-seeds`` and every training concept c: the two mappers of ``abc-clip`` (its
backbone: the built-in encoder offline) are trained on the *other* training concepts with each configuration of
``--grid`` (merged over the method's defaults; ``steps = 0`` is the identity mapper, i.e. the plain ``features``
method), and c's queries rank the base pool plus c's own exemplars (the benchmark's ``own`` pool). Recorded per
(base model, configuration, held-out concept): the mean AP over c's queries and the contrastive loss the mappers
reached on the concepts they were trained on. The table gives, per configuration, the held-out mAP per split
(averaged over concepts and base models) beside that training loss: a mapper that fits its training concepts while
its held-out mAP falls below the identity's does not transfer.

Run (the training concepts' customized models and queries come from the cache a Customized Model run filled;
seconds per base model once they are there):
    OMP_NUM_THREADS=2 python tests/perf/abc_transfer.py --set model=diffusers --model-seeds 0,1,2 \\
        --out results/calibration/abc-mapper-transfer-latent-small.json
    python tests/perf/abc_transfer.py --table results/calibration/abc-mapper-transfer-latent-small.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from perfkit import json_options, read_result, result_options, write_result  # noqa: E402

DEFAULT_GRID = [{"steps": 0}, {"steps": 10}, {"steps": 30}, {"steps": 100}, {"steps": 300},
                {"steps": 300, "reg": 1.0}]


def label(cfg: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(cfg.items())) or "defaults"


def table(doc) -> str:
    rows = doc["rows"]
    splits = sorted({r["split"] for r in rows}, key=lambda s: (s != "object-centric", s))
    configs: dict[str, list[dict]] = {}
    for r in rows:
        configs.setdefault(json.dumps(r["config"], sort_keys=True), []).append(r)
    seeds = sorted({r["model_seed"] for r in rows})
    lines = ["| mappers | " + " | ".join(f"held-out {s} mAP" for s in splits)
             + " | training loss (fit) | held-out concepts × base models |",
             "| --- | " + " | ".join("---" for _ in splits) + " | --- | --- |"]
    for key, rs in configs.items():
        cfg = json.loads(key)
        name = "identity (= `features`)" if cfg.get("steps") == 0 else label(cfg)
        if cfg == doc.get("preset"):
            name += " — the preset"
        per_split = [statistics.fmean(r["ap"] for r in rs if r["split"] == s) for s in splits]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in per_split)
                     + f" | {statistics.fmean(r['fit_loss'] for r in rs):.4f} | {len(rs) // len(seeds)} × "
                     f"{len(seeds)} |")
    return ("\n".join(lines) + f"\n\nBase models {', '.join(map(str, seeds))} of the `{doc['model']}` `{doc['scale']}` "
            f"recipe; each held-out concept's queries rank {doc['pool_base']} base items plus its own exemplars; the "
            "training loss is the multi-positive InfoNCE on the other training concepts after training (identity: "
            "before).")


def measure(options: dict, seeds, grid, scale: str) -> dict:
    import numpy as np

    import genattr
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark
    from genattr.benchmarks.customized_model.cases import training_concepts
    from genattr.benchmarks.customized_model.pools import score_pools
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache
    from genattr.plugins.methods import abc_tuned as abc
    from genattr.plugins.methods.features import train_image_embeddings

    genattr.load_plugins()
    bench = CustomizedModelBenchmark(scale=scale, verify="off", **options)
    method = genattr.get_method("abc-clip")
    defaults = {k: method.config[k] for k in ("temperature", "steps", "lr", "batch_size", "reg", "seed")}
    rows, pool_base = [], None
    for seed in seeds:
        t = time.time()
        env = RunEnv(cache=Cache(), seed=int(seed), scale=scale)
        state = bench._load(env, "train")
        cases = list(state.cases.values())
        enc = method.encoder(bench.context(cases[0].id, method, env, "train"))
        pool = train_image_embeddings(enc, state.pool, env.cache)
        concepts = abc.validate_concepts(training_concepts(state), "abc-clip")
        syn, syn_c, ex, ex_c = abc.concept_features(enc, concepts)
        pool_base = state.n_base
        for cfg in grid:
            train_cfg = {**defaults, **cfg}
            for k, case in enumerate(cases):
                keep_s, keep_e = syn_c != k, ex_c != k
                mappers, hist = abc.train_mappers(syn[keep_s], syn_c[keep_s], ex[keep_e], ex_c[keep_e], **train_cfg)
                ranked = abc.apply_mapper(mappers, "real", pool).double()
                queries = abc.apply_mapper(mappers, "synthesized", syn[syn_c == k]).double()
                aps = [score_pools(s, state.n_base, case.own_idx, ["own"])[0]["ap"]
                       for s in (queries @ ranked.T).numpy()]
                rows.append({"model_seed": int(seed), "config": cfg, "concept": case.id, "split": case.split,
                             "queries": len(aps), "ap": float(np.mean(aps)), "fit_loss": hist["final_loss"]})
        print(f"base model {seed}: {time.time() - t:.0f} s", flush=True)
    return {"model": options.get("model", "tiny-t2i"), "scale": scale, "pool_base": pool_base,
            "preset": {"steps": defaults["steps"]}, "options": options, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    result_options(ap, "runs/abc-mapper-transfer.json")
    ap.add_argument("--model-seeds", default="0")
    ap.add_argument("--grid", default=None, help="JSON list of abc-clip option dicts (default: a steps sweep)")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="bench_set",
                    help="a Customized Model option (JSON value, else a string), e.g. model=diffusers")
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)))
        return 0
    try:
        options = json_options(args.bench_set, strings=True)
        grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
        seeds = [int(s) for s in args.model_seeds.split(",")]
    except ValueError as e:
        ap.error(str(e))
    doc = measure(options, seeds, grid, args.scale)
    write_result(args.out, doc)
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
