"""The ceiling of the Customized Model's render check for a latent model: the check applied to the concepts' own
renderings of their query scenes after a round trip through the base model's autoencoder (``decode(latents(x))``),
instead of to generated queries.

A concept whose round-tripped renderings pass the render check is one the autoencoder can draw well enough for the
check to see it, so when its generated queries fail, the failure belongs to the customization (or to the base
UNet), not to the autoencoder. A failing round trip says the autoencoder does not draw the concept faithfully from
its own encoding; generated latents are not bound to the encoder's, so it does not rule the concept out. Printed
per test concept: the render check of the exact renderings (1.00 by construction: the sanity row), of their round
trips, which rendering each round trip is nearest to, and the round trip's PSNR (images in [-1, 1] taken as [0, 1]);
then the same check on the generated queries (the verification's figure) with what they land nearest to, and, for
objects, how many queries whose prompt names another layout than the exemplar's are nearer the glyph drawn in the
exemplar's layout than in the prompted one (customized models that copy their exemplar's layout).

Run (seconds once the benchmark's models are cached; ``--set`` takes the benchmark's options):
    OMP_NUM_THREADS=2 python tests/perf/render_ceiling.py --set model=diffusers --out results/perf/render-ceiling.json
    python tests/perf/render_ceiling.py --table results/perf/render-ceiling.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import Counter

warnings.filterwarnings("ignore")


def _mse(a, b) -> float:
    """Pixel MSE, min over a horizontal flip of ``b`` (as the render check)."""
    import torch

    return min(float(((a - b) ** 2).mean()), float(((a - torch.flip(b, dims=[-1])) ** 2).mean()))


def _exemplar_layout(case, specs, queries, res: int) -> tuple[int, int]:
    """Object concepts: of the generated queries whose prompt names another layout than the exemplar's, how many are
    nearer the concept drawn as in its exemplar (the exemplar's scene) than drawn as the prompt asks — queries that
    copy the exemplar's layout. Returns (nearer the exemplar's layout, queries counted)."""
    ex_specs = list(getattr(case.concept, "exemplar_specs", None) or [])
    if getattr(case.concept, "kind", None) != "object" or not ex_specs:
        return 0, 0
    ex = case.concept.render(ex_specs[0], res).float()
    hits = counted = 0
    for spec, q in zip(specs, queries):
        if spec == ex_specs[0]:
            continue
        counted += 1
        hits += _mse(ex, q) < _mse(case.concept.render(spec, res).float(), q)
    return hits, counted


def measure(scale: str, seed: int, options: dict) -> dict:
    import torch

    import genattr
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark
    from genattr.benchmarks.customized_model.verification import nearest_renderings
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache
    from genattr.harness.regime import _rendered

    genattr.load_plugins()
    bench = CustomizedModelBenchmark(scale=scale, verify="off", **options)
    env = RunEnv(cache=Cache(), seed=seed, scale=scale)
    bench.setup(env)
    state = bench._load(env)
    base = state.base_model
    res = int(getattr(base, "resolution", 32))
    by_split: dict[str, list] = {}
    for case in state.cases.values():
        by_split.setdefault(case.split, []).append(case)
    rows = []
    for split, cases in by_split.items():
        for case in cases:
            specs = list(case.concept.query_specs)[:len(case.queries)]
            exact = torch.stack([case.concept.render(s, res) for s in specs]).float()
            trip = _rendered(base, exact)
            mse = float(((trip - exact) / 2).pow(2).mean())
            exact_near = nearest_renderings(case, cases, specs, exact)
            trip_near = nearest_renderings(case, cases, specs, trip)
            generated = torch.stack([q.image for q in case.queries[:len(specs)]]).float()
            gen_near = nearest_renderings(case, cases, specs, generated)
            layout = _exemplar_layout(case, specs, generated, res)
            rows.append({"concept": case.id, "split": split, "scenes": len(specs),
                         "generated": gen_near.count(case.id) / len(specs),
                         "generated_nearest": dict(Counter(gen_near).most_common()),
                         "exemplar_layout": list(layout),
                         "chance": 1.0 / (len(cases) + 1), "exact": exact_near.count(case.id) / len(specs),
                         "round_trip": trip_near.count(case.id) / len(specs),
                         "round_trip_nearest": dict(Counter(trip_near).most_common()),
                         "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))})
    return {"scale": scale, "seed": seed, "options": options, "model": getattr(base, "name", None),
            "resolution": res, "rows": rows}


def table(doc: dict) -> str:
    lines = ["| concept | split | scenes | render check, exact renderings | render check, autoencoder round trip "
             "| round trips nearest to | round-trip PSNR dB | render check, generated queries | generated queries "
             "nearest to | generated queries nearer the exemplar's layout than the prompt's | chance |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        near = ", ".join(f"{k} {v}" for k, v in r["round_trip_nearest"].items())
        gen = ", ".join(f"{k} {v}" for k, v in r["generated_nearest"].items())
        hits, counted = r["exemplar_layout"]
        layout = f"{hits} of {counted}" if counted else "–"
        lines.append(f"| {r['concept']} | {r['split']} | {r['scenes']} | {r['exact']:.2f} | {r['round_trip']:.2f} "
                     f"| {near} | {r['psnr']:.1f} | {r['generated']:.2f} | {gen} | {layout} | {r['chance']:.2f} |")
    return "\n".join(lines) + (f"\n\nModel `{doc['model']}`, scale {doc['scale']}, base-model seed {doc['seed']}, "
                               f"{doc['resolution']} px; options {json.dumps(doc['options'])}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default=None, help="print the markdown table of an --out file and exit")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a Customized Model option (JSON value, else a string)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return 0
    from perfkit import json_options

    try:
        options = json_options(args.set, strings=True)
    except ValueError as e:
        ap.error(str(e))
    doc = measure(args.scale, args.seed, options)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
