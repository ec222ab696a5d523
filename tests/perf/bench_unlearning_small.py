"""Wall times of the unlearning method at `small` scale: training, Fisher, θ0 losses, one query.

Run: python tests/perf/bench_unlearning_small.py  (minutes; uses /tmp/unl_small_cache)
"""
import time, warnings; warnings.filterwarnings("ignore")
import numpy as np, genattr
from genattr.harness.cache import Cache
from genattr.harness.api import AttributionContext, Query
from genattr.datasets.digits import Digits
from genattr.harness.models import load_or_train
from genattr.plugins.models.recipes import recipe
from genattr.plugins.methods import unlearning as U
genattr.load_plugins()
cache = Cache("/tmp/unl_small_cache")
r = recipe("digits", "small"); data = Digits(**r["dataset"])
t = time.time(); model = load_or_train(cache, data, r["model"], r["train"], seed=0); print("train s", round(time.time() - t, 1), "N", len(data), flush=True)
m = U.Unlearning(preset="small"); cfg = m.config; print("config", cfg, flush=True)
t = time.time(); F = U.fisher_diagonal(model, data, cfg["selection"], samples=cfg["fisher_samples"], seed=0); print("fisher s", round(time.time() - t, 1), flush=True)
ctx = AttributionContext(model=model, train_set=data, cache=cache, seed=0, scale="small")
t = time.time(); m.prepare(ctx); print("prepare (fisher + theta0 losses) s", round(time.time() - t, 1), flush=True)
img = model.generate(["a handwritten digit 3"], seeds=[7], steps=50)[0]
t = time.time(); s = m.attribute(ctx, [Query("q3", img, "a handwritten digit 3")]); print("one query s", round(time.time() - t, 1), flush=True)
top = np.argsort(-s[0])[:10]; print("top-10 labels", [data.labels[i] for i in top], flush=True)
