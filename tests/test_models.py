"""Tests of the tiny text-to-image model (tiny scale: 8 px, micro architecture, a few training steps)."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from genattr.harness.data import InMemoryDataset  # noqa: E402
from genattr.harness.errors import UserError  # noqa: E402
from genattr.plugins.models.recipes import TINY_ARCH, recipe, recipe_customize  # noqa: E402
from genattr.plugins.models.tiny_t2i import TinyT2I  # noqa: E402

WORDS = ["zero", "one", "two", "three"]


def make_dataset(n=24, channels=1, res=8, seed=0, name="synthetic"):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, res, res, generator=g) * 2 - 1
    captions = [(f"digit {WORDS[i % 4]}", f"a small {WORDS[i % 4]} on the left") for i in range(n)]
    return InMemoryDataset(name, "1", [f"img{i}" for i in range(n)], images, captions)


def state(model):
    return {**{"unet." + k: v.clone() for k, v in model.unet.state_dict().items()},
            **{"te." + k: v.clone() for k, v in model.text_encoder.state_dict().items()}}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TRAIN = {"steps": 4, "batch_size": 8, "lr": 2e-3, "seed": 0, "flip": True}


@pytest.fixture(scope="module")
def data():
    return make_dataset()


@pytest.fixture(scope="module")
def trained(data):
    m = TinyT2I.for_dataset(data, **TINY_ARCH)
    report = m.train(data, TRAIN)
    return m, report


def test_same_seed_same_weights_and_losses(data, trained):
    m1, r1 = trained
    m2 = TinyT2I.for_dataset(data, **TINY_ARCH)
    r2 = m2.train(data, TRAIN)
    assert r1["losses"] == r2["losses"]
    assert same_state(state(m1), state(m2))
    assert m1.fingerprint == m2.fingerprint
    m3 = TinyT2I.for_dataset(data, **TINY_ARCH)
    r3 = m3.train(data, {**TRAIN, "seed": 1})
    assert r3["losses"] != r1["losses"]
    assert not same_state(state(m1), state(m3))
    assert m3.fingerprint != m1.fingerprint


def test_zero_item_weights_train_without_the_items_on_the_same_batches(data, trained):
    """Coupled retraining: items of weight 0 contribute nothing (their pixels and captions can be anything), every
    other random draw is the full set's, and excluding something changes the weights."""
    m_full, _ = trained
    gone = ["img3", "img10"]
    a = TinyT2I.for_dataset(data, **TINY_ARCH)
    a.train(data, {**TRAIN, "item_weights": {i: 0 for i in gone}})
    # the same set with the excluded items' content replaced: identical training
    images = data.images(list(range(len(data)))).clone()
    caps = [tuple(data.captions(i)) for i in range(len(data))]
    for k in (3, 10):
        images[k] = -images[k]
        caps[k] = ("digit zero",)
    other = InMemoryDataset("synthetic", "1", list(data.ids), images, caps)
    b = TinyT2I.for_dataset(data, **TINY_ARCH)
    b.train(other, {**TRAIN, "item_weights": {i: 0.0 for i in gone}})
    sa, sb = state(a), state(b)
    assert all(torch.allclose(sa[k], sb[k], rtol=0, atol=1e-7) for k in sa)
    assert not same_state(sa, state(m_full))
    c = TinyT2I.for_dataset(data, **TINY_ARCH)
    c.train(data, {**TRAIN, "item_weights": {}})
    assert same_state(state(c), state(m_full))
    d = TinyT2I.for_dataset(data, **TINY_ARCH)
    d.train(data, {**TRAIN, "item_weights": {"img3": 1.0}})  # weight 1 is the default
    assert same_state(state(d), state(m_full))
    with pytest.raises(UserError, match="not in the training set"):
        TinyT2I.for_dataset(data, **TINY_ARCH).train(data, {**TRAIN, "item_weights": {"nope": 0}})
    with pytest.raises(UserError, match="finite and >= 0"):
        TinyT2I.for_dataset(data, **TINY_ARCH).train(data, {**TRAIN, "item_weights": {"img3": -1}})
    with pytest.raises(UserError, match="leaves no training item"):
        TinyT2I.for_dataset(data, **TINY_ARCH).train(data, {**TRAIN, "item_weights": {i: 0 for i in data.ids}})


