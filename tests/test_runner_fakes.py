"""Throwaway plugins for the runner, leaderboard and CLI tests: fake benchmarks and methods (no torch).

Import this module and call :func:`install` to register it (tests do it in a fixture; subprocesses through
:data:`BOOT`). ``FAKE_LOG`` (a path) makes every setup and every cell computation append one JSON line there, which
is how the tests prove what was (not) recomputed; ``FAKE_SLEEP`` (seconds) slows every cell down. Both come from
the environment, not the configuration, so they do not change the configuration hash; so does ``FAKE_MODEL_FP``
(the model fingerprint fake-bench's set-up reports).
"""

from __future__ import annotations

import json
import os
import sys
import time

from genattr import hookimpl
from genattr.harness.api import Cell
from genattr.harness.seeding import derive_seed

PLUGIN_NAME = "runner-test-fakes"
HERE = os.path.dirname(os.path.abspath(__file__))

#: ``python -c BOOT ARGS…`` runs ``genattr ARGS…`` with these fakes registered (PYTHONPATH must hold tests/).
BOOT = ("import sys, test_runner_fakes as f; f.install(); from genattr.cli import main; "
        "raise SystemExit(main(sys.argv[1:]))")


def _log(event: dict) -> None:
    path = os.environ.get("FAKE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**event, "pid": os.getpid()}) + "\n")


def _act(cell_id: str, env) -> None:
    """``FAKE_ACTION="CELL:ACTION"`` (from the environment, so the configuration is unchanged): what a hostile
    plugin does in that cell — ``exit3`` (``sys.exit(3)``), ``hang`` (sleeps for an hour), ``rmout`` (deletes the
    run directory), ``score-grad`` / ``score-nan`` / ``score-shape`` (returns such scores through genattr.score)."""
    spec = os.environ.get("FAKE_ACTION", "")
    target, _, action = spec.rpartition(":")
    if target != cell_id:
        return
    if action == "exit3":
        sys.exit(3)
    if action == "hang":
        time.sleep(3600)
    if action == "rmout":
        import shutil

        shutil.rmtree(env.out)
    if action.startswith("score-"):
        import genattr

        import types

        genattr.score(_BrokenScores(action[len("score-"):]), types.SimpleNamespace(train_set=[0, 1, 2]), [1, 2])


class _BrokenScores:
    name = "fake-broken"

    def __init__(self, how: str):
        self.how = how

    def prepare(self, ctx) -> None:
        pass

    def attribute(self, ctx, queries, candidates=None):
        import numpy as np
        import torch

        if self.how == "grad":
            return torch.zeros(len(queries), 3, requires_grad=True)
        if self.how == "nan":
            return np.full((len(queries), 3), np.nan)
        return np.zeros((1, 1))


def _unit(*keys) -> float:
    return (derive_seed(*keys) % 1_000_003) / 1_000_003


class FakeMethod:
    """A fake method whose quality is its ``bias``."""

    name = "fake-good"
    version = "1"
    needs_model = False

    def __init__(self, bias: float = 1.0):
        self.config = {"bias": float(bias)}

    def prepare(self, ctx) -> None:
        pass

    def attribute(self, ctx, queries, candidates=None):
        import numpy as np

        n = len(ctx.train_set) if candidates is None else len(candidates)
        out = np.zeros((len(queries), n))
        for qi, q in enumerate(queries):
            for i in range(n):
                out[qi, i] = self.config["bias"] * _unit(ctx.seed, q.id, i)
        return out


class FakeBadMethod(FakeMethod):
    name = "fake-bad"

    def __init__(self, bias: float = 0.2):
        super().__init__(bias)


class FakeScaledMethod(FakeMethod):
    """A fake method with a preset per scale (like the TRAK family): ``bias`` follows the scale unless given."""

    name = "fake-scaled"
    PRESETS = {"tiny": 0.5, "small": 2.0}

    def __init__(self, scale: str | None = None, bias: float | None = None, seed: int | None = None):
        self._explicit, self._bias, self._seed = scale is not None, bias, seed
        self._set(scale or "tiny")

    def _set(self, scale: str) -> None:
        self.config = {"scale": scale, "bias": float(self.PRESETS[scale] if self._bias is None else self._bias)}
        if self._seed is not None:  # like the real methods: in the configuration only when given
            self.config["seed"] = int(self._seed)

    def resolve_config(self, scale: str, preset_hint: str | None = None) -> dict:
        if not self._explicit:
            self._set(scale)
        return self.config

    def attribute(self, ctx, queries, candidates=None):
        self.resolve_config(ctx.scale)
        return super().attribute(ctx, queries, candidates)


class FakeModelAwareMethod(FakeScaledMethod):
    """Like fake-scaled, with a value calibrated for one model: ``bias`` is tripled when the benchmark scores with
    ``fake-t2i`` (its ``resolve_config`` takes the ``model`` keyword); the model enters the configuration."""

    name = "fake-model-aware"

    def resolve_config(self, scale: str, preset_hint: str | None = None, model: str | None = None) -> dict:
        if not self._explicit:
            self._set(scale)
        if self._bias is None and model == "fake-t2i":
            self.config["bias"] *= 3
        self.config["model"] = model
        return self.config

    def attribute(self, ctx, queries, candidates=None):
        self.resolve_config(ctx.scale, ctx.extra.get("preset_hint"), ctx.extra.get("preset_model"))
        return FakeMethod.attribute(self, ctx, queries, candidates)


class FakeBench:
    """Cells: method × K × query; metrics "score" (higher is better) and "loss" (lower is better)."""

    name = "fake-bench"
    version = "1"

    def __init__(self, scale: str = "tiny", n_queries: int = 3, ks=(1, 2), fail_on: str | None = None):
        self.config = {"scale": scale, "n_queries": int(n_queries), "ks": [int(k) for k in ks], "fail_on": fail_on}
        self.metrics = {"score": True, "loss": False}
        self.ready = False

    def setup(self, env) -> dict:
        _log({"event": "setup", "benchmark": self.name})
        self.ready = True
        # FAKE_MODEL_FP: the fingerprint the set-up reports for its model (a model rebuilt differently)
        return {"datasets": {"fake-data": "d" * 64}, "models": {"fake-model": os.environ.get("FAKE_MODEL_FP", "m" * 64)}}

    def _group(self, k, q) -> dict:
        return {"K": k}

    def cells(self, methods):
        return [Cell(id=f"{m}/K{k}/q{q}", method=m, params={"K": k, "q": q}, group=self._group(k, q))
                for m in methods for k in self.config["ks"] for q in range(self.config["n_queries"])]

    def run_cell(self, cell, method, env) -> dict:
        assert self.ready, "run_cell before setup"
        if self.config["fail_on"] == cell.id:
            raise RuntimeError(f"fake failure in {cell.id}")
        _act(cell.id, env)
        _log({"event": "cell", "benchmark": self.name, "cell": cell.id})
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        bias = method.config["bias"]
        k = cell.params["K"]
        noise = _unit(env.seed, self.name, cell.id)
        if method.config.get("seed") is not None:  # a method seed: the method's own draws move its score a little
            noise += 0.1 * _unit(method.config["seed"], cell.id)
        return {"score": bias * k + 0.1 * noise, "loss": 1.0 / (1.0 + bias) + 0.05 * noise,
                "extra": {"noise": noise}}


class FakeSplitBench(FakeBench):
    """Like fake-bench, grouped by a categorical ``split`` (object / style) instead of K."""

    name = "fake-split"

    def _group(self, k, q) -> dict:
        return {"split": "object" if q % 2 == 0 else "style"}


class FakeModelBench(FakeBench):
    """Like fake-bench, naming the model its cells score with (``preset_model``, option ``model``)."""

    name = "fake-model-bench"

    def __init__(self, model: str = "fake-t2i", **config):
        super().__init__(**config)
        self.config["model"] = model

    @property
    def preset_model(self) -> str:
        return self.config["model"]


class FakePixelMethod(FakeMethod):
    """Negative squared pixel distance between the query and each training image."""

    name = "fake-pixel"

    def __init__(self):
        self.config = {}

    def attribute(self, ctx, queries, candidates=None):
        import numpy as np

        n = len(ctx.train_set)
        idx = list(range(n)) if candidates is None else list(candidates)
        train = ctx.train_set.images(idx).reshape(len(idx), -1).numpy()
        out = np.zeros((len(queries), len(idx)))
        for qi, q in enumerate(queries):
            out[qi] = -((train - q.image.reshape(1, -1).numpy()) ** 2).sum(axis=1)
        return out


def fake_dataset(n: int = 12, resolution: int = 8):
    """n distinct 1×8×8 images (each a different bright square) with captions."""
    import torch

    from genattr.harness.data import InMemoryDataset

    images = -torch.ones(n, 1, resolution, resolution)
    for i in range(n):
        r, c = divmod(i, resolution // 2)
        images[i, 0, (2 * r) % resolution:(2 * r) % resolution + 2, 2 * c:2 * c + 2] = 1.0
    return InMemoryDataset("fake-data", "1", [f"item{i:02d}" for i in range(n)], images,
                           [(f"square {i}",) for i in range(n)])


class FakeT2I:
    """Generates training image ``seed % N`` of :func:`fake_dataset` plus a little noise."""

    name = "fake-t2i"
    version = "1"
    resolution = 8
    channels = 1
    fingerprint = "f" * 64

    def __init__(self, n: int = 12):
        self.data = fake_dataset(n)

    def generate(self, prompts, seeds, steps=50):
        import torch

        out = []
        for p, s in zip(prompts, seeds):
            g = torch.Generator().manual_seed(int(s))
            img = self.data.images([int(s) % len(self.data)])[0]
            out.append((img + 0.05 * torch.randn(img.shape, generator=g)).clamp(-1, 1))
        return torch.stack(out)


@hookimpl
def register_datasets(register):
    register("fake-data", fake_dataset, version="1", description="fake dataset (tests)")


@hookimpl
def register_models(register):
    register("fake-t2i", FakeT2I, version="1", description="fake model (tests)")


@hookimpl
def register_benchmarks(register):
    register("fake-bench", FakeBench, version=FakeBench.version, description="fake benchmark (tests)")
    register("fake-split", FakeSplitBench, version=FakeSplitBench.version, description="fake benchmark (tests)")
    register("fake-model-bench", FakeModelBench, version=FakeModelBench.version, description="fake benchmark (tests)")


@hookimpl
def register_methods(register):
    register("fake-good", FakeMethod, version="1", needs_model=False, description="fake method (tests)")
    register("fake-bad", FakeBadMethod, version="1", needs_model=False, description="fake method (tests)")
    register("fake-pixel", FakePixelMethod, version="1", needs_model=False, description="fake method (tests)")
    register("fake-scaled", FakeScaledMethod, version="1", needs_model=False, description="fake method (tests)")
    register("fake-model-aware", FakeModelAwareMethod, version="1", needs_model=False,
             description="fake method (tests)")


def install() -> None:
    from genattr.harness.manager import load_plugins, pm, register_plugin

    load_plugins()
    if pm.get_plugin(PLUGIN_NAME) is None:
        register_plugin(sys.modules[__name__], PLUGIN_NAME)


def uninstall() -> None:
    from genattr.harness.manager import unregister_plugin

    unregister_plugin(PLUGIN_NAME)


def read_log(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
