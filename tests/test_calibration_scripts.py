"""The calibration scripts' tables (tests/perf/calibrate_baselines.py): records of one setting aggregate per
configuration; records of different benchmark options or pool samples are never mixed into one table."""
import importlib.util
from pathlib import Path

import pytest


def _script():
    path = Path(__file__).resolve().parent / "perf" / "calibrate_baselines.py"
    spec = importlib.util.spec_from_file_location("calibrate_baselines_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(alpha, model_seed, value, **extra):
    return {"method": "unlearning", "config": {"alpha": alpha}, "model_seed": model_seed,
            "by_split": {"object-centric": value, "artist-style": value / 2}, **extra}


def test_the_table_averages_runs_per_configuration_and_bolds_the_best():
    table = _script().table([_rec(1e-3, 0, 0.2), _rec(1e-3, 1, 0.4), _rec(1e-2, 0, 0.6), _rec(1e-2, 1, 0.8)])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "0.300" in rows['`{"alpha": 0.001}`'] and "**0.525**" in rows['`{"alpha": 0.01}`']


def test_the_table_refuses_records_of_different_benchmark_options_or_pool_samples():
    mod = _script()
    with pytest.raises(SystemExit, match="benchmark options or pool sample"):
        mod.table([_rec(1e-2, 0, 0.5), _rec(1e-2, 0, 0.5, benchmark_options={"model": "diffusers"})])
    with pytest.raises(SystemExit, match="benchmark options or pool sample"):
        mod.table([_rec(1e-2, 0, 0.5, pool_sample=300), _rec(1e-2, 0, 0.5)])
