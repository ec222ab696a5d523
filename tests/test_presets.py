"""The one preset mechanism (``genattr.presets``): defaults + preset + overrides, names and values checked with
did-you-mean suggestions, used by the built-in methods and benchmarks alike; LDS, leave-K-out and teacher agreement
take their θ0 from one named configuration."""

from __future__ import annotations

import pytest

import genattr
from genattr.cli import main
from genattr.harness.errors import UserError
from genattr.presets import Choice, Flag, Integer, Number, Table, Text, check_names, check_value, resolve

PRESETS = {"tiny": {"steps": 5, "sizes": {"a": 1, "b": 2}}, "small": {"steps": 50, "sizes": {"a": 10, "b": 20}}}
COMMON = {"flip": False, "mode": "fast", "lr": 0.1}
SPECS = {"steps": Integer(min=1), "mode": Choice("fast", "exact"), "lr": Number(gt=0)}


def test_defaults_then_preset_then_overrides_as_a_fresh_copy():
    cfg = resolve("m", "small", {"mode": "exact", "sizes": {"b": 3}}, presets=PRESETS, common=COMMON, specs=SPECS,
                  merge=("sizes",))
    assert cfg == {"flip": False, "mode": "exact", "lr": 0.1, "steps": 50, "sizes": {"a": 10, "b": 3}}
    cfg["sizes"]["a"] = -1
    assert PRESETS["small"]["sizes"]["a"] == 10  # the presets are never shared with a result
    replaced = resolve("m", "tiny", {"sizes": {"b": 3}}, presets=PRESETS, common=COMMON)
    assert replaced["sizes"] == {"b": 3}  # without merge, a table replaces the preset's


@pytest.mark.parametrize("overrides, message", [
    ({"stpes": 3}, "m: unknown option 'stpes' (did you mean: steps, sizes?); known: flip, lr, mode, sizes, steps"),
    ({"flip": "flase"}, "m: option 'flip' must be true or false, got 'flase'"),
    ({"flip": 1}, "m: option 'flip' must be true or false, got 1"),
    ({"mode": "exakt"}, "m: option 'mode' must be one of fast, exact, got 'exakt' (did you mean: exact?)"),
    ({"steps": 0}, "m: option 'steps' must be a positive integer, got 0"),
    ({"steps": 2.5}, "m: option 'steps' must be a positive integer, got 2.5"),
    ({"steps": True}, "m: option 'steps' must be a positive integer, got True"),
    ({"lr": float("nan")}, "m: option 'lr' must be a positive number, got nan"),
    ({"lr": "fast"}, "m: option 'lr' must be a positive number, got 'fast'"),
])
def test_a_bad_name_or_value_is_one_line_naming_it(overrides, message):
    with pytest.raises(UserError) as err:
        resolve("m", "tiny", overrides, presets=PRESETS, common=COMMON, specs=SPECS)
    assert str(err.value) == message


def test_an_unknown_preset_is_named_with_a_suggestion():
    with pytest.raises(UserError, match=r"m: unknown scale 'smal' \(did you mean: small\?\); choose from tiny, small"):
        resolve("m", "smal", {}, presets=PRESETS)
    with pytest.raises(UserError, match="unknown preset 'cocoa'"):
        resolve("m", "cocoa", {}, presets={"coco": {}}, what="preset")


def test_specs():
    assert Integer(min=0).problem(0) is None and "non-negative" in Integer(min=0).problem(-1)
    assert Integer(min=1, nullable=True).problem(None) is None
    assert "or null" in Integer(min=1, nullable=True).problem("x")
    assert Text().problem("") and Table().problem([]) and Table().problem({}) is None
    assert Choice(1, 2).problem(True)  # True == 1 in Python, but it is not the option's value
    assert Flag().problem(0) and Flag().problem(False) is None
    with pytest.raises(UserError, match="x: option 'k' must be a finite number <= 1"):
        check_value("x", "k", 2, Number(max=1))
    with pytest.raises(UserError, match="unknown thing 'b'; known: a"):
        check_names("x", ["b"], ["a"], what="thing")


