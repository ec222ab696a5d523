"""Measurement helpers shared by the pytest-benchmark suite (``tests/perf/test_perf_*.py``) and the scripts beside it.

* :func:`lko_setup` / :func:`customized_setups` — the contexts and queries of the built-in benchmarks at a scale
  (from the cache, built on first use);
* :func:`compare_prescreens` — exhaustive unlearning vs each prescreen on the same queries: UNet evaluations per
  query from the method's own counters (one-off costs divided by the queries that share them), wall time per query,
  top-10 overlap with the exhaustive ranking, mean |ΔAP| (queries with known positives) and the overlap of the top-K
  removal set (leave-K-out);
* :func:`update_cosines` — the direction of the unlearning update Δθ with fewer or stratified draws against a
  many-draw reference;
* :func:`count_evaluations` — evaluations per query at any pool size through the real scoring path, with a
  pointwise stand-in model (so a 100k-item pool is counted in seconds);
* :func:`throughput` — training and sampling images/s of a recipe under one CPU setting;
* :func:`peak_rss` — peak resident set of a scoring run in a fresh process.

Nothing here is a test; the tests decide the sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

try:  # the scale parameter of the suite: tiny (plain runs, CI) and small (marked slow and small)
    import pytest

    SCALES = ["tiny", pytest.param("small", marks=[pytest.mark.slow, pytest.mark.small])]
except ImportError:  # pragma: no cover - scripts without pytest
    SCALES = ["tiny", "small"]

# -- setups -----------------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """Queries scored in one ``attribute`` call: the context factory, the queries and (customized-model) the pool's
    base size and the positives of the ``own`` pool."""

    name: str
    context: Callable[[Any], Any]  # method -> AttributionContext
    queries: list
    n_base: int | None = None
    own_idx: Any = None
    extra: dict = field(default_factory=dict)


def lko_setup(scale: str, cache, seed: int = 0, num_queries: int | None = None, **overrides) -> Group:
    """The leave-K-out benchmark's θ0, training set and queries (all sharing θ0)."""
    from genattr.benchmarks.leave_k_out import LeaveKOutBenchmark
    from genattr.harness.api import AttributionContext, RunEnv

    cfg = dict(overrides)
    if num_queries is not None:
        cfg["num_queries"] = int(num_queries)
    bench = LeaveKOutBenchmark(scale, **cfg)
    env = RunEnv(cache=cache, seed=seed, scale=scale)
    st = bench._setup(env)

    def context(method=None):
        return AttributionContext(model=st.base, train_set=st.train, cache=cache, seed=seed, scale=scale,
                                  extra={"benchmark": bench.name})

    ks = getattr(st, "k", None) or bench._k_list()
    return Group("leave-k-out", context, list(st.queries), extra={"k": [c for c, _ in ks], "N": len(st.train)})


def customized_setups(scale: str, cache, seed: int = 0, **overrides) -> list[Group]:
    """One group per test concept of the Customized Model benchmark (its customized model, the ``all`` pool)."""
    from genattr.benchmarks.customized_model import CustomizedModelBenchmark
    from genattr.harness.api import RunEnv

    bench = CustomizedModelBenchmark(scale=scale, **overrides)
    env = RunEnv(cache=cache, seed=seed, scale=scale)
    bench.setup(env)
    state = bench._load(env)
    out = []
    for cid, case in state.cases.items():
        out.append(Group(cid, lambda method, _c=cid: bench.context(_c, method, env), list(case.queries),
                         n_base=state.n_base, own_idx=np.asarray(case.own_idx), extra={"split": case.split}))
    return out


# -- ranking agreement --------------------------------------------------------------------------------------------------
def top_overlap(a, b, k: int = 10) -> float:
    """|top-k(a) ∩ top-k(b)| / k (ties by position)."""
    ta = set(np.argsort(-np.asarray(a), kind="stable")[:k].tolist())
    tb = set(np.argsort(-np.asarray(b), kind="stable")[:k].tolist())
    return len(ta & tb) / float(k)


