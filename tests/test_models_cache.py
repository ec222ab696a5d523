"""Tests of the model cache: a second call loads instead of training; corrupted entries are recomputed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from genattr.harness.cache import Cache  # noqa: E402
from genattr.harness.data import InMemoryDataset  # noqa: E402
from genattr.harness import models as model_cache  # noqa: E402
from genattr.plugins.models.recipes import TINY_ARCH  # noqa: E402
from genattr.plugins.models.tiny_t2i import TinyT2I  # noqa: E402

TRAIN = {"steps": 2, "batch_size": 4, "lr": 1e-3}


def make_dataset(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = [(f"digit {w}",) for w in ("one", "two")]
    return InMemoryDataset("syn", "1", [f"s{i}" for i in range(n)], torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
                           [caps[i % 2] for i in range(n)])


def weights(m):
    return {k: v.clone() for k, v in m.unet.state_dict().items()}


def test_load_or_train_stores_and_reloads(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    ds = make_dataset()
    m1 = model_cache.load_or_train(cache, ds, TINY_ARCH, TRAIN, seed=0)
    assert isinstance(m1, TinyT2I)

    def boom(*a, **k):
        raise AssertionError("trained although cached")

    monkeypatch.setattr(TinyT2I, "train", boom)
    m2 = model_cache.load_or_train(cache, ds, TINY_ARCH, TRAIN, seed=0)
    assert m2.fingerprint == m1.fingerprint
    monkeypatch.undo()
    # anything that changes the answer changes the key
    keys = {model_cache.train_key(ds, TINY_ARCH, TRAIN, 0),
            model_cache.train_key(ds, TINY_ARCH, TRAIN, 1),
            model_cache.train_key(ds, TINY_ARCH, {**TRAIN, "steps": 3}, 0),
            model_cache.train_key(ds, {**TINY_ARCH, "text_layers": 2}, TRAIN, 0),
            model_cache.train_key(make_dataset(seed=1), TINY_ARCH, TRAIN, 0)}
    assert len(keys) == 5
    assert model_cache.train_key(ds, TINY_ARCH, {**TRAIN, "progress": True}, 0) in keys


def test_corrupted_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    ds = make_dataset()
    m1 = model_cache.load_or_train(cache, ds, TINY_ARCH, TRAIN, seed=0)
    key = model_cache.train_key(ds, TINY_ARCH, TRAIN, 0)
    entry = cache.path(model_cache.NS_TRAINED, key)
    f = entry / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    m2 = model_cache.load_or_train(cache, ds, TINY_ARCH, TRAIN, seed=0)
    assert m2.fingerprint == m1.fingerprint
    assert cache.lookup(model_cache.NS_TRAINED, key) is not None


def test_load_or_customize(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    ds = make_dataset()
    base = model_cache.load_or_train(cache, ds, TINY_ARCH, TRAIN, seed=0)
    ex = ds.subset(["s0"])
    cfg = {"steps": 2, "batch_size": 2, "reg_dataset": ds, "reg_weight": 0.5}
    c1 = model_cache.load_or_customize(cache, base, ex, "<v*>", cfg, seed=0)
    assert len(c1.token_ids("<v*>")) == 1 and c1.fingerprint != base.fingerprint
    calls = []
    orig = TinyT2I.customize
    monkeypatch.setattr(TinyT2I, "customize", lambda *a, **k: calls.append(1) or orig(*a, **k))
    c2 = model_cache.load_or_customize(cache, base, ex, "<v*>", cfg, seed=0)
    assert not calls and c2.fingerprint == c1.fingerprint
    c3 = model_cache.load_or_customize(cache, base, ex, "<v*>", cfg, seed=1)
    assert calls and c3.fingerprint != c1.fingerprint
    # the stored entry is a delta: only the changed tensors
    key = model_cache.customize_key(base, ex, "<v*>", cfg, 0)
    delta = cache.path(model_cache.NS_CUSTOMIZED, key) / "delta"
    assert (delta / "delta.safetensors").is_file() and not (delta / "unet").exists()
