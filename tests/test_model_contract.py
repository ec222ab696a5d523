"""The model contract: any registered model runs every benchmark its capabilities allow.

* ``example-t2i`` (``examples/genattr-model-example``: the scaffold's model package as generated, its own network, no
  built-in class) and ``diffusers`` built from configs (Stable Diffusion's component classes, saved with
  ``save_pretrained`` and loaded back) each run ``customized-model``, ``leave-k-out``, ``lds`` and
  ``teacher-agreement`` at ``tiny``, cut to a few queries;
* a model without a capability a benchmark needs is refused in one line before anything is written;
* the committed example package is exactly what ``genattr new-plugin example-t2i --kind model`` writes;
* the ``diffusers`` model reads Custom Diffusion's own ``delta.bin``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

import genattr
from genattr.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "genattr-model-example"
BENCHMARKS = ("customized-model", "leave-k-out", "lds", "teacher-agreement")
CUT = ["--set", "leave-k-out.k=[2]", "--set", "leave-k-out.num_queries=1", "--set", "lds.num_queries=2",
       "--set", "lds.subsets=4", "--set", "teacher-agreement.num_queries=2", "--set", "customized-model.n_object=1",
       "--set", "customized-model.n_style=1", "--set", 'leave-k-out.metrics=["delta-loss"]']


@pytest.fixture(scope="module")
def example_model():
    """The example package's model, registered as its entry point would register it."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import example_t2i
    finally:
        sys.path.remove(str(EXAMPLE))
    genattr.register_plugin(example_t2i, "example-t2i")
    yield "example-t2i"
    genattr.unregister_plugin("example-t2i")