def ap_own(scores, n_base: int, own_idx) -> float:
    """AP of the concept's exemplars in the ``own`` pool (base items + its exemplars), as AbC defines it."""
    own_idx = np.asarray(own_idx)
    keep = np.concatenate([np.arange(n_base), own_idx])
    s = np.asarray(scores)[keep]
    order = np.argsort(-s, kind="stable")
    ranks = np.sort(np.flatnonzero(order >= n_base) + 1)
    return float(np.mean([(k + 1) / r for k, r in enumerate(ranks)]))


# -- prescreens -------------------------------------------------------------------------------------------------------
PRESCREENS = {
    "exhaustive": {},
    "coarse-1": {"prescreen": "coarse", "coarse_timesteps": 1},
    "coarse-2": {"prescreen": "coarse", "coarse_timesteps": 2},
    "linear": {"prescreen": "linear"},  # second order (the default), 8 Hutchinson probes
    "linear-1": {"prescreen": "linear", "prescreen_order": 1},
}


def _reuse_updates(method, memo: dict, spent: dict):
    """Make ``method`` reuse θ₋ẑ across variants that share the update's options (the update does not depend on
    the prescreen): the first computation is timed into ``spent``, later ones count their evaluations only."""
    real = method.unlearned_weights
    cfg = method.config
    draws = int(cfg["steps"]) * int(cfg["batch"]) * int(cfg["accumulation"])
    opts = tuple(cfg[k] for k in ("steps", "alpha", "batch", "accumulation", "query_timesteps", "variant",
                                  "selection", "fisher_model", "fisher_samples"))

    def cached(ctx, query):
        key = (str(query.id), ctx.model.fingerprint, opts)
        if key in memo:
            method.stats["update_evaluations"] += draws
            return memo[key]
        t0 = time.perf_counter()
        memo[key] = real(ctx, query)
        spent[key] = time.perf_counter() - t0
        return memo[key]

    method.unlearned_weights = cached
    return lambda ctx, q: spent[(str(q.id), ctx.model.fingerprint, opts)]


def compare_prescreens(groups: Sequence[Group], variants: dict[str, dict], base: dict | None = None,
                       refine: Sequence[int] = (50, 100), shared_queries: int | None = None) -> list[dict]:
    """One row per (variant, M) with the means over every query of every group; ``variants`` maps a name to
    unlearning options (``{}`` = exhaustive, always measured first as the reference). One-off gradient costs are
    divided by ``shared_queries`` (default: the group's own query count). The unlearning update of a query is
    computed once and reused by every variant with the same update options; its time counts in every variant's
    ``seconds_per_query``."""
    from genattr.plugins.methods.unlearning import Unlearning

    base = dict(base or {})
    per: dict[tuple, list] = {}
    memo: dict = {}
    spent: dict = {}
    for g in groups:
        ref = None
        for name, opts in variants.items():
            for m in ([None] if opts.get("prescreen", "none") == "none" else refine):
                method = Unlearning(**base, **opts, **({} if m is None else {"refine": int(m)}))
                update_time = _reuse_updates(method, memo, spent)
                ctx = g.context(method)
                method.prepare(ctx)  # θ0 losses, Fisher, stored gradients: one-off, not timed
                one_off = 0
                if method.config["prescreen"] == "linear":  # what the stored vectors cost, computed now or before
                    one_off = method._stored_gradients(ctx).evaluations
                    if int(method.config["prescreen_order"]) == 2:
                        one_off += method._stored_gradients(ctx, second=True).evaluations
                method.reset_stats()
                before = dict(spent)
                t0 = time.perf_counter()
                scores = method.attribute(ctx, g.queries)
                dt = time.perf_counter() - t0
                dt -= sum(v for k, v in spent.items() if k not in before)  # this call's updates: counted below
                upd = sum(update_time(ctx, q) for q in g.queries)
                st = method.stats
                q = len(g.queries)
                shared = shared_queries or q
                if ref is None:
                    ref = scores
                row = {
                    "group": g.name, "variant": name, "refine": m, "queries": q,
                    "scoring_evals_per_query": (st["scoring_evaluations"] + st["prescreen_evaluations"]) / q,
                    "one_off_gradient_evals": one_off,
                    "evals_per_query": (st["scoring_evaluations"] + st["prescreen_evaluations"]) / q + one_off / shared,
                    "update_evals_per_query": st["update_evaluations"] / q,
                    "update_seconds_per_query": upd / q,
                    "scoring_seconds_per_query": dt / q,
                    "seconds_per_query": (dt + upd) / q,
                    "top10_overlap": float(np.mean([top_overlap(scores[i], ref[i]) for i in range(q)])),
                }
                if g.own_idx is not None:
                    aps = [ap_own(scores[i], g.n_base, g.own_idx) for i in range(q)]
                    ref_aps = [ap_own(ref[i], g.n_base, g.own_idx) for i in range(q)]
                    row["ap"] = float(np.mean(aps))
                    row["abs_delta_ap"] = float(np.mean(np.abs(np.subtract(aps, ref_aps))))
                for k in g.extra.get("k", []):
                    row[f"top{k}_overlap"] = float(np.mean([top_overlap(scores[i], ref[i], k) for i in range(q)]))
                per.setdefault((name, m), []).append(row)
    out = []
    for (name, m), rows in per.items():
        agg = {"variant": name, "refine": m, "groups": len(rows), "queries": sum(r["queries"] for r in rows)}
        for key in rows[0]:
            if key in ("group", "variant", "refine", "queries"):
                continue
            w = np.array([r["queries"] for r in rows], dtype=float)
            agg[key] = float(np.sum(w * np.array([r[key] for r in rows])) / w.sum())
        out.append(agg)
    ex = out[0]
    for r in out:
        r["evals_ratio"] = ex["evals_per_query"] / max(r["evals_per_query"], 1e-12)
        r["time_ratio"] = ex["seconds_per_query"] / max(r["seconds_per_query"], 1e-12)
        r["scoring_time_ratio"] = ex["scoring_seconds_per_query"] / max(r["scoring_seconds_per_query"], 1e-12)
    return out


