"""AbC-tuned baselines: identity-initialised mappers, contrastive training on training concepts only.

Synthetic concepts: each concept is a random smooth image; its exemplars are noisy copies, its synthesized images
carry in addition one strong "style" pattern shared by every concept (the customized model's systematic shift).
With untuned features the shared pattern dominates and retrieval is poor; a linear mapper can learn to discount it,
and because the shift is shared the mapping transfers to held-out concepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError


def _concepts(n, seed=0, exemplars=2, synthesized=3, r=8):
    g = torch.Generator().manual_seed(seed)
    style = torch.zeros(3, r, r)
    style[:, ::2, :] = 0.6
    style[1] *= -1
    out = []
    for k in range(n):
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 3, 3, generator=g) * 0.6 - 0.3, size=(r, r),
                                               mode="bilinear", align_corners=False)[0]
        ex = base[None] + 0.03 * torch.randn(exemplars, 3, r, r, generator=g)
        syn = base[None] + style[None] * (0.8 + 0.4 * torch.rand(synthesized, 1, 1, 1, generator=g)) \
            + 0.03 * torch.randn(synthesized, 3, r, r, generator=g)
        out.append({"id": f"c{seed}-{k}", "exemplars": ex.clamp(-1, 1), "synthesized": syn.clamp(-1, 1)})
    return out


def _pool(concepts):
    ids, imgs, caps = [], [], []
    for c in concepts:
        for j, e in enumerate(c["exemplars"]):
            ids.append(f"{c['id']}/e{j}")
            imgs.append(e)
            caps.append((f"exemplar of {c['id']}",))
    return InMemoryDataset("pool", "1", ids, torch.stack(imgs), caps)


def _hit_rate(method, ctx, concepts):
    """Mean fraction of a query's own exemplars in its top-E (E = exemplars per concept) over the pool."""
    queries, owners = [], []
    for k, c in enumerate(concepts):
        for j, s in enumerate(c["synthesized"]):
            queries.append(Query(f"{c['id']}/s{j}", s, "a <v*>"))
            owners.append(k)
    scores = method.attribute(ctx, queries)
    e = concepts[0]["exemplars"].shape[0]
    own = np.repeat(np.arange(len(concepts)), e)
    top = np.argsort(-scores, axis=1)[:, :e]
    return float(np.mean([(own[t] == o).mean() for t, o in zip(top, owners)]))


def test_mappers_start_at_identity_and_training_lowers_the_loss():
    from genattr.plugins.encoders import get_encoder
    from genattr.plugins.methods.abc_tuned import (apply_mapper, concept_features, contrastive_loss,
                                                   identity_mappers, train_mappers)

    enc = get_encoder("pixels:8")
    feats = concept_features(enc, _concepts(10))
    d = feats[0].shape[1]
    ident = identity_mappers(d)
    assert torch.equal(ident["real.weight"], torch.eye(d)) and torch.equal(ident["synthesized.bias"], torch.zeros(d))
    assert torch.allclose(apply_mapper(ident, "real", feats[2]), feats[2], atol=1e-6)  # features are normalised
    state, hist = train_mappers(*feats, steps=150, lr=3e-3, temperature=0.1)
    assert hist["initial_loss"] == pytest.approx(float(contrastive_loss(ident, *feats, temperature=0.1)), rel=1e-5)
    assert hist["final_loss"] < 0.5 * hist["initial_loss"]
    again, _ = train_mappers(*feats, steps=150, lr=3e-3, temperature=0.1)
    assert all(torch.equal(state[k], again[k]) for k in state)  # seeded: reproducible


def test_abc_training_improves_held_out_concept_retrieval(tmp_path):
    from genattr.plugins.methods.abc_tuned import AbcClipMethod
    from genattr.plugins.methods.features import BuiltinFeatureMethod

    train_concepts = _concepts(12, seed=1)
    held_out = _concepts(8, seed=2)
    pool = _pool(held_out)
    ctx = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "cache"),
                             extra={"training_concepts": train_concepts})
    untuned = AbcClipMethod(backbone="pixels:8", steps=0)
    tuned = AbcClipMethod(backbone="pixels:8", steps=200, lr=3e-3, temperature=0.1)
    base = _hit_rate(untuned, ctx, held_out)
    # zero steps = identity mappers = plain feature similarity with the same backbone
    plain = BuiltinFeatureMethod(encoder="pixels:8")
    q = [Query("x", held_out[0]["synthesized"][0], "p")]
    assert np.allclose(untuned.attribute(ctx, q), plain.attribute(ctx, q), atol=1e-6)
    after = _hit_rate(tuned, ctx, held_out)
    assert after > base + 0.2 and after >= 0.8, (base, after)
    info = tuned.training_info
    assert info["final_loss"] < info["initial_loss"]
    assert info["training_concepts"] == [c["id"] for c in train_concepts]
    # cached: a fresh instance loads the same mappers instead of training
    files = list((tmp_path / "cache" / "methods" / "abc-mappers").rglob("tensors.safetensors"))
    assert len(files) == 2
    again = AbcClipMethod(backbone="pixels:8", steps=200, lr=3e-3, temperature=0.1)
    assert np.allclose(again.attribute(ctx, q), tuned.attribute(ctx, q))
    # candidates subset equals the full scores at those indices
    full = tuned.attribute(ctx, q)
    assert np.allclose(tuned.attribute(ctx, q, candidates=[5, 1]), full[:, [5, 1]])


