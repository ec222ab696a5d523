"""Calibrate the unlearning step of the ``small`` preset on the leave-K-out ``small`` digits model.

The benchmark's own queries are never used: ten calibration queries are synthesized by each base model from one
training caption per digit, with seeds 10000–10009. Retraining per setting would take hours, so each setting is
scored by two cheap proxies:

* purity@10: the fraction of the top-10 training items that show the prompted digit;
* the query-loss ratio: the query's loss after unlearning over its loss before. A ratio near 1 means the step
  unlearnt nothing, and the scores are then first-order noise.

Pixel similarity's purity is printed for reference. ``--rule`` picks the step rule (docs/methods/unlearning.md,
"Step rules") and ``--values`` its parameter: α for ``fixed``, the Fisher length ε for ``fisher-norm``, the aimed
loss ratio ρ for ``loss-target``. ``--model-seeds`` trains (or loads) one θ0 per seed, as the benchmark's
``model_seeds`` does; ``--seeds`` are unlearning's method seeds. Each setting prints its mean over both, the
spread between base models, and one JSON line (``--out``) per (setting, base model, method seed).

Run: python tests/perf/calibrate_leave_k_out.py [--alphas 1e-4,1e-3,3e-3,1e-2]  (≈ 2 min per setting and seed on
2 cores, after the base model is cached);
    OMP_NUM_THREADS=1 python tests/perf/calibrate_leave_k_out.py --rule fisher-norm --values 2e-5,5e-5,1e-4 \\
        --model-seeds 0,1,2 --seeds 0,1 --out runs/lko-step-rules.jsonl
"""
import argparse
import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

RULE_OPTION = {"fixed": "alpha", "fisher-norm": "step_norm", "loss-target": "loss_target"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="1e-4,1e-3,3e-3,1e-2", help="α values of the fixed rule (same as --values)")
    ap.add_argument("--rule", default="fixed", choices=sorted(RULE_OPTION))
    ap.add_argument("--values", default=None, help="the rule's parameter values, comma-separated")
    ap.add_argument("--model-seeds", default="0", help="base-model (θ0) training seeds")
    ap.add_argument("--seeds", default="0", help="unlearning's method seeds")
    ap.add_argument("--out", default=None, help="append one JSON line per (setting, base model, method seed)")
    args = ap.parse_args(argv)

    import numpy as np
    from sklearn.datasets import load_digits

    import genattr
    from genattr.benchmarks._seeds import env_for
    from genattr.benchmarks.leave_k_out import LeaveKOutBenchmark, top_k
    from genattr.harness.api import AttributionContext, Query, RunEnv
    from genattr.harness.cache import Cache
    from genattr.harness.data import InMemoryDataset
    from genattr.plugins.methods.unlearning import TrainingLosses

    genattr.load_plugins()
    values = [float(v) for v in (args.values or args.alphas).split(",")]
    model_seeds = [int(s) for s in args.model_seeds.split(",")]
    method_seeds = [int(s) for s in args.seeds.split(",")]
    bench = LeaveKOutBenchmark("small")
    env0 = RunEnv(cache=Cache(), seed=0, scale="small")
    y = load_digits().target
    results = {v: {} for v in values}  # value -> model seed -> [(purity, ratio) per method seed]
    for ms in model_seeds:
        st = bench._setup(env_for(env0, seed=ms))
        labels = np.array([int(y[int(i.split("-")[1])]) for i in st.train.ids])
        rng = np.random.default_rng(12345)
        queries = []
        for d in range(10):
            i = int(rng.choice(np.flatnonzero(labels == d)))
            caption = st.train.captions(i)[0]
            image = st.base.generate([caption], [10_000 + d], steps=50, guidance_scale=2.0)[0]
            queries.append((d, Query(id=f"calibration-{d}", image=image, prompt=caption)))
        ctx = AttributionContext(model=st.base, train_set=st.train, cache=env0.cache, seed=0, scale="small",
                                 extra={"benchmark": "leave-k-out"})
        pixel = genattr.get_method("pixel")
        purity = [np.mean(labels[top_k(pixel.attribute(ctx, [q])[0], 10)] == d) for d, q in queries]
        print(f"base model {ms}: pixel purity@10 {np.mean(purity):.3f}", np.round(purity, 2), flush=True)
        for value in values:
            for seed in method_seeds:
                options = {"step_rule": args.rule, RULE_OPTION[args.rule]: value, "seed": seed}
                method = genattr.get_method("unlearning", preset="small", **options)
                method.prepare(ctx)
                t = time.time()
                purity, ratio = [], []
                for d, q in queries:
                    theta = method.unlearned_weights(ctx, q)
                    scores = method._scorer(ctx)([theta])[0][:, 0] - method.theta0_losses(ctx)[:, 0]
                    purity.append(float(np.mean(labels[top_k(scores, 10)] == d)))
                    one = InMemoryDataset("query", "1", [q.id], q.image[None], [(q.prompt,)])
                    before, after = TrainingLosses(st.base, one, 5, 1, False, 0)([None, theta])
                    ratio.append(float(after[0, 0] / before[0, 0]))
                results[value].setdefault(ms, []).append((float(np.mean(purity)), float(np.median(ratio))))
                print(f"{args.rule} {RULE_OPTION[args.rule]}={value:g} base {ms} seed {seed}: purity@10 "
                      f"{np.mean(purity):.3f} {np.round(purity, 2)} query-loss ratio median {np.median(ratio):.2f} "
                      f"(range {min(ratio):.2f}–{max(ratio):.2f}; {time.time() - t:.0f} s)", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"rule": args.rule, "value": value, "model_seed": ms, "seed": seed,
                                            "purity": purity, "loss_ratio": ratio}) + "\n")
    for value in values:
        per_model = {ms: statistics.fmean(p for p, _ in r) for ms, r in results[value].items()}
        ratios = [q for r in results[value].values() for _, q in r]
        print(f"== {args.rule} {RULE_OPTION[args.rule]}={value:g}: purity@10 {statistics.fmean(per_model.values()):.3f} "
              f"(per base model {' / '.join(f'{p:.3f}' for p in per_model.values())}), query-loss ratio median "
              f"{statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