def test_training_reduces_loss(data):
    m = TinyT2I.for_dataset(data, **TINY_ARCH)
    r = m.train(data, {"steps": 30, "batch_size": 8, "lr": 3e-3, "seed": 0})
    assert sum(r["losses"][-5:]) / 5 < sum(r["losses"][:5]) / 5


def test_save_load_round_trip_exact(tmp_path, data, trained):
    m, _ = trained
    m.save(str(tmp_path / "m"))
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "m" / "text_encoder" / "model.safetensors").is_file()
    back = TinyT2I.load(str(tmp_path / "m"))
    assert same_state(state(m), state(back))
    assert back.fingerprint == m.fingerprint
    caps = ["digit two", "a small three on the left"]
    assert torch.equal(back.tokenize(caps), m.tokenize(caps))
    x, noise = data.images([0, 1]), torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(m.loss(x, caps, t, noise), back.loss(x, caps, t, noise))


def test_loss_shapes_and_values(data, trained):
    m, _ = trained
    x = data.images(list(range(5)))
    noise = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 100, 500, 900, 999])
    with torch.no_grad():
        loss = m.loss(x, ["digit one"] * 5, t, noise)
        eps = m.denoise_loss(m.latents(x), m.text_embeddings(["digit one"] * 5), t, noise, target="eps-sq-norm")
    assert loss.shape == (5,) and eps.shape == (5,)
    assert torch.isfinite(loss).all() and (loss > 0).all() and (eps > 0).all()
    # the loss depends on the caption (cross-attention is wired in)
    with torch.no_grad():
        other = m.loss(x, ["a small zero on the left"] * 5, t, noise)
    assert not torch.allclose(loss, other)


def test_mask_restricts_loss(data, trained):
    m, _ = trained
    x = data.images([0, 1])
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([200, 600])
    caps = ["digit one", "digit two"]
    mask = torch.zeros(2, 8, 8)
    mask[:, :, :4] = 1
    with torch.no_grad():
        emb = m.text_embeddings(caps)
        pred = m.unet_forward(m.add_noise(x, noise, t), t, emb)
        err = (pred - noise) ** 2
        full = m.loss(x, caps, t, noise)
        left = m.loss(x, caps, t, noise, mask=mask)
        ones = m.loss(x, caps, t, noise, mask=torch.ones(2, 8, 8))
    assert torch.allclose(full, err.flatten(1).mean(1), atol=1e-6)
    assert torch.allclose(left, err[..., :4].flatten(1).mean(1), atol=1e-6)
    assert torch.allclose(ones, full, atol=1e-6)
    assert not torch.allclose(left, full)


def test_parameter_selections_are_sd_named(trained):
    m, _ = trained
    all_names = {n for n, _ in m.unet.named_parameters()}
    kv = m.parameters("cross-attn-kv")
    blocks = {n.rsplit(".attn2.", 1)[0] for n in all_names if ".attn2." in n}
    assert blocks, "the UNet has cross-attention"
    assert set(kv) == {f"{b}.attn2.{w}.weight" for b in blocks for w in ("to_k", "to_v")}
    assert all(isinstance(p, torch.nn.Parameter) for p in kv.values())
    ca = m.parameters("cross-attn")
    assert set(ca) == {n for n in all_names if ".attn2." in n} and set(kv) < set(ca)
    assert any(n.endswith("attn2.to_q.weight") for n in ca) and any("attn2.to_out" in n for n in ca)
    attn = m.parameters("attn")
    assert set(attn) == {n for n in all_names if ".attn1." in n or ".attn2." in n} and set(ca) < set(attn)
    assert set(m.parameters("full")) == all_names
    # the K/V input dimension is the text encoder's width (cross-attention)
    for n, p in kv.items():
        assert p.shape[1] == m.text_encoder.config.hidden_size, n
    from genattr.harness.errors import UserError

    with pytest.raises(UserError):
        m.parameters("everything")


