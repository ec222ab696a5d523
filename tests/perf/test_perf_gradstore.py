"""A TRAK-family projection-size sweep through the gradient store: each size computed directly (one gradient pass
per size) against ``via_identity`` (one pass, every size projected from the unprojected rows). Figures: gradient
evaluations and seconds of each path and their ratios, and the largest relative deviation of a derived entry from
the direct one (rounding). tiny: the tiny digits model, K/V selection, 10 strided draws over the first 40
training items."""

from __future__ import annotations

import time

import numpy as np
import pytest

import perfkit

SIZES = {"tiny": (64, 256, 1024)}
POOL = {"tiny": 40}


@pytest.mark.parametrize("scale", ["tiny"])
def test_projection_sweep_direct_vs_via_identity(scale, benchmark, figures, perf_cache, tmp_path):
    from genattr.harness.cache import Cache
    from genattr.harness.gradstore import GradientSpec, GradientStore

    model, ds = perfkit.tiny_digits(perf_cache)
    ds = ds.subset(ds.ids[:POOL[scale]])
    draws = {"kind": "strided", "count": 10, "namespace": "perf-sweep", "shared": True, "captions": "cycle"}
    specs = [GradientSpec(selection="cross-attn-kv", output="eps-sq-norm", draws=draws, projection="rademacher",
                          proj_dim=k, via_identity=(i == 0)) for i, k in enumerate(SIZES[scale])]
    out = {}

    def run():
        for path in ("direct", "via_identity"):
            store = GradientStore(Cache(tmp_path / f"{path}-{len(out)}"))
            t0 = time.perf_counter()
            got = [store.get(model, ds, s if path == "via_identity" else GradientSpec(**{**s.__dict__,
                                                                                      "via_identity": False}))
                   for s in specs]
            out[path] = (time.perf_counter() - t0, store.evaluations, [np.asarray(g.array) for g in got])

    benchmark.pedantic(run, rounds=1, iterations=1)
    (t_d, e_d, a_d), (t_v, e_v, a_v) = out["direct"], out["via_identity"]
    dev = max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a_v, a_d))
    figures(sizes=list(SIZES[scale]), seconds_direct=t_d, seconds_via_identity=t_v, time_ratio=t_d / t_v,
            evaluations_direct=e_d, evaluations_via_identity=e_v, max_relative_deviation=dev)
    assert e_d == len(specs) * e_v and e_v == len(ds) * 10
    assert dev < 1e-3