@pytest.mark.parametrize("name, options, message", [
    ("pixel", {"flip": "flase"}, "pixel: option 'flip' must be true or false"),
    ("pixel", {"batch_size": 0}, "pixel: option 'batch_size' must be a positive integer"),
    ("random", {"salt": ["x"]}, "random: option 'salt' must be a string or a number"),
    ("trak", {"lambda_rge": 1}, "unknown trak option 'lambda_rge'|trak: unknown option 'lambda_rge'"),
    ("datainf", {"seed": "x"}, "datainf: option 'seed' must be an integer"),
    ("das", {"normalize": "unti"}, "das: normalize must be one of"),
    ("distilled", {"input_norm": "yes"}, "distilled: option 'input_norm' must be true or false"),
    ("unlearning", {"fisher_flips": "no"}, "unlearning: option 'fisher_flips' must be true or false"),
    ("unlearning", {"stpes": 1}, r"unlearning: unknown option 'stpes' \(did you mean: steps"),
    ("dino", {"flip": "true"}, "dino: option 'flip' must be true or false"),
])
def test_built_in_methods_check_names_and_values_through_it(name, options, message):
    with pytest.raises(UserError, match=message):
        genattr.get_method(name, **options)


@pytest.mark.parametrize("name, options, message", [
    ("leave-k-out", {"train_config": {"steps": 0}}, "leave-k-out: option 'train_config.steps' must be a positive"),
    ("leave-k-out", {"train_config": {"lr": "fast"}}, "leave-k-out: option 'train_config.lr' must be a positive"),
    ("lds", {"train_config": {"batch_size": -5}}, "lds: option 'train_config.batch_size' must be a positive"),
    ("teacher-agreement", {"train_config": {"seed": 1.5}}, "option 'train_config.seed' must be an integer"),
    ("customized-model", {"customize": {"steps": -5}}, "customized-model: option 'customize.steps' must be"),
    ("customized-model", {"n_objct": 1}, r"customized-model: unknown option 'n_objct' \(did you mean: n_object"),
    ("leave-k-out", {"num_querys": 1}, r"leave-k-out: unknown option 'num_querys' \(did you mean: num_queries"),
])
def test_built_in_benchmarks_check_names_and_plan_values(name, options, message):
    with pytest.raises(UserError, match=message):
        genattr.get_benchmark(name, scale="tiny", **options)


def test_counterfactual_benchmarks_share_one_named_theta0():
    from genattr.benchmarks._counterfactual import THETA0
    from genattr.benchmarks.lds import SCALES as LDS
    from genattr.benchmarks.leave_k_out import SCALES as LKO
    from genattr.benchmarks.teacher_agreement import SCALES as TA

    for scale, theta0 in THETA0.items():
        for table in (LKO, LDS, TA):
            assert {k: table[scale][k] for k in theta0} == theta0
    LKO["tiny"]["dataset_config"]["x"] = 1  # each benchmark's copy is its own
    try:
        assert "x" not in LDS["tiny"]["dataset_config"] and "x" not in THETA0["tiny"]["dataset_config"]
    finally:
        del LKO["tiny"]["dataset_config"]["x"]


@pytest.mark.parametrize("setting", ["pixel.flip=flase", "leave-k-out.train_config.steps=0",
                                     "leave-k-out.train_config.steps=-5"])
def test_run_refuses_bad_values_before_any_work(setting, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "leave-k-out", "--scale", "tiny", "-m", "pixel", "--set", setting, "--out", str(out),
                 "--quiet"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genattr: error:")


@pytest.mark.parametrize("bench,setting,needle", [
    ("customized-model", 'customize={"stepz": 5}', "option 'customize': unknown customization option 'stepz'"),
    ("customized-model", 'customize={"weights": "kv"}', "customization option 'weights' must be one of"),
    ("customized-model", 'train_config={"flipp": true}', "option 'train_config': unknown training option 'flipp'"),
    ("leave-k-out", 'train_config={"lr_schedul": "constant"}', "unknown training option 'lr_schedul'"),
    ("lds", 'train_config={"emaa": 0.9}', "lds: option 'train_config': unknown training option 'emaa'"),
    ("teacher-agreement", 'train_config={"stepz": 5}', "(did you mean: steps?)"),
])
def test_model_plan_options_are_checked_before_the_base_model_trains(bench, setting, needle, tmp_path, monkeypatch,
                                                                    capsys):
    """A misspelt option of the model's own training or customization plan fails before anything is trained or
    cached (the model's ``check_plan``, called when the benchmark resolves its recipe), not after the base model."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setenv("GENATTR_CACHE", str(cache))
    code = main(["run", bench, "--scale", "tiny", "-m", "random", "--set", f"{bench}.{setting}", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and not any(cache.rglob("*"))
    assert len(err) == 1 and err[0].startswith(f"genattr: error: {bench}: ") and needle in err[0]


def test_attribute_refuses_non_positive_steps(tmp_path, capsys):
    for steps in ("0", "-3"):
        code = main(["attribute", "--dataset", "digits", "--prompt", "a 3", "--steps", steps, "--method", "pixel",
                     "--out", str(tmp_path / "a")])
        assert code == 2 and not (tmp_path / "a").exists()
        assert "--steps must be a positive integer" in capsys.readouterr().err
