"""Unlearning's cost per query: batched queries (Q = 8 vs Q = 1), exhaustive vs prescreen + exact head, the update's
draws, and evaluation counts at a 100k-item pool. Sizes per scale in :data:`SIZES`; figures via ``figures``."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

import perfkit

warnings.filterwarnings("ignore", message=".*batching rule.*")

#: Per scale: the leave-K-out setup (all queries share θ0), unlearning options, the heads M measured, the update
#: draws compared (and their reference), the pool sizes counted.
SIZES = {
    "tiny": dict(lko=dict(num_queries=8), base=dict(preset="tiny", steps=1, batch=8, accumulation=1, timesteps=4),
                 refine=(16,), draws=(8,), reference=32, count_n=500, compare_queries=2, cosine_queries=1),
    "small": dict(lko=dict(num_queries=8), base=dict(preset="small"), refine=(50, 100),
                  draws=(64, 128, 256, 512), reference=4096, count_n=100_000, compare_queries=8, cosine_queries=2),
}


@pytest.fixture(scope="module")
def lko_groups():
    return {}


def _lko(scale, cache_for, memo):
    if scale not in memo:
        import torch

        torch.set_num_threads(1)
        memo[scale] = perfkit.lko_setup(scale, cache_for(scale), **SIZES[scale]["lko"])
    return memo[scale]


@pytest.mark.parametrize("scale", perfkit.SCALES)
def test_per_query_time_q8_vs_q1(scale, benchmark, figures, cache_for, lko_groups):
    """One call with 8 queries vs one call with 1 (prepared state cached, as in a run): time per query."""
    from genattr.plugins.methods.unlearning import Unlearning

    g = _lko(scale, cache_for, lko_groups)
    m = Unlearning(**SIZES[scale]["base"])
    ctx = g.context(m)
    m.prepare(ctx)
    t0 = time.perf_counter()
    alone = m.attribute(ctx, g.queries[:1])
    t1 = time.perf_counter() - t0
    out = {}

    def eight():
        t = time.perf_counter()
        out["scores"] = m.attribute(ctx, g.queries[:8])
        out["s"] = time.perf_counter() - t

    benchmark.pedantic(eight, rounds=1, iterations=1)
    np.testing.assert_allclose(out["scores"][0], alone[0], rtol=1e-6, atol=1e-12)
    figures(per_query_s_q1=t1, per_query_s_q8=out["s"] / 8, ratio_q8_over_q1=out["s"] / 8 / t1)


@pytest.mark.parametrize("scale", perfkit.SCALES)
def test_prescreen_vs_exhaustive_leave_k_out(scale, benchmark, figures, cache_for, lko_groups):
    """Exhaustive vs coarse and linear prescreens on the leave-K-out queries (all sharing θ0): UNet evaluations per
    query (the gradient pass divided by the queries), time, top-10 and top-K overlap with the exhaustive ranking."""
    g = _lko(scale, cache_for, lko_groups)
    sz = SIZES[scale]
    g = perfkit.Group(g.name, g.context, g.queries[:sz["compare_queries"]], extra=g.extra)
    variants = perfkit.PRESCREENS if scale == "small" else {k: perfkit.PRESCREENS[k]
                                                             for k in ("exhaustive", "coarse-1", "linear")}
    rows = benchmark.pedantic(perfkit.compare_prescreens, args=([g], variants, sz["base"], sz["refine"]),
                              rounds=1, iterations=1)
    for r in rows:
        tag = r["variant"] + ("" if r["refine"] is None else f"-M{r['refine']}")
        figures(**{f"{tag}.evals_per_query": r["evals_per_query"], f"{tag}.evals_ratio": r["evals_ratio"],
                   f"{tag}.time_ratio": r["time_ratio"], f"{tag}.top10_overlap": r["top10_overlap"],
                   **{f"{tag}.{k}": v for k, v in r.items() if k.startswith("top") and k != "top10_overlap"}})
        assert 0 <= r["top10_overlap"] <= 1
        if r["variant"] != "exhaustive":
            assert r["scoring_evals_per_query"] < rows[0]["scoring_evals_per_query"]


@pytest.mark.slow
@pytest.mark.small
def test_prescreen_vs_exhaustive_customized_small(benchmark, figures, user_cache):
    """The same on the Customized Model benchmark at small (one customized model per concept: the linear prescreen's
    gradient pass is shared by the concept's queries only); with |ΔAP| on the own pool."""
    import torch

    torch.set_num_threads(1)
    groups = perfkit.customized_setups("small", user_cache)
    rows = benchmark.pedantic(perfkit.compare_prescreens, args=(groups, perfkit.PRESCREENS, {}, (50, 100)),
                              rounds=1, iterations=1)
    for r in rows:
        tag = r["variant"] + ("" if r["refine"] is None else f"-M{r['refine']}")
        figures(**{f"{tag}.{k}": r[k] for k in ("evals_per_query", "evals_ratio", "time_ratio", "top10_overlap",
                                                "abs_delta_ap", "ap")})


@pytest.mark.parametrize("scale", perfkit.SCALES)
def test_update_direction_with_fewer_draws(scale, benchmark, figures, cache_for, lko_groups):
    """Cosine of the unlearning step Δθ with fewer draws per step (random and stratified timesteps) to a many-draw
    reference."""
    g = _lko(scale, cache_for, lko_groups)
    sz = SIZES[scale]
    rows = benchmark.pedantic(perfkit.update_cosines, args=(g, sz["base"], sz["draws"], sz["reference"]),
                              kwargs={"batch": 64 if scale == "small" else 8, "queries": sz["cosine_queries"]},
                              rounds=1, iterations=1)
    for r in rows:
        figures(**{f"{r['scheme']}-{r['draws']}.cosine": r["cosine"], f"{r['scheme']}-{r['draws']}.min": r["min"]})
        assert -1 <= r["cosine"] <= 1


#: Batch sizes of the update's draws compared per scale (the first is the preset's batch: 64 at small).
DRAW_BATCHES = {"tiny": (8, 32), "small": (64, 128, 256, 512)}


@pytest.mark.parametrize("scale", perfkit.SCALES)
def test_update_draws_per_second_by_batch(scale, benchmark, figures):
    """Seconds per draw of the update's forward + backward at growing batch sizes (one torch thread), on the digits
    (leave-K-out) and shapes (Customized Model) recipes: what stacking the draws of Q queries into larger batches
    could save at most. ``gain_at_B`` = time per draw at the preset's batch over that at B."""
    batches = DRAW_BATCHES[scale]
    draws = 512 if scale == "small" else 32
    out = {}

    def run():
        for ds in ("digits", "shapes"):
            out[ds] = perfkit.update_draw_throughput(ds, scale, batches, draws=draws)

    benchmark.pedantic(run, rounds=1, iterations=1)
    for ds, rows in out.items():
        assert [r["batch"] for r in rows] == list(batches) and all(r["s_per_draw"] > 0 for r in rows)
        first = rows[0]["s_per_draw"]
        figures(**{f"{ds}.ms_per_draw_b{r['batch']}": 1e3 * r["s_per_draw"] for r in rows},
                **{f"{ds}.gain_at_b{r['batch']}": first / r["s_per_draw"] for r in rows[1:]})


@pytest.mark.parametrize("scale", perfkit.SCALES)
def test_evaluations_at_a_large_pool(scale, benchmark, figures):
    """UNet evaluations per query through the real scoring path at faithful settings (T = 20) on a large pool (100k
    at small), one-off gradients shared by 110 queries (the paper's COCO queries)."""
    n = SIZES[scale]["count_n"]
    base = dict(preset="tiny", timesteps=20, captions=1, steps=1, batch=4, accumulation=1, fisher_samples=8)
    variants = {"exhaustive": {}, "coarse-1-M100": {"prescreen": "coarse", "coarse_timesteps": 1, "refine": 100},
                "coarse-2-M100": {"prescreen": "coarse", "coarse_timesteps": 2, "refine": 100},
                "linear-M100": {"prescreen": "linear", "refine": 100, "prescreen_order": 1},
                "linear2-M100": {"prescreen": "linear", "refine": 100, "prescreen_probes": 8}}
    rows = benchmark.pedantic(perfkit.count_evaluations, args=(n, variants, base), rounds=1, iterations=1)
    by = {r["variant"]: r for r in rows}
    assert by["exhaustive"]["scoring_evals_per_query"] == n * 20
    assert by["coarse-1-M100"]["scoring_evals_per_query"] == n + 100 * 20
    assert by["linear-M100"]["scoring_evals_per_query"] == 100 * 20
    assert by["linear-M100"]["one_off_gradient_evals"] == n * 20
    assert by["linear2-M100"]["one_off_gradient_evals"] == 9 * n * 20
    for r in rows:
        figures(**{f"{r['variant']}.evals_per_query": r["evals_per_query"], f"{r['variant']}.ratio": r["evals_ratio"]})