def _run_everywhere(tmp_path, model: str, capsys, default: bool = False) -> list[dict]:
    """Every benchmark at tiny with ``model`` (``default``: without ``--set``, the benchmarks' own default)."""
    args = ["run", *BENCHMARKS, "-m", "random", "-m", "pixel", "--scale", "tiny", "--out", str(tmp_path / model),
            "-q", "--no-leaderboard", *CUT]
    for bench in BENCHMARKS:
        args += [] if default else ["--set", f"{bench}.model={model}"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    rows = [json.loads(line) for line in (tmp_path / model / "results.jsonl").read_text().splitlines()]
    run = json.loads((tmp_path / model / "run.json").read_text())
    assert {r["benchmark"] for r in rows} == set(BENCHMARKS)
    for row in rows:
        assert row["metrics"] and all(math.isfinite(v) for v in row["metrics"].values()), row
    for bench in BENCHMARKS:
        assert run["benchmarks"][bench]["config"]["model"] == model
    return rows


def test_a_third_party_model_runs_every_benchmark(tmp_path, capsys, example_model):
    rows = _run_everywhere(tmp_path, example_model, capsys)
    # the Customized Model queries came from the model's own customized models: pixel finds their exemplars
    # better than chance would
    ap = {m: [r["metrics"]["ap"] for r in rows if r["benchmark"] == "customized-model" and r["method"] == m]
          for m in ("random", "pixel")}
    assert len(ap["pixel"]) == len(ap["random"]) == 4


def test_the_diffusers_model_built_from_configs_runs_every_benchmark(tmp_path, capsys):
    """The latent pipeline is every benchmark's default at tiny (no ``--set``): a VAE trained once per dataset
    (pinned by key, shared by every retrain), queries from held-out caption combinations, the regime check on the
    model's own renderings, Custom Diffusion K/V + token customization."""
    _run_everywhere(tmp_path, "diffusers", capsys, default=True)
    run = json.loads((tmp_path / "diffusers" / "run.json").read_text())
    for bench in ("leave-k-out", "lds"):
        prov = run["benchmarks"][bench]["provenance"]
        assert prov["recipe"]["model_config"]["vae_key"], bench
    assert run["benchmarks"]["leave-k-out"]["provenance"]["regime"]["rendered"] == "decode(latents(x))"
    assert run["benchmarks"]["leave-k-out"]["config"]["dataset"] == "shapes"
    assert run["benchmarks"]["customized-model"]["provenance"]["customize"]["weights"] == "cross-attn-kv"


def test_a_model_without_a_capability_is_refused_before_any_work(tmp_path, capsys):
    class Untrainable:
        name, version = "frozen-t2i", "1"

    class Plugin:
        @genattr.hookimpl
        def register_models(self, register):
            register("frozen-t2i", Untrainable, version="1", description="loads, never trains")

    genattr.register_plugin(Plugin(), "frozen-t2i-plugin")
    try:
        out = tmp_path / "refused"
        rc = main(["run", "leave-k-out", "-m", "random", "--scale", "tiny", "--out", str(out), "-q",
                   "--set", "leave-k-out.model=frozen-t2i"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and not out.exists()
        assert err[-1].endswith("benchmark leave-k-out needs a trainable model; model 'frozen-t2i' registers "
                                "capabilities [none] (see docs/models.md)"), err
        assert genattr.model_capabilities("frozen-t2i") == ()
    finally:
        genattr.unregister_plugin("frozen-t2i-plugin")
    assert genattr.model_capabilities("tiny-t2i") == ("trainable", "customizable")


def test_capabilities_are_listed_without_importing_torch(python):
    import subprocess

    probe = ("import sys, json; from genattr.cli import main; main(['list', 'models', '--json']); "
             "print('torch' in sys.modules)")
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    rows = json.loads(proc.stdout[: proc.stdout.rindex("]") + 1])
    caps = {r["name"]: r.get("capabilities") for r in rows}
    assert caps["tiny-t2i"] == caps["diffusers"] == ["trainable", "customizable"]
    assert proc.stdout.strip().endswith("False")


def test_the_example_package_is_the_scaffold_output():
    from genattr.plugins.scaffold import render

    for rel, text in render("example-t2i", "model").items():
        assert (EXAMPLE / rel).read_text(encoding="utf-8") == text, f"{rel} differs from the scaffold's output"


def test_recipes_belong_to_the_model():
    r = genattr.model_recipe("diffusers", "tiny", "digits")
    assert set(r) == {"model", "train", "dataset", "customize"}
    assert r["customize"]["weights"] == "cross-attn-kv"  # Custom Diffusion's K/V
    with pytest.raises(genattr.UserError, match="no recipe for scale 'medium'"):
        genattr.model_recipe("diffusers", "medium", "digits")


def test_diffusers_reads_custom_diffusions_delta_bin(tmp_path):
    torch = pytest.importorskip("torch")
    from genattr.harness.data import InMemoryDataset

    ds = InMemoryDataset("px", "1", [f"p{i}" for i in range(4)], torch.rand(4, 3, 8, 8) * 2 - 1,
                         [("a red circle",), ("a blue square",)] * 2)
    cls = genattr.model_type("diffusers")
    base = cls.build(ds, cls.recipe("tiny")["model"])
    custom = base.customize(ds.subset(["p0", "p1"]), "<new1>", {"steps": 2, "batch_size": 2})
    kv = custom.parameters("cross-attn-kv")
    emb = custom.text_encoder.get_input_embeddings().weight
    official = {"unet": {n: p.detach().clone() for n, p in kv.items()},
                "modifier_token": {"<new1>": emb[custom.token_ids("<new1>")[0]].detach().clone()}}
    torch.save(official, tmp_path / "delta.bin")  # Custom Diffusion's layout
    back = base.apply_delta(str(tmp_path / "delta.bin"))
    for n, p in kv.items():
        assert torch.equal(dict(back.unet.named_parameters())[n], p)
    assert torch.equal(back.text_encoder.get_input_embeddings().weight[back.token_ids("<new1>")[0]],
                       official["modifier_token"]["<new1>"])
    # genattr's own delta: the same keys, flattened, in safetensors
    custom.save_delta(str(tmp_path / "d"))
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "d" / "delta.safetensors"))) == (
        {f"unet.{n}" for n in kv} | {"modifier_token.<new1>"})
    assert base.apply_delta(str(tmp_path / "d")).fingerprint == custom.fingerprint
