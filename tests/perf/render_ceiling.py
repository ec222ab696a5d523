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


def _nearest(case, specs, split_cases, images) -> list[str]:
    """Per image (the rendering of ``specs[i]``): which rendering of that scene is the nearest — a concept of the
    split, or ``plain`` (the base data's) — as the verification's render check decides it (pixel MSE, min over a
    horizontal flip)."""
    import torch

    out = []
    for spec, x in zip(specs, images):
        res = x.shape[-1]
        cands = torch.stack([o.concept.render(spec, res) for o in split_cases]
                            + [case.concept.render_plain(spec, res)]).float()
        d = torch.minimum(((cands - x) ** 2).mean(dim=(1, 2, 3)),
                          ((cands - torch.flip(x, dims=[-1])) ** 2).mean(dim=(1, 2, 3)))
        out.append(([o.id for o in split_cases] + ["plain"])[int(d.argmin())])
    return out


def _check_agrees(case, specs, split_cases, images, nearest) -> None:
    """The verification's own render check gives the share that :func:`_nearest` gives (one implementation measured,
    the other guarded)."""
    from genattr.benchmarks.customized_model.verification import _render_check

    own = _render_check(_Specs(case, specs), split_cases, images)["nearest_own"]
    if abs(own - nearest.count(case.id) / len(nearest)) > 1e-9:
        raise AssertionError(f"{case.id}: nearest renderings disagree with the render check")


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
            exact_near, trip_near = _nearest(case, specs, cases, exact), _nearest(case, specs, cases, trip)
            _check_agrees(case, specs, cases, exact, exact_near)
            _check_agrees(case, specs, cases, trip, trip_near)
            generated = torch.stack([q.image for q in case.queries[:len(specs)]]).float()
            gen_near = _nearest(case, specs, cases, generated)
            _check_agrees(case, specs, cases, generated, gen_near)
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


class _Specs:
    """``case`` with its concept's ``query_specs`` replaced by ``specs`` (the check indexes them by query)."""

    def __init__(self, case, specs):
        self.id, self.concept = case.id, _Concept(case.concept, specs)


class _Concept:
    def __init__(self, concept, specs):
        self._c, self.query_specs = concept, specs

    def __getattr__(self, name):
        return getattr(self._c, name)


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
