"""Model-free baselines: random, pixel, the shared encoders and the feature-similarity methods.

The transformers code paths run on tiny randomly initialised CLIP / ViT (DINO) / DINOv2-with-registers models saved
with ``save_pretrained`` into a temporary directory (no hub)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genattr.harness.api import AttributionContext, Query
from genattr.harness.cache import Cache
from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError


# ------------------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------------------
def _images(n, c=3, r=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images (blobs) so that resizing keeps them recognisable
    low = torch.rand(n, c, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(r, r), mode="bilinear", align_corners=False)


def _dataset(n=24, c=3, r=16, name="toy", seed=0, captions=None):
    ids = [f"item-{k:03d}" for k in range(n)]
    caps = captions or [(f"picture number {k}", f"image {k}") for k in range(n)]
    return InMemoryDataset(name, "1", ids, _images(n, c, r, seed), caps)


def _ctx(ds, tmp_path, seed=0, **extra):
    return AttributionContext(model=None, train_set=ds, cache=Cache(tmp_path / "cache"), seed=seed, extra=extra)


def _queries(images, prompts=None):
    prompts = prompts or [f"prompt {k}" for k in range(len(images))]
    return [Query(f"q{k}", im, p) for k, (im, p) in enumerate(zip(images, prompts))]


def _bytes_to_unicode():
    """The byte-level BPE alphabet (GPT-2 / CLIP): printable bytes map to themselves, the rest to 256+."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Directories with tiny random CLIP (model + tokenizer + image processor), ViT (DINO) and DINOv2 models."""
    from transformers import (CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersModel, ViTConfig, ViTModel)

    root = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    # CLIP: a byte-level vocabulary without merges (every character is a token)
    clip = root / "clip"
    clip.mkdir()
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (clip / "vocab.json").write_text(json.dumps(vocab))
    (clip / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(str(clip))
    eos = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(str(clip))
    tok.save_pretrained(str(clip))
    (clip / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    # DINO: a ViT
    dino = root / "dino"
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(str(dino))
    (dino / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
        "resample": 2, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    # DINOv2 with registers (no processor config: the family defaults apply)
    dinov2 = root / "dinov2"
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
        num_register_tokens=2)).save_pretrained(str(dinov2))
    return {"clip": str(clip), "dino": str(dino), "dinov2": str(dinov2)}


# ------------------------------------------------------------------------------------------------------------------
# random
# ------------------------------------------------------------------------------------------------------------------
def test_random_is_seeded_reproducible_and_batch_independent(tmp_path):
    from genattr.plugins.methods.baselines import RandomMethod

    ds = _dataset(30)
    qs = _queries(_images(3, seed=5))
    m = RandomMethod()
    a = m.attribute(_ctx(ds, tmp_path, seed=1), qs)
    assert a.shape == (3, 30)
    assert np.array_equal(a, RandomMethod().attribute(_ctx(ds, tmp_path, seed=1), qs))
    assert not np.allclose(a, m.attribute(_ctx(ds, tmp_path, seed=2), qs))
    assert not np.allclose(a[0], a[1])  # different queries, different rankings
    # one query alone gets the same scores as inside a batch
    assert np.array_equal(m.attribute(_ctx(ds, tmp_path, seed=1), qs[2:]), a[2:])
    # candidates: the full scores at those indices
    cand = [29, 3, 7]
    assert np.array_equal(m.attribute(_ctx(ds, tmp_path, seed=1), qs, candidates=cand), a[:, cand])
    assert ((a >= 0) & (a < 1)).all()


def test_random_method_seed_replaces_the_run_seed_and_enters_the_config_only_when_given(tmp_path):
    import genattr
    from genattr.harness.errors import UserError
    from genattr.plugins.methods.baselines import RandomMethod

    ds = _dataset(30)
    qs = _queries(_images(3, seed=5))
    default = RandomMethod()
    assert default.config == {"salt": ""}  # the default configuration (and its hash) is unchanged
    seeded = genattr.get_method("random", seed=10)
    assert seeded.config == {"salt": "", "seed": 10}
    a = seeded.attribute(_ctx(ds, tmp_path, seed=1), qs)
    # the option replaces the run seed: same draws under any run seed, equal to the default method at run seed 10
    assert np.array_equal(a, seeded.attribute(_ctx(ds, tmp_path, seed=2), qs))
    assert np.array_equal(a, default.attribute(_ctx(ds, tmp_path, seed=10), qs))
    assert not np.allclose(a, default.attribute(_ctx(ds, tmp_path, seed=1), qs))
    for bad in ("10", 1.5, True):
        with pytest.raises(UserError, match="option 'seed' must be an integer or null"):
            RandomMethod(seed=bad)


# ------------------------------------------------------------------------------------------------------------------
# pixel
# ------------------------------------------------------------------------------------------------------------------
def test_pixel_ranks_exact_and_flipped_copies_first(tmp_path):
    from genattr.plugins.methods.baselines import PixelMethod

    ds = _dataset(40, seed=1)
    imgs = ds.images()
    qs = _queries([imgs[7], torch.flip(imgs[12], dims=[-1]), imgs[33] * 0.5 + 0.1])
    s = PixelMethod().attribute(_ctx(ds, tmp_path), qs)
    assert s.shape == (3, 40)
    assert list(s.argmax(axis=1)) == [7, 12, 33]
    assert s[0, 7] == pytest.approx(1.0) and s[1, 12] == pytest.approx(1.0)
    # without the flip, the mirrored copy is no longer a perfect match
    s_noflip = PixelMethod(flip=False).attribute(_ctx(ds, tmp_path), qs)
    assert s_noflip[1, 12] < 0.999
    assert np.allclose(s[0], np.maximum(s_noflip[0], s[0]))


def test_pixel_resizes_queries_and_converts_channels(tmp_path):
    from genattr.plugins.methods.baselines import PixelMethod

    ds = _dataset(20, c=1, r=8, seed=2)
    big = torch.nn.functional.interpolate(ds.images([5]), size=(32, 32), mode="bilinear", align_corners=False)
    qs = _queries([big[0].expand(3, -1, -1).clone()])
    s = PixelMethod().attribute(_ctx(ds, tmp_path), qs)
    assert s.shape == (1, 20) and s[0].argmax() == 5


def test_pixel_candidates_and_pool_permutation(tmp_path):
    from genattr.plugins.methods.baselines import PixelMethod

    ds = _dataset(25, seed=3)
    qs = _queries(_images(2, seed=9))
    m = PixelMethod(batch_size=7)
    full = m.attribute(_ctx(ds, tmp_path), qs)
    cand = [24, 0, 11, 11]
    assert np.allclose(m.attribute(_ctx(ds, tmp_path), qs, candidates=cand), full[:, cand])
    perm = list(np.random.default_rng(0).permutation(25))
    sub = ds.subset([ds.ids[i] for i in perm])
    assert np.allclose(m.attribute(_ctx(sub, tmp_path), qs), full[:, perm])
    # batch size does not change the scores
    assert np.allclose(PixelMethod(batch_size=1000).attribute(_ctx(ds, tmp_path), qs), full)


# ------------------------------------------------------------------------------------------------------------------
# encoders
# ------------------------------------------------------------------------------------------------------------------
def test_encoder_specs_and_errors():
    from genattr.plugins.encoders import DEFAULT_MODELS, get_encoder, parse_spec

    assert parse_spec("clip") == ("clip", DEFAULT_MODELS["clip"]) == ("clip", "openai/clip-vit-base-patch32")
    assert parse_spec("dino")[1] == "facebook/dino-vitb16"
    assert parse_spec("dinov2")[1].startswith("facebook/dinov2")
    assert parse_spec("builtin:shapes") == ("builtin", "shapes")
    with pytest.raises(UserError, match="unknown encoder spec"):
        parse_spec("resnet:foo")
    with pytest.raises(UserError, match="builtin:digits"):
        parse_spec("builtin:cifar")
    enc = get_encoder("pixels:8")
    e = enc.embed_images(_images(3, c=1, r=16))
    assert e.shape == (3, 3 * 64)
    assert torch.allclose(e.norm(dim=1), torch.ones(3))


def test_offline_without_weights_is_one_clear_error(monkeypatch, tmp_path):
    from genattr.plugins.encoders import get_encoder
    from genattr.plugins.methods.features import ClipImageMethod

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty local hub cache
    with pytest.raises(UserError) as err:
        get_encoder("clip:openai/clip-vit-base-patch32", setting="clip.model")
    msg = str(err.value)
    assert "\n" not in msg
    assert "openai/clip-vit-base-patch32" in msg and "clip.model" in msg and "unreachable" in msg
    with pytest.raises(UserError, match="does not exist.*dino.model"):
        get_encoder(f"dino:{tmp_path / 'missing'}", setting="dino.model")
    # through a method: the error names the method's own setting
    with pytest.raises(UserError, match="--set clip.model=DIR"):
        ClipImageMethod().prepare(_ctx(_dataset(4), tmp_path))


def test_builtin_encoder_is_deterministic_cached_and_learns_labels(tmp_path):
    from genattr.plugins import encoders

    # two classes that differ in a bright square's position; ids and labels like Digits
    g = torch.Generator().manual_seed(0)
    n = 64
    x = torch.full((n, 1, 12, 12), -1.0) + 0.1 * torch.randn(n, 1, 12, 12, generator=g)
    labels = [k % 2 for k in range(n)]
    for k, lab in enumerate(labels):
        r0 = 1 + (k % 3)
        x[k, 0, r0 : r0 + 4, (1 if lab == 0 else 7) : (5 if lab == 0 else 11)] = 1.0
    ds = InMemoryDataset("digits", "1", [f"d{k}" for k in range(n)], x.clamp(-1, 1), [("a",)] * n)
    ds.labels = labels
    kw = dict(steps=40, dim=16, batch_size=32, resolution=12)
    enc = encoders.get_encoder("builtin:digits", cache=Cache(tmp_path / "c1"), dataset=ds, **kw)
    encoders._MEMO.clear()
    enc2 = encoders.get_encoder("builtin:digits", cache=Cache(tmp_path / "c2"), dataset=ds, **kw)
    assert enc.fingerprint == enc2.fingerprint  # trained twice from scratch: identical weights
    assert list((tmp_path / "c1" / "encoders" / "builtin").rglob("weights.safetensors"))
    e = enc.embed_images(ds.images())
    assert e.shape == (n, 16) and torch.allclose(e.norm(dim=1), torch.ones(n), atol=1e-5)
    s = e @ e.T
    s.fill_diagonal_(-2)
    nn = s.argmax(dim=1)
    assert (torch.tensor(labels)[nn] == torch.tensor(labels)).float().mean() > 0.9
    other = encoders.get_encoder("builtin:digits", cache=Cache(tmp_path / "c1"), dataset=ds, **{**kw, "seed": 1})
    assert other.fingerprint != enc.fingerprint


def test_training_targets_from_specs_and_captions():
    from genattr.plugins.encoders import training_targets

    ds = _dataset(3, captions=[("a red circle",), ("a blue circle",), ("a red square",)])
    kind, toks = training_targets(ds)
    assert kind == "captions" and "red" in toks[0] and "circle" in toks[0] and "blue" not in toks[0]
    ds.specs = [[{"shape": "circle", "color": "red"}], [{"shape": "circle", "color": "blue"}, {"shape": "square",
                                                                                                  "color": "red"}], []]
    kind, toks = training_targets(ds)
    assert kind == "specs"
    assert "color=red&shape=circle" in toks[0] and "shape=circle" in toks[0]
    assert "color=red&shape=square" in toks[1] and "color=blue&shape=circle" in toks[1]


@pytest.mark.parametrize("family", ["clip", "dino", "dinov2"])
def test_transformers_encoders_on_tiny_models(tiny_models, family):
    from genattr.plugins.encoders import get_encoder

    enc = get_encoder(f"{family}:{tiny_models[family]}")
    assert enc.dim == (16 if family == "clip" else 32)
    x = _images(5, c=3, r=24, seed=4)
    e = enc.embed_images(x)
    assert e.shape == (5, enc.dim) and torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    # batch-size independent, grey images accepted
    assert torch.allclose(enc.embed_images(x, batch_size=2), e, atol=1e-5)
    assert enc.embed_images(x[:, :1]).shape == (5, enc.dim)
    assert len(enc.fingerprint) == 64 and enc.id == enc.fingerprint
    if family == "clip":
        t = enc.embed_texts(["a red circle", "a <v*> in the style of stripes", "a red circle"])
        assert t.shape == (3, 16) and torch.allclose(t[0], t[2]) and not torch.allclose(t[0], t[1])
    else:
        with pytest.raises(UserError, match="no text tower"):
            enc.embed_texts(["x"])


def test_clip_preprocessing_follows_the_processor_config(tiny_models):
    from genattr.plugins.encoders import get_encoder

    enc = get_encoder(f"clip:{tiny_models['clip']}")
    pv = enc.preprocess(torch.zeros(1, 3, 48, 64))  # grey 0.5 → (0.5 - mean) / std, resized + cropped to 32
    assert pv.shape == (1, 3, 32, 32)
    expect = (0.5 - torch.tensor(enc.image_mean)) / torch.tensor(enc.image_std)
    assert torch.allclose(pv[0, :, 5, 5], expect, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# feature methods
# ------------------------------------------------------------------------------------------------------------------
def _method(family, tiny_models):
    from genattr.plugins.methods import features

    cls = {"clip": features.ClipImageMethod, "dino": features.DinoMethod, "dinov2": features.Dinov2Method}[family]
    return cls(model=tiny_models[family], batch_size=8)


@pytest.mark.parametrize("family", ["clip", "dino", "dinov2"])
def test_feature_methods_one_score_per_pool_item_in_order(tiny_models, family, tmp_path):
    ds = _dataset(20, seed=6)
    imgs = ds.images()
    qs = _queries([imgs[4], imgs[17], _images(1, seed=11)[0]])
    m = _method(family, tiny_models)
    assert m.needs_model is False and m.version == "1"
    ctx = _ctx(ds, tmp_path)
    m.prepare(ctx)
    s = m.attribute(ctx, qs)
    assert s.shape == (3, 20) and np.isfinite(s).all()
    assert s[0].argmax() == 4 and s[1].argmax() == 17
    assert s[0, 4] == pytest.approx(1.0, abs=1e-5)
    # permuting the pool permutes the scores
    perm = list(np.random.default_rng(1).permutation(20))
    sub = ds.subset([ds.ids[i] for i in perm])
    assert np.allclose(_method(family, tiny_models).attribute(_ctx(sub, tmp_path), qs), s[:, perm], atol=1e-6)
    # candidates: the full scores at those indices
    cand = [19, 2, 4]
    assert np.allclose(m.attribute(ctx, qs, candidates=cand), s[:, cand])
    # the training embeddings were cached
    assert list((tmp_path / "cache" / "features").rglob("tensors.safetensors"))


def test_clip_text_matches_captions(tiny_models, tmp_path):
    from genattr.plugins.methods.features import ClipTextMethod

    caps = [(f"a photo of item {k}",) for k in range(12)]
    caps[5] = ("a red circle at the top", "a red circle at the top")
    ds = _dataset(12, captions=caps)
    m = ClipTextMethod(model=tiny_models["clip"])
    ctx = _ctx(ds, tmp_path)
    qs = _queries(_images(2), prompts=["a red circle at the top", "a photo of item 9"])
    s = m.attribute(ctx, qs)
    assert s.shape == (2, 12)
    assert s[0].argmax() == 5 and s[0, 5] == pytest.approx(1.0, abs=1e-5)
    assert s[1].argmax() == 9
    assert np.allclose(m.attribute(ctx, qs, candidates=[9, 5]), s[:, [9, 5]])


def test_builtin_feature_method_chooses_encoder_from_dataset_name(tmp_path):
    from genattr.plugins.methods.features import BuiltinFeatureMethod

    ds = _dataset(30, c=1, r=8, name="digits", seed=7)
    ds.labels = [k % 3 for k in range(30)]
    m = BuiltinFeatureMethod(encoder_options={"steps": 10, "dim": 8})
    ctx = _ctx(ds, tmp_path)
    s = m.attribute(ctx, _queries(ds.images([3, 21])))
    assert s.shape == (2, 30) and list(s.argmax(axis=1)) == [3, 21]
    assert m._state[1].name == "builtin:digits"
    with pytest.raises(UserError, match="features.encoder"):
        BuiltinFeatureMethod().prepare(_ctx(_dataset(4, name="mscoco"), tmp_path))
    # an explicit encoder spec works for any dataset
    s2 = BuiltinFeatureMethod(encoder="pixels:8").attribute(_ctx(_dataset(6, name="mscoco"), tmp_path),
                                                           _queries(_dataset(6).images([2])))
    assert s2.shape == (1, 6) and s2[0].argmax() == 2


def test_registered_factories_build_the_classes():
    import genattr

    genattr.load_plugins()
    for name, cls in [("random", "RandomMethod"), ("pixel", "PixelMethod"), ("features", "BuiltinFeatureMethod"),
                      ("clip", "ClipImageMethod"), ("clip-text", "ClipTextMethod"), ("dino", "DinoMethod"),
                      ("dinov2", "Dinov2Method")]:
        m = genattr.get_method(name)
        assert type(m).__name__ == cls and m.name == name and m.version == "1" and m.needs_model is False
        json.dumps(m.config)


def test_builtin_encoder_ignores_a_dataset_of_another_kind(monkeypatch, tmp_path):
    """builtin:shapes given a digits training set trains on shapes (its default data), not on the digits."""
    from genattr.plugins import encoders

    seen = []
    monkeypatch.setattr(encoders, "_builtin_encoder", lambda which, cache, device, dataset, options:
                        seen.append((which, dataset)) or object())
    digits = InMemoryDataset("digits", "1", ["a"], torch.zeros(1, 1, 8, 8), [("x",)])
    digits.labels = [0]
    encoders._MEMO.clear()
    encoders.get_encoder("builtin:shapes", cache=Cache(tmp_path), dataset=digits)
    encoders.get_encoder("builtin:digits", cache=Cache(tmp_path), dataset=digits)
    encoders._MEMO.clear()
    assert seen == [("shapes", None), ("digits", digits)]
