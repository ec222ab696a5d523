"""Calibrate the unlearning step size α of the ``small`` preset on the leave-K-out ``small`` digits model.

The benchmark's own queries are never used: ten calibration queries are synthesized by the base model from one
training caption per digit, with seeds 10000–10009. Retraining per α would take hours, so each α is scored by two
cheap proxies:

* purity@10: the fraction of the top-10 training items that show the prompted digit;
* the query-loss ratio: the query's loss after unlearning over its loss before. A ratio near 1 means the step
  unlearnt nothing, and the scores are then first-order noise.

Pixel similarity's purity is printed for reference.

Run: python tests/perf/calibrate_leave_k_out.py [--alphas 1e-4,1e-3,3e-3,1e-2]  (≈ 2 min per α on 2 cores, after
the base model is cached).
"""
import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="1e-4,1e-3,3e-3,1e-2")
    args = ap.parse_args(argv)

    import numpy as np
    from sklearn.datasets import load_digits

    import genattr
    from genattr.benchmarks.leave_k_out import LeaveKOutBenchmark, top_k
    from genattr.harness.api import AttributionContext, Query, RunEnv
    from genattr.harness.cache import Cache
    from genattr.harness.data import InMemoryDataset
    from genattr.plugins.methods.unlearning import TrainingLosses

    genattr.load_plugins()
    bench = LeaveKOutBenchmark("small")
    env = RunEnv(cache=Cache(), seed=0, scale="small")
    st = bench._setup(env)
    y = load_digits().target
    labels = np.array([int(y[int(i.split("-")[1])]) for i in st.train.ids])
    rng = np.random.default_rng(12345)
    queries = []
    for d in range(10):
        i = int(rng.choice(np.flatnonzero(labels == d)))
        caption = st.train.captions(i)[0]
        image = st.base.generate([caption], [10_000 + d], steps=50, guidance_scale=2.0)[0]
        queries.append((d, Query(id=f"calibration-{d}", image=image, prompt=caption)))
    ctx = AttributionContext(model=st.base, train_set=st.train, cache=env.cache, seed=0, scale="small",
                             extra={"benchmark": "leave-k-out"})
    pixel = genattr.get_method("pixel")
    purity = [np.mean(labels[top_k(pixel.attribute(ctx, [q])[0], 10)] == d) for d, q in queries]
    print(f"pixel purity@10 {np.mean(purity):.3f}", np.round(purity, 2), flush=True)
    for alpha in (float(a) for a in args.alphas.split(",")):
        method = genattr.get_method("unlearning", preset="small", alpha=alpha)
        method.prepare(ctx)
        t = time.time()
        purity, ratio = [], []
        for d, q in queries:
            theta = method.unlearned_weights(ctx, q)
            scores = method._scorer(ctx)([theta])[0][:, 0] - method.theta0_losses(ctx)[:, 0]
            purity.append(np.mean(labels[top_k(scores, 10)] == d))
            one = InMemoryDataset("query", "1", [q.id], q.image[None], [(q.prompt,)])
            before, after = TrainingLosses(st.base, one, 5, 1, False, 0)([None, theta])
            ratio.append(after[0, 0] / before[0, 0])
        print(f"alpha={alpha:g} purity@10 {np.mean(purity):.3f} {np.round(purity, 2)} "
              f"query-loss ratio median {np.median(ratio):.2f} ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
