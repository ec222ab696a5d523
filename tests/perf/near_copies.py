"""What the regime check's near-copies are: for each generated sample nearer to a training image than 90 % of the
held-out reals are, the scene it was asked for and the training scene it landed next to.

The latent miniature's samples come from captions of held-out colour–shape combinations. A sample that fails to
compose the unseen combination can fall back on a simpler training layout (for instance by dropping an object),
and in a discrete scene space, where training layouts repeat exactly, such a fallback lands on a copy of a training
image. This script measures the pieces: per row, the near-copy share, the share of near-copies whose nearest
training scene has fewer objects than the scene asked for, and the share of training scenes with an exact pixel
duplicate in the training set; plus the first near-copies' captions.

Run (θ0 and the regime samples come from the cache the regime curve filled; ``--set`` as in regime_curve.py):
    OMP_NUM_THREADS=2 python tests/perf/near_copies.py --n 4000 --set model='"diffusers"' --set dataset='"shapes"' \\
        --set 'train_config={"steps": 800}' --set 'dataset_config={"jitter": 0}' \\
        --out results/regime/near-copies-latent.json
    (then --append without the dataset_config: the recipe's jittered scenes, at the same 800 steps)
    python tests/perf/near_copies.py --table results/regime/near-copies-latent.json
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

warnings.filterwarnings("ignore")

from perfkit import json_options, read_result, result_options, write_result  # noqa: E402


def table(doc) -> str:
    lines = ["| seed | N | jitter | samples | near-copies, pixels | of them: nearest training scene has fewer objects "
             "| training scenes with an exact duplicate in training |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        lines.append(f"| {r['seed']} | {r['n']} | {r['jitter']:g} | {r['samples']} | {r['near_copy_share']:.1%} "
                     f"| {r['fewer_objects_share']:.0%} ({r['fewer_objects']} of {r['near_copies']}) "
                     f"| {r['train_exact_duplicate_share']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--examples", type=int, default=12)
    result_options(ap, "results/regime/near-copies-latent.json")
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)))
        return 0

    import torch

    import genattr
    from genattr.harness import regime as R
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache

    genattr.load_plugins()
    sets = json_options(args.set)
    bench = genattr.get_benchmark("leave-k-out", scale="small", n=args.n, **sets)
    env = RunEnv(cache=Cache(), seed=args.seed, scale="small")
    st = bench._setup(env)
    samples = torch.stack([x.float() for x in bench._regime_images(env, st)])
    picked = bench._regime_picked
    source = bench._source_dataset
    specs = {i: spec for i, spec, _ in source.heldout_specs(len(st.train), len(picked))}  # the scenes of picked
    held = bench._held_images(st)
    train = st.train.images(list(range(len(st.train)))).float()
    train_r, held_r = R._rendered(st.base, train), R._rendered(st.base, held)
    dmin, arg = R._nn(samples.flatten(1), train_r.flatten(1), index=True)
    threshold = float(torch.quantile(R._nn(held_r.flatten(1), train_r.flatten(1)), 0.10))
    near = (dmin < threshold).nonzero().flatten().tolist()
    fewer, examples = 0, []
    for i in near:
        src, caption = picked[i]
        asked = len(specs[src]["objects"]) if src in specs else None
        got = len(st.train.specs[int(arg[i])]["objects"])
        fewer += int(asked is not None and got < asked)
        if len(examples) < args.examples:
            examples.append({"asked": caption, "nearest_training": st.train.captions(int(arg[i]))[0],
                             "distance": round(float(dmin[i]), 3)})
    raw = train.flatten(1)
    dup = 0
    for i in range(0, len(raw), 512):
        d = torch.cdist(raw[i:i + 512], raw)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        dup += int((d.min(dim=1).values < 1e-6).sum())
    row = {"seed": args.seed, "n": len(st.train), "jitter": float(source.meta.get("jitter", 0.0)),
           "samples": len(samples), "threshold": round(threshold, 4), "near_copies": len(near),
           "near_copy_share": round(len(near) / len(samples), 4), "fewer_objects": fewer,
           "fewer_objects_share": round(fewer / max(1, len(near)), 4),
           "train_exact_duplicate_share": round(dup / len(raw), 4), "options": sets,
           "model_fingerprint": st.base.fingerprint, "examples": examples}
    rows = [row]
    if args.append and os.path.exists(args.out):
        rows = read_result(args.out)["rows"] + rows
    doc = {"what": "near-copies of the regime check: the scene asked for vs the nearest training scene",
           "genattr": genattr.__version__, "rows": rows}
    write_result(args.out, doc)
    print(table(doc))
    for e in examples[:5]:
        print(e, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
