"""model_seeds: one run pools several base-model instances; cells carry their seed, queries pair across methods."""

from __future__ import annotations

import pytest

import genattr
from genattr.harness import results
from genattr.harness.run import build_spec, run


def test_cells_are_expanded_per_model_seed():
    b = genattr.get_benchmark("leave-k-out", scale="tiny", model_seeds=[3, 5])
    cells = b.cells(["random", "pixel"])
    plain = genattr.get_benchmark("leave-k-out", scale="tiny").cells(["random", "pixel"])
    assert len(cells) == 2 * len(plain)
    assert {c.params["model_seed"] for c in cells} == {3, 5}
    assert all(c.id.split("/")[1] in ("s3", "s5") for c in cells)
    assert len({c.batch for c in cells if c.method == "pixel"}) == 2  # a group never mixes seeds
    with pytest.raises(genattr.UserError, match="model_seeds"):
        genattr.get_benchmark("customized-model", scale="tiny", model_seeds=[1, 1])
    with pytest.raises(genattr.UserError, match="model_seeds or train_seed"):
        genattr.get_benchmark("leave-k-out", scale="tiny", model_seeds=[1], train_seed=2)


def test_two_model_seeds_train_two_models_and_pool_their_queries(tmp_path, session_cache):
    sets = ["leave-k-out.model_seeds=[0, 1]", "leave-k-out.k=[2]", "leave-k-out.num_queries=1",
            "leave-k-out.random_draws=1", 'leave-k-out.metrics=["delta-loss"]']
    spec = build_spec(["leave-k-out"], ["random", "pixel"], scale="tiny", sets=sets, out=str(tmp_path / "out"),
                      device="cpu", quiet=True, cache_root=str(session_cache.root))
    summary = run(spec)
    assert summary.cells_run == 4
    rows = results.read_rows(tmp_path / "out")
    prov = summary.run["benchmarks"]["leave-k-out"]["provenance"]["model_seeds"]
    assert set(prov) == {"0", "1"} and prov["0"]["models"]["base"] != prov["1"]["models"]["base"]
    # each seed's query comes from its own θ0; pixel and random pair on (K, query, model seed)
    pixel = {r["params"]["model_seed"]: r for r in rows if r["method"] == "pixel"}
    assert set(pixel) == {0, 1} and pixel[0]["extra"]["seed"] != pixel[1]["extra"]["seed"]
    keys = {(r["method"], tuple(sorted(r["params"].items()))) for r in rows}
    assert len(keys) == 4


def test_a_method_seed_equal_to_a_model_seed_is_warned():
    """``--set dtrak.seed=1`` with ``model_seeds=[0, 1, 2]`` repeats the default draws on model seed 1 (the default
    method seed is the model seed): warned before any cell; a seed outside the list, or none, is silent."""
    import logging

    from genattr.harness.run.driver import _warn_seed_collision

    got: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    log = logging.getLogger("genattr.run")
    h = H()
    log.addHandler(h)
    try:
        _warn_seed_collision("customized-model", "dtrak", {"model_seeds": [0, 1, 2]}, {"seed": 1})
        assert len(got) == 1 and "dtrak.seed=1" in got[0] and "model seed 1" in got[0]
        for bench, cfg in (({"model_seeds": [0, 1, 2]}, {"seed": 10}), ({"model_seeds": [0, 1]}, {"seed": None}),
                           ({"model_seeds": None}, {"seed": 1}), ({"model_seeds": [0, 1]}, {})):
            _warn_seed_collision("customized-model", "dtrak", bench, cfg)
        assert len(got) == 1
    finally:
        log.removeHandler(h)