def test_abc_requires_training_concepts(tmp_path):
    from genattr.plugins.methods.abc_tuned import AbcDinoMethod

    pool = _pool(_concepts(2))
    ctx = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "cache"))
    with pytest.raises(UserError, match="training_concepts"):
        AbcDinoMethod(backbone="pixels:8").prepare(ctx)
    ctx.extra = {"training_concepts": _concepts(1)}
    with pytest.raises(UserError, match="at least 2"):
        AbcDinoMethod(backbone="pixels:8").prepare(ctx)


def test_abc_backbone_defaults():
    from genattr.plugins.methods.abc_tuned import AbcClipMethod, AbcDinoMethod

    def ctx(name):
        ds = InMemoryDataset(name, "1", ["a"], torch.zeros(1, 1, 8, 8), [("x",)])
        return AttributionContext(model=None, train_set=ds, cache=None)

    assert AbcClipMethod().backbone_spec(ctx("shapes")) == "builtin:shapes"
    assert AbcDinoMethod().backbone_spec(ctx("digits")) == "builtin:digits"
    assert AbcClipMethod().backbone_spec(ctx("abc")) == "clip:openai/clip-vit-base-patch32"
    assert AbcDinoMethod().backbone_spec(ctx("mscoco")) == "dino:facebook/dino-vitb16"
    assert AbcClipMethod(backbone="clip:/x").backbone_spec(ctx("shapes")) == "clip:/x"
    import genattr

    genattr.load_plugins()
    for name in ("abc-clip", "abc-dino"):
        m = genattr.get_method(name, backbone="builtin:shapes")
        assert m.name == name and m.version == "1" and m.needs_model is False
        assert m.config["backbone"] == "builtin:shapes"


def test_abc_mappers_file_round_trip_serves_another_pool(tmp_path):
    """save_mappers writes what training produced; mappers=FILE scores without training concepts, identically."""
    from genattr.plugins.methods.abc_tuned import AbcClipMethod, AbcDinoMethod

    train_concepts = _concepts(12, seed=1)
    held_out = _concepts(8, seed=2)
    pool = _pool(held_out)
    out = tmp_path / "out" / "mappers.safetensors"
    ctx = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "cache"),
                             extra={"training_concepts": train_concepts})
    tuned = AbcClipMethod(backbone="pixels:8", steps=100, lr=3e-3, temperature=0.1, save_mappers=str(out))
    assert "save_mappers" not in tuned.config  # an output path changes no score
    q = [Query(f"q{j}", held_out[j]["synthesized"][0], "p") for j in range(3)]
    want = tuned.attribute(ctx, q)
    assert out.is_file()
    bare = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "cache2"))  # no training concepts
    loaded = AbcClipMethod(backbone="pixels:8", mappers=str(out))
    assert len(loaded.config["mappers_sha256"]) == 64 and "mappers" not in loaded.config  # content, not location
    assert loaded.mappers_path == str(out.resolve())
    assert np.allclose(loaded.attribute(bare, q), want, atol=1e-6)
    assert loaded.training_info["training_concepts"] == [c["id"] for c in train_concepts]
    # identity mappers would score differently: the file really carries the trained weights
    assert not np.allclose(AbcClipMethod(backbone="pixels:8", steps=0).attribute(ctx, q), want, atol=1e-4)
    # another family's method may use the same file (the backbone is what must match)
    assert np.allclose(AbcDinoMethod(backbone="pixels:8", mappers=str(out)).attribute(bare, q), want, atol=1e-6)


def test_abc_mappers_file_errors(tmp_path):
    from genattr.plugins.methods.abc_tuned import AbcClipMethod

    pool = _pool(_concepts(2))
    with pytest.raises(UserError, match="not found"):
        AbcClipMethod(mappers=str(tmp_path / "nope.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    bare = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "cache"))
    with pytest.raises(UserError, match="cannot read mappers file"):
        AbcClipMethod(backbone="pixels:8", mappers=str(junk)).prepare(bare)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not an AbC mappers file"):
        AbcClipMethod(backbone="pixels:8", mappers=str(foreign)).prepare(bare)
    # trained on pixels:8, used with pixels:4: refused, naming the setting
    out = tmp_path / "m.safetensors"
    ctx = AttributionContext(model=None, train_set=pool, cache=Cache(tmp_path / "cache"),
                             extra={"training_concepts": _concepts(3, seed=4)})
    AbcClipMethod(backbone="pixels:8", steps=5, save_mappers=str(out)).prepare(ctx)
    with pytest.raises(UserError, match=r"trained on backbone .*abc-clip\.backbone"):
        AbcClipMethod(backbone="pixels:4", mappers=str(out)).prepare(bare)
    # without a file or training concepts the error says how to get one
    with pytest.raises(UserError, match=r"abc-clip\.mappers=FILE"):
        AbcClipMethod(backbone="pixels:8").prepare(bare)
