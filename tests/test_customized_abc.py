"""The Customized Model benchmark on the public AbC layout: a tiny fake tree, a model-free method end to end, and
the skipping of model-based cells for models without weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genattr.benchmarks.customized_model import CustomizedModelBenchmark
from genattr.harness.api import RunEnv

RES = 16


def _png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def _pattern(rng, kind: int) -> np.ndarray:
    """A 16×16 RGB image: a distinct random texture per ``kind``."""
    base = np.random.default_rng(1000 + kind).integers(0, 256, size=(RES, RES, 3))
    return np.clip(base + rng.normal(0, 6, size=base.shape), 0, 255)


def make_abc_tree(root: Path, n_pool: int = 12) -> Path:
    """root/dataset/{json,exemplar,synth,laion_subset}: 2 ImageNet models (1 exemplar) and 2 BAM-FG models (3
    exemplars). A model's synthesized images are noisy copies of one of its exemplars."""
    rng = np.random.default_rng(0)
    ds = root / "dataset"
    for i in range(n_pool):
        _png(ds / "laion_subset" / f"{i:06d}.png", _pattern(rng, 100 + i))
        (ds / "laion_subset" / f"{i:06d}.txt").write_text(f"a photo number {i}\n")
    kind = 0
    for split, n_ex, category in (("observed_imagenet", 1, "goldfish"), ("bamfg", 3, None)):
        entries = []
        for m in range(2):
            ex_paths, kinds = [], []
            for e in range(n_ex):
                rel = f"dataset/exemplar/{split}/{m}/{e}.png"
                _png(root / rel, _pattern(rng, kind))
                ex_paths.append(rel)
                kinds.append(kind)
                kind += 1
            synth = {}
            for t in ("gpt", "media"):
                synth[t] = []
                for q in range(2):
                    rel = f"dataset/synth/{split}/{m}/{t}_{q}.png"
                    _png(root / rel, _pattern(rng, kinds[q % n_ex]))
                    synth[t].append(rel)
            entries.append({"exemplar": ex_paths, "synth": synth, "class_id": f"{split[:3]}{m}", "category": category})
        (ds / "json").mkdir(parents=True, exist_ok=True)
        (ds / "json" / f"test_{split}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def abc_root(tmp_path_factory):
    return make_abc_tree(tmp_path_factory.mktemp("abc"))


def _bench(root, **kw):
    cfg = dict(scale="paper", data_root=str(root), resolution=RES, models_per_split=2, queries_per_model=3,
               pool_size=None)
    return CustomizedModelBenchmark(**{**cfg, **kw})


def test_fake_abc_tree_pixel_end_to_end(abc_root, session_cache):
    import genattr

    bench = _bench(abc_root)
    cells = bench.cells(["pixel"])
    assert len(cells) == 4 * 3
    assert {c.group["split"] for c in cells} == {"object-centric", "artist-style"}
    env = RunEnv(cache=session_cache, scale="paper")
    prov = bench.setup(env)
    assert prov["source"] == "abc"
    assert prov["sizes"]["pool_base"] == 12 and prov["sizes"]["pool_all"] == 12 + 2 * 1 + 2 * 3
    assert sorted(prov["missing_weights"]) == sorted(c["id"] for c in prov["concepts"])
    method = genattr.get_method("pixel")
    rows = [bench.run_cell(c, method, env) for c in cells]
    for r in rows:
        assert set(bench.metrics) <= set(r)
        assert all(0.0 <= r[k] <= 1.0 for k in bench.metrics)
        assert r["extra"]["pool_size_own"] < r["extra"]["pool_size_all"]
    # queries are noisy copies of one of their exemplars: pixel similarity puts that exemplar first
    for c, r in zip(cells, rows):
        assert r["extra"]["ranks_own"][0] == 1, (c.id, r["extra"])
        assert r["recall@100"] == 1.0 and r["recall@100/all"] == 1.0  # pools smaller than 100
        assert r["ap"] >= r["ap/all"]
    objects = [r for c, r in zip(cells, rows) if c.group["split"] == "object-centric"]
    assert all(r["ap"] == 1.0 and r["recall@10"] == 1.0 for r in objects)  # one exemplar, ranked first


def test_model_based_cells_skip_models_without_weights(abc_root, tmp_path):
    wdir = tmp_path / "weights"
    (wdir / "bamfg").mkdir(parents=True)
    (wdir / "bamfg" / "bam1.safetensors").write_bytes(b"")  # presence is what cells() checks
    bench = _bench(abc_root, weights_dir=str(wdir))
    specs = {s["id"]: s for s in bench.concept_specs()}
    assert sum(s["has_weights"] for s in specs.values()) == 1
    cells = bench.cells(["pixel", "unlearning"])
    by = {m: [c for c in cells if c.method == m] for m in ("pixel", "unlearning")}
    assert len(by["pixel"]) == 12
    assert len(by["unlearning"]) == 3 and all("bam1" in c.params["concept"] for c in by["unlearning"])


def test_selection_is_seeded_and_stable(abc_root):
    a = _bench(abc_root, models_per_split=1).concept_specs()
    b = _bench(abc_root, models_per_split=1).concept_specs()
    assert a == b and len(a) == 2
    q = [s["queries"] for s in _bench(abc_root, queries_per_model=10).concept_specs()]
    assert q == [4, 4, 4, 4]  # only 4 synthesized images per model exist