def test_parameters_are_live(trained):
    m, _ = trained
    name, p = next(iter(m.parameters("cross-attn-kv").items()))
    assert p is dict(m.unet.named_parameters())[name]


def test_multi_token_captions_and_new_token(data, trained):
    m, _ = trained
    ids = m.tokenize(["a small two on the left", "digit two"])
    assert ids.shape == (2, m.arch["max_length"])
    assert (ids[0] > 3).sum() == 6 and (ids[1] > 3).sum() == 2  # every word is its own known token
    c = m.customize(data.subset(["img0"]), "<v*>", {"steps": 1, "batch_size": 2})
    assert len(c.token_ids("<v*>")) == 1
    assert len(c.token_ids("<v*> digit")) == 2
    assert len(m.token_ids("<v*>")) != 1 or m.token_ids("<v*>") == [1]  # unknown in the base model
    with torch.no_grad():
        e1 = c.text_embeddings(["<v*> digit two"])
        e2 = c.text_embeddings(["digit two"])
    assert not torch.allclose(e1, e2)


def test_generate_batch_independent(trained):
    m, _ = trained
    batch = m.generate(["digit one", "digit two", "a small three on the left"], [5, 6, 7], steps=8)
    alone = m.generate(["digit two"], [6], steps=8)
    assert batch.shape == (3, 1, 8, 8) and batch.min() >= -1 and batch.max() <= 1
    assert torch.allclose(batch[1], alone[0], atol=1e-4)
    again = m.generate(["digit one"], [5], steps=8)
    assert torch.allclose(batch[0], again[0], atol=1e-4)
    other_seed = m.generate(["digit two"], [8], steps=8)
    assert not torch.allclose(other_seed[0], alone[0], atol=1e-3)
    guided = m.generate(["digit two"], [6], steps=8, guidance_scale=3.0)
    assert not torch.allclose(guided[0], alone[0], atol=1e-4)


def test_flip_augmentation(data, monkeypatch):
    seen = []
    orig = TinyT2I._batch_latents

    def spy(self, images, flips):
        out = orig(self, images, flips)
        seen.append((images.clone(), flips.clone(), out.clone()))
        return out

    monkeypatch.setattr(TinyT2I, "_batch_latents", spy)
    m = TinyT2I.for_dataset(data, **TINY_ARCH)
    m.train(data, {"steps": 3, "batch_size": 16, "flip": True})
    flips = torch.cat([f for _, f, _ in seen])
    assert 0 < flips.sum() < len(flips)
    for images, f, out in seen:
        assert torch.equal(out[f], images[f].flip(-1)) and torch.equal(out[~f], images[~f])
    seen.clear()
    m.train(data, {"steps": 2, "batch_size": 16, "flip": False})
    assert not any(f.any() for _, f, _ in seen)


def test_customize_changes_only_declared_tensors(data, trained, tmp_path):
    m, _ = trained
    before = state(m)
    ex = data.subset(["img1", "img2"])
    for weights in ("cross-attn-kv", "full"):
        c = m.customize(ex, "<v*>", {"weights": weights, "steps": 3, "batch_size": 2, "lr": 1e-2,
                                     "reg_dataset": data, "reg_weight": 0.5, "reg_batch_size": 2})
        assert same_state(state(m), before), "the base model is untouched"
        declared = set(m.parameters(weights))
        assert set(c.delta_names) == declared
        after = {n: p for n, p in c.unet.named_parameters()}
        for n, p in m.unet.named_parameters():
            assert torch.equal(p, after[n]) == (n not in declared), n
        old = m.text_encoder.get_input_embeddings().weight
        new = c.text_encoder.get_input_embeddings().weight
        assert new.shape[0] == old.shape[0] + 1
        assert torch.equal(new[:-1], old)
        te_old = {k: v for k, v in m.text_encoder.state_dict().items() if "token_embedding" not in k}
        te_new = c.text_encoder.state_dict()
        assert all(torch.equal(v, te_new[k]) for k, v in te_old.items())
        # the delta stores just these tensors and rebuilds the customized model exactly
        c.save_delta(str(tmp_path / weights))
        from safetensors.torch import load_file

        stored = load_file(str(tmp_path / weights / "delta.safetensors"))
        assert set(stored) == {f"unet.{n}" for n in declared} | {"modifier_token.<v*>"}
        back = m.apply_delta(str(tmp_path / weights))
        assert same_state(state(back), state(c))
        assert back.fingerprint == c.fingerprint
        assert back.token_ids("<v*>") == c.token_ids("<v*>")


