"""Peak resident set of scoring at N vs 4N (fresh processes) and the cold start of ``genattr plugins``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import perfkit

#: Pool sizes N (and 4N) per scale; the scoring run uses the linear prescreen, so the gradient store is written and
#: read too. tiny: measured in this process (the high-water mark reset between runs); small: fresh processes.
RSS_N = {"tiny": 64, "small": 2000}


@pytest.mark.parametrize("scale", perfkit.SCALES)
def test_scoring_peak_rss_n_vs_4n(scale, benchmark, figures, perf_cache):
    model, ds = perfkit.tiny_digits(perf_cache)
    n = RSS_N[scale]
    opts = {"prescreen": "linear", "refine": 16, "timesteps": 2, "prescreen_order": 1}
    out = {}

    def run():
        if scale == "tiny":
            perfkit.scoring_run(model, ds, 8, perf_cache, opts)  # warm: lazy imports, allocator, first-call kernels
        for key, size in (("n", n), ("4n", 4 * n)):
            got = None
            if scale == "tiny":
                got = perfkit.peak_rss_here(lambda: perfkit.scoring_run(model, ds, size, perf_cache, opts))
            out[key] = got if got is not None else perfkit.scoring_peak_rss(size, perf_cache.root, opts)

    benchmark.pedantic(run, rounds=1, iterations=1)
    ratio = out["4n"] / out["n"]
    figures(n=n, peak_rss_mb_n=out["n"] / 2**20, peak_rss_mb_4n=out["4n"] / 2**20, ratio_4n_over_n=ratio)
    assert ratio < 1.2


def test_plugins_cold_start(benchmark, figures, clean_env):
    """``genattr plugins`` in a fresh interpreter (imports no torch; see tests/test_plugins.py)."""
    env = {**clean_env, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import sys; from genattr.cli import main; sys.exit(main(['plugins']))"]

    def run():
        subprocess.run(cmd, check=True, capture_output=True, env=env)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    import time

    t0 = time.perf_counter()
    run()
    figures(seconds=time.perf_counter() - t0)