def format_rows(rows: Sequence[dict], keys: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (the columns that are present)."""
    keys = keys or ["variant", "refine", "evals_per_query", "evals_ratio", "update_seconds_per_query",
                    "scoring_seconds_per_query", "seconds_per_query", "time_ratio", "top10_overlap", "abs_delta_ap",
                    "ap"] + sorted({k for r in rows for k in r if k.startswith("top") and k != "top10_overlap"})
    keys = [k for k in keys if any(k in r for r in rows)]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    table = [keys] + [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)


# -- the unlearning update --------------------------------------------------------------------------------------------
def flat_update(method, ctx, query) -> np.ndarray:
    theta = method.unlearned_weights(ctx, query)
    theta0 = ctx.model.parameters(method.config["selection"])
    return np.concatenate([(theta[k].double() - theta0[k].detach().double()).reshape(-1).numpy() for k in sorted(theta)])


def update_cosines(group: Group, base: dict, draws: Sequence[int], reference: int, batch: int = 64,
                   schemes: Sequence[str] = ("random", "stratified"), queries: int = 2) -> list[dict]:
    """Cosine of Δθ = θ₋ẑ − θ0 with ``d`` draws per step (``batch`` × d/batch) to Δθ with ``reference`` draws
    (random timesteps), per scheme; mean over the first ``queries`` queries."""
    from genattr.plugins.methods.unlearning import Unlearning

    def delta(n, scheme, q):
        b = min(batch, n)
        m = Unlearning(**{**base, "batch": b, "accumulation": max(1, n // b), "query_timesteps": scheme})
        return flat_update(m, group.context(m), q)

    qs = group.queries[:queries]
    refs = [delta(reference, "random", q) for q in qs]
    rows = []
    for scheme in schemes:
        for n in draws:
            cs = []
            for q, r in zip(qs, refs):
                d = delta(n, scheme, q)
                cs.append(float(d @ r / (np.linalg.norm(d) * np.linalg.norm(r) + 1e-300)))
            rows.append({"scheme": scheme, "draws": n, "cosine": float(np.mean(cs)), "min": float(np.min(cs))})
    return rows


# -- evaluation counts at any pool size ---------------------------------------------------------------------------------
class CountingModel:
    """A pointwise ε-predictor with two cross-attention-named weights (ε̂ = a·x_t + b·mean(text)): enough for the
    scoring path, the prescreens and their counters at any pool size, at a tiny fraction of a UNet's cost."""

    name, version, channels, num_train_timesteps = "counting", "1", 1, 1000

    def __init__(self, resolution: int = 2):
        import torch

        self.resolution = resolution
        self.unet = torch.nn.Module()
        self.unet.attn2 = torch.nn.Module()
        self.unet.attn2.to_k = torch.nn.Linear(1, 1, bias=False)
        self.unet.attn2.to_v = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.unet.attn2.to_k.weight.fill_(0.3)
            self.unet.attn2.to_v.weight.fill_(-0.2)

    fingerprint = "counting-model-1"

    def latents(self, images):
        return images

    def text_embeddings(self, captions):
        import torch

        return torch.tensor([[[len(c) / 10.0]] for c in captions])

    def parameters(self, selection="cross-attn-kv"):
        return dict(self.unet.named_parameters())

    def add_noise(self, latents, noise, timesteps):
        ab = (1.0 - (timesteps.to(latents.dtype) + 1) / 1001.0)[:, None, None, None]
        return ab.sqrt() * latents + (1 - ab).sqrt() * noise

    def unet_forward(self, x, timesteps, text_emb, params=None):
        p = dict(self.unet.named_parameters())
        p.update(params or {})
        a, b = p["attn2.to_k.weight"].reshape(()), p["attn2.to_v.weight"].reshape(())
        return a * x + b * text_emb.mean(dim=(1, 2))[:, None, None, None]

    def denoise_loss(self, latents, text_emb, timesteps, noise, mask=None, params=None, target="loss"):
        pred = self.unet_forward(self.add_noise(latents, noise, timesteps), timesteps, text_emb, params)
        return ((noise - pred) ** 2).mean(dim=(1, 2, 3))


def count_evaluations(n: int, variants: dict[str, dict], base: dict, queries: int = 2, shared_queries: int = 110,
                      cache=None) -> list[dict]:
    """UNet evaluations per query on an ``n``-item pool, through the real scoring path and counters (with
    :class:`CountingModel`); one-off gradient costs divided by ``shared_queries``."""
    import tempfile

    import torch

    from genattr.harness.api import AttributionContext, Query
    from genattr.harness.cache import Cache
    from genattr.harness.data import InMemoryDataset
    from genattr.plugins.methods.unlearning import Unlearning

    g = torch.Generator().manual_seed(0)
    model = CountingModel()
    images = torch.rand(n, 1, model.resolution, model.resolution, generator=g) * 2 - 1
    data = InMemoryDataset("counting", "1", [f"i{i}" for i in range(n)], images, [("an item",)] * n)
    qs = [Query(f"q{j}", torch.rand(1, model.resolution, model.resolution, generator=g) * 2 - 1, "a query")
          for j in range(queries)]
    cache = cache or Cache(tempfile.mkdtemp(prefix="genattr-count-"))
    ctx = AttributionContext(model=model, train_set=data, cache=cache, scale="tiny")
    rows = []
    for name, opts in variants.items():
        m = Unlearning(**base, **opts)
        m.prepare(ctx)
        one_off = 0
        if m.config["prescreen"] == "linear":
            one_off = m._stored_gradients(ctx).evaluations
            if int(m.config["prescreen_order"]) == 2:
                one_off += m._stored_gradients(ctx, second=True).evaluations
        m.reset_stats()
        m.attribute(ctx, qs)
        st = m.stats
        per_q = (st["scoring_evaluations"] + st["prescreen_evaluations"]) / queries
        rows.append({"variant": name, "n": n, "scoring_evals_per_query": per_q, "one_off_gradient_evals": one_off,
                     "evals_per_query": per_q + one_off / shared_queries})
    ex = next(r for r in rows if r["variant"] == "exhaustive")
    for r in rows:
        r["evals_ratio"] = ex["evals_per_query"] / r["evals_per_query"]
    return rows


# -- training and sampling throughput -------------------------------------------------------------------------------
CPU_SETTINGS = {
    "default": {},
    "threads-1": {"threads": 1},
    "threads-2": {"threads": 2},
    "channels-last": {"channels_last": True},
    "bf16-autocast": {"bf16": True},
    "compile": {"compile": True},
}


def _apply(model, setting: dict):
    import contextlib

    import torch

    if "threads" in setting:
        torch.set_num_threads(int(setting["threads"]))
    if setting.get("channels_last"):
        model.unet.to(memory_format=torch.channels_last)
    if setting.get("compile"):
        model.unet = torch.compile(model.unet)
    if setting.get("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def throughput(dataset_name: str, scale: str, setting: dict, train_steps: int = 10, sample_images: int = 64,
               sample_steps: int = 10, warmup: int = 2) -> dict:
    """Training images/s (``train_steps`` steps of the recipe's batch after ``warmup``) and sampling images/s
    (``sample_images`` images × ``sample_steps`` DDPM steps) of a fresh model of the recipe under ``setting``."""
    import torch

    from genattr.plugins.models.recipes import recipe
    from genattr.plugins.models.tiny_t2i import TinyT2I

    threads = torch.get_num_threads()
    r = recipe(dataset_name, scale)
    if dataset_name == "digits":
        from genattr.datasets.digits import Digits

        ds = Digits(**{**r["dataset"], "limit": 128 if scale == "tiny" else 256})
    else:
        from genattr.datasets.shapes import Shapes

        ds = Shapes(**{**r["dataset"], "n": 256})
    try:
        model = TinyT2I.for_dataset(ds, **r["model"])
        ctx = _apply(model, setting)
        batch = int(r["train"]["batch_size"])
        cfg = {**r["train"], "progress": False}
        with ctx:
            model.train(ds, {**cfg, "steps": warmup})
            t0 = time.perf_counter()
            model.train(ds, {**cfg, "steps": train_steps})
            train_s = time.perf_counter() - t0
            prompts = [ds.captions(i % len(ds))[0] for i in range(sample_images)]
            model.generate(prompts, list(range(sample_images)), steps=2)  # warm-up at the timed batch shape
            t0 = time.perf_counter()
            model.generate(prompts, list(range(sample_images)), steps=sample_steps)
            sample_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return {"train_images_per_s": train_steps * batch / train_s,
            "sample_images_per_s": sample_images / sample_s * sample_steps / 50,  # per 50-step image
            "sample_unet_evals_per_s": sample_images * sample_steps / sample_s}


def update_draw_throughput(dataset_name: str, scale: str, batches: Sequence[int], draws: int = 512,
                           threads: int = 1) -> list[dict]:
    """Seconds per draw of the unlearning update's query gradient (forward + backward to the cross-attention K/V
    weights, seeded noise included: :func:`genattr.plugins.methods.unlearning.update.query_gradient`) at each batch
    size, on a fresh model of the recipe, ``draws`` draws per batch size (one warm-up call first). Batching the
    draws of several queries into one pass can only save what a larger batch saves here."""
    import torch

    from genattr.harness.api import Query
    from genattr.plugins.methods.unlearning.update import query_gradient
    from genattr.plugins.models.recipes import recipe
    from genattr.plugins.models.tiny_t2i import TinyT2I

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        r = recipe(dataset_name, scale)
        model = TinyT2I(resolution=int(r["dataset"].get("resolution", 16)),
                        channels=1 if dataset_name == "digits" else 3, vocab=["a", "b", "c"], **r["model"])
        q = Query(id="q", image=torch.rand(model.channels, model.resolution, model.resolution), prompt="a b c")
        params = model.parameters("cross-attn-kv")
        with torch.no_grad():
            lat = model.latents(q.image[None])
            emb = model.text_embeddings([q.prompt])
        rows = []
        for b in batches:
            query_gradient(model, params, lat, emb, "q", 0, 0, int(b), 1)
            acc = max(1, int(draws) // int(b))
            t0 = time.perf_counter()
            query_gradient(model, params, lat, emb, "q", 1, 0, int(b), acc)
            dt = time.perf_counter() - t0
            rows.append({"batch": int(b), "draws": int(b) * acc, "s_per_draw": dt / (int(b) * acc)})
    finally:
        torch.set_num_threads(before)
    return rows


# -- peak resident set ---------------------------------------------------------------------------------------------
def peak_rss(code: str, env: dict | None = None, timeout: int = 600) -> int:
    """Peak resident set (bytes) of ``python -c code`` (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` printed by the
    child at its end)."""
    wrapped = code + "\nimport resource, sys; print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, env=e, timeout=timeout)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("MAXRSS"))
    return int(line.split()[1]) * 1024


def scoring_run(model, ds, n: int, cache, opts: dict | None = None):
    """Prepare and score 2 queries of ``ds`` with ``model`` over an ``n``-item pool that replicates ``ds``'s images
    with small noise (tiny unlearning settings plus ``opts``)."""
    import torch

    from genattr.harness.api import AttributionContext, Query
    from genattr.harness.data import InMemoryDataset
    from genattr.plugins.methods.unlearning import Unlearning

    base = ds.images()
    reps = -(-n // len(ds))
    noise = torch.randn(reps * len(ds), *base.shape[1:], generator=torch.Generator().manual_seed(n))
    images = (base.repeat(reps, 1, 1, 1) + 0.01 * noise)[:n].clamp(-1, 1)
    pool = InMemoryDataset("pool", "1", [f"p{i}" for i in range(n)], images,
                           [ds.captions(i % len(ds)) for i in range(n)])
    ctx = AttributionContext(model=model, train_set=pool, cache=cache, scale="tiny")
    qs = [Query(f"q{j}", ds.item(j).image, ds.captions(j)[0]) for j in range(2)]
    m = Unlearning(**{"preset": "tiny", "steps": 1, "batch": 8, "accumulation": 1, "fisher_samples": 32,
                      **dict(opts or {})})
    m.prepare(ctx)
    s = m.attribute(ctx, qs)
    assert s.shape == (2, n)
    return s


def tiny_digits(cache):
    """(the tiny digits model, its training set) from ``cache``."""
    from genattr.datasets.digits import Digits
    from genattr.harness.models import load_or_train
    from genattr.plugins.models.recipes import recipe

    r = recipe("digits", "tiny")
    ds = Digits(**r["dataset"])
    return load_or_train(cache, ds, r["model"], r["train"], seed=0), ds


SCORING_RSS_CODE = """
import sys
sys.path.insert(0, {here!r})
import torch
torch.set_num_threads(1)
import perfkit
from genattr.harness.cache import Cache
cache = Cache({cache!r})
model, ds = perfkit.tiny_digits(cache)
perfkit.scoring_run(model, ds, {n}, cache, {opts!r})
"""


def scoring_peak_rss(n: int, cache_root: str, opts: dict | None = None) -> int:
    """Peak RSS of a fresh process that prepares and scores 2 queries over an ``n``-item pool (:func:`scoring_run`
    with the tiny digits model)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return peak_rss(SCORING_RSS_CODE.format(here=here, cache=str(cache_root), n=int(n), opts=dict(opts or {})))


def _vmhwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_here(fn: Callable[[], Any]) -> int | None:
    """Peak RSS (bytes) of this process while ``fn()`` runs: the high-water mark is reset first (Linux
    ``/proc/self/clear_refs``); None where that is not possible (use :func:`peak_rss` in a subprocess then)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    fn()
    return _vmhwm()


def dump(rows, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1, default=str)


# -- result files (committed under results/, their tables generated into the docs) ----------------------------------
def result_options(parser, default_out: str) -> None:
    """``--out FILE`` (where the measurement is written) and ``--table FILE`` (print the table of a result file and
    stop: the command a docs table marker names)."""
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--table", default=None, metavar="FILE", help="print the table of a result file and stop")


def json_options(items, strings: bool = False) -> dict:
    """``["key=JSON", …]`` (repeated ``--set`` arguments) → ``{key: value}``; ``strings``: a value that is not JSON
    is taken as a string (``model=diffusers``). An item without ``=`` is a ``ValueError``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            if not strings:
                raise
            out[key] = value
    return out


def read_result(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_result(path: str, doc: dict) -> None:
    """``doc`` as sorted, indented JSON at ``path`` (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