def test_customize_deterministic(data, trained):
    m, _ = trained
    ex = data.subset(["img1"])
    a = m.customize(ex, "<v*>", {"steps": 2, "batch_size": 2, "seed": 3})
    b = m.customize(ex, "<v*>", {"steps": 2, "batch_size": 2, "seed": 3})
    assert a.fingerprint == b.fingerprint != m.fingerprint


def test_per_sample_gradients_with_vmap(data, trained):
    from torch.func import grad, vmap

    m, _ = trained
    params = {k: v.detach() for k, v in m.parameters("cross-attn-kv").items()}
    x = data.images([0, 1, 2])
    caps = ["digit one", "digit two", "digit three"]
    t = torch.tensor([100, 400, 800])
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = m.text_embeddings(caps)

    def f(p, lat, e, tt, nz):
        return m.denoise_loss(lat[None], e[None], tt[None], nz[None], params=p)[0]

    g = vmap(grad(f), in_dims=(None, 0, 0, 0, 0))(params, x, emb, t, noise)
    for i in range(3):
        gi = torch.autograd.grad(m.denoise_loss(x[i:i + 1], emb[i:i + 1], t[i:i + 1], noise[i:i + 1])[0],
                                 list(m.parameters("cross-attn-kv").values()))
        for (name, gv), ref in zip(g.items(), gi):
            assert torch.allclose(gv[i], ref, atol=1e-5, rtol=1e-4), name


def test_rgb_model(data):
    ds = make_dataset(n=8, channels=3, seed=1)
    m = TinyT2I.for_dataset(ds, **TINY_ARCH)
    m.train(ds, {"steps": 2, "batch_size": 4})
    assert m.generate(["digit one"], [0], steps=3).shape == (1, 3, 8, 8)


def test_recipes():
    from genattr.harness.errors import UserError

    for ds in ("digits", "shapes"):
        for scale in ("tiny", "small"):
            r = recipe(ds, scale)
            assert set(r) == {"model", "train", "dataset"}
            assert r["train"]["steps"] > 0 and r["dataset"]["resolution"] in (8, 16)
        assert recipe(ds, "tiny")["train"]["steps"] < recipe(ds, "small")["train"]["steps"]
    assert recipe_customize("small")["weights"] == "full"
    assert recipe_customize("tiny")["weights"] in ("cross-attn-kv", "full")
    generic = recipe("mnist", "tiny")  # a dataset without a recipe of its own gets the scale's generic one
    assert generic["dataset"] == {} and generic["model"] == recipe("shapes", "tiny")["model"]
    with pytest.raises(UserError):
        recipe("mnist", "huge")
    with pytest.raises(UserError):
        recipe_customize("huge")


def test_registered_lazily():
    code = ("import sys, genattr; genattr.load_plugins(); from genattr.harness.manager import registry; "
            "r = registry('models'); assert {'tiny-t2i', 'diffusers'} <= set(r.names()), r.names(); "
            "assert r.get('tiny-t2i').version == '1'; assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import genattr

    m = genattr.get_model("tiny-t2i", resolution=8, channels=1, vocab=["digit"], **TINY_ARCH)
    assert isinstance(m, TinyT2I) and m.name == "tiny-t2i"
