"""Tests of the ``diffusers`` adapter on a tiny Stable-Diffusion-layout pipeline built locally (no hub access)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from genattr.harness.data import InMemoryDataset  # noqa: E402

WORDS = ["a", "red", "blue", "circle", "square", "photo", "of", "object", "dog"]


def write_clip_tokenizer(folder):
    """A CLIPTokenizer from a locally written byte-level BPE vocabulary (letters + the words as whole tokens)."""
    from genattr.plugins.models.sd_build import clip_tokenizer_files

    return clip_tokenizer_files(folder, WORDS, max_length=12)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    tok = write_clip_tokenizer(root / "_tok")
    tok.save_pretrained(root / "tokenizer")
    UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=8, layers_per_block=1,
    ).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(
        root / "text_encoder")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def model(pipeline_dir):
    from genattr.plugins.models.diffusers_adapter import DiffusersT2I

    return DiffusersT2I(str(pipeline_dir), local_files_only=True)


def dataset(n=6):
    g = torch.Generator().manual_seed(0)
    caps = [("a photo of a red circle",), ("a blue square",), ("a red dog",)]
    return InMemoryDataset("pix", "1", [f"p{i}" for i in range(n)], torch.rand(n, 3, 8, 8, generator=g) * 2 - 1,
                           [caps[i % 3] for i in range(n)])


def test_shapes_and_latents(model):
    assert (model.resolution, model.channels) == (8, 3)
    x = dataset().images([0, 1])
    lat = model.latents(x)
    assert lat.shape == (2, 4, 4, 4)
    with torch.no_grad():
        mean = model.vae.encode(x).latent_dist.mean
    assert torch.allclose(lat, mean * model.vae.config.scaling_factor)
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model.loss(x, ["a red circle", "a blue square"], torch.tensor([10, 900]), noise)
        mask = torch.zeros(2, 8, 8)
        mask[:, :, :4] = 1  # left half of the pixels = left half of the 4×4 latent
        masked = model.loss(x, ["a red circle", "a blue square"], torch.tensor([10, 900]), noise, mask=mask)
        t = torch.tensor([10, 900])
        err = (model.unet_forward(model.add_noise(lat, noise, t), t,
                                  model.text_embeddings(["a red circle", "a blue square"])) - noise) ** 2
    assert loss.shape == (2,) and torch.allclose(loss, err.flatten(1).mean(1), atol=1e-6)
    assert torch.allclose(masked, err[..., :2].flatten(1).mean(1), atol=1e-6)


def test_tokenizer_is_the_pipelines(model):
    ids = model.tokenize(["a red circle"])
    assert ids.shape == (1, 12) and ids[0, 0] == 0


def test_parameters_selection(model):
    kv = model.parameters("cross-attn-kv")
    assert kv and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in kv)
    assert set(model.parameters("full")) == {n for n, _ in model.unet.named_parameters()}


def test_generate_batch_independent(model):
    a = model.generate(["a red circle", "a blue square"], [1, 2], steps=4)
    b = model.generate(["a blue square"], [2], steps=4)
    assert a.shape == (2, 3, 8, 8) and a.abs().max() <= 1
    assert torch.allclose(a[1], b[0], atol=1e-4)


def test_save_load_round_trip(model, tmp_path):
    from genattr.plugins.models.diffusers_adapter import DiffusersT2I

    model.save(str(tmp_path / "copy"))
    assert json.loads((tmp_path / "copy" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    back = DiffusersT2I.load(str(tmp_path / "copy"))
    assert back.fingerprint == model.fingerprint
    for a, b in zip(model.unet.state_dict().values(), back.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_train_deterministic_unet_only(pipeline_dir):
    from genattr.plugins.models.diffusers_adapter import DiffusersT2I

    ds = dataset()
    m1, m2 = DiffusersT2I(str(pipeline_dir)), DiffusersT2I(str(pipeline_dir))
    te = {k: v.clone() for k, v in m1.text_encoder.state_dict().items()}
    r1 = m1.train(ds, {"steps": 2, "batch_size": 3, "lr": 1e-3})
    r2 = m2.train(ds, {"steps": 2, "batch_size": 3, "lr": 1e-3})
    assert r1["losses"] == r2["losses"] and m1.fingerprint == m2.fingerprint
    assert all(torch.equal(v, m1.text_encoder.state_dict()[k]) for k, v in te.items())


def test_customize_and_delta(model, tmp_path):
    ds = dataset()
    c = model.customize(ds.subset(["p0", "p1"]), "<new1>", {"steps": 2, "batch_size": 2, "reg_dataset": ds})
    assert len(c.token_ids("<new1>")) == 1 and len(model.tokenizer) + 1 == len(c.tokenizer)
    declared = set(model.parameters("cross-attn-kv"))
    base = dict(model.unet.named_parameters())
    for n, p in c.unet.named_parameters():
        assert torch.equal(p, base[n]) == (n not in declared), n
    c.save_delta(str(tmp_path / "d"))
    back = model.apply_delta(str(tmp_path / "d"))
    assert back.fingerprint == c.fingerprint


def test_registered(pipeline_dir):
    import genattr

    m = genattr.get_model("diffusers", path=str(pipeline_dir), local_files_only=True)
    assert m.name == "diffusers" and m.resolution == 8


def test_bad_path_is_user_error(tmp_path):
    from genattr.harness.errors import UserError
    from genattr.plugins.models.diffusers_adapter import DiffusersT2I

    with pytest.raises(UserError):
        DiffusersT2I(str(tmp_path / "missing"), local_files_only=True)


def test_custom_diffusion_augment_places_masks_and_captions_as_the_script():
    """Custom Diffusion's resize augmentation: sides in [S/3, S] (≈ 2/3 of draws) or [1.2 S, 1.4 S); a smaller image
    on a zero canvas with the loss mask inside it, shrunk by a latent cell; a larger one cropped with a full mask;
    size words prefixed by the side; every draw from the generator."""
    from genattr.plugins.models.training import custom_diffusion_augment

    s, cells, n = 32, 8, 400
    ones = torch.ones(n, 3, s, s)
    out, masks, caps, sides = custom_diffusion_augment(ones, ["a <v*> object"] * n, torch.Generator().manual_seed(3),
                                                       cells)
    again = custom_diffusion_augment(ones, ["a <v*> object"] * n, torch.Generator().manual_seed(3), cells)
    assert torch.equal(out, again[0]) and torch.equal(masks, again[1]) and caps == again[2]
    small = [x for x in sides if x <= s]
    assert all(s // 3 <= x <= s or int(1.2 * s) <= x < int(1.4 * s) for x in sides)
    assert 0.55 < len(small) / n < 0.77 and min(sides) < 0.6 * s and max(sides) > s
    for img, m, cap, side in zip(out, masks, caps, sides):
        assert cap.endswith("a <v*> object")
        prefix = cap[:-len("a <v*> object")]
        placed = img[0] > 0.5
        assert torch.equal(m, m.reshape(cells, 4, cells, 4).amax(dim=(1, 3)).repeat_interleave(4, 0)
                           .repeat_interleave(4, 1))  # constant on each latent cell
        if side > s:
            assert placed.all() and m.bool().all() and prefix in ("zoomed in ", "close up ")
        else:
            assert int(placed.sum()) in range((side - 2) ** 2, (side + 1) ** 2)  # the resized image, on zeros
            assert not (m.bool() & ~placed).any()  # the loss sees the image only
            assert (img[:, ~placed].abs() < 0.5).all()
            assert prefix in (("a far away ", "very small ") if side < 0.6 * s else ("",))
    assert any(m.sum() == 0 for m, side in zip(masks, sides) if side < 0.4 * s)  # the documented empty masks


def test_customize_with_the_custom_diffusion_augmentation(model):
    from genattr.harness.errors import UserError

    ds = dataset()
    plan = {"steps": 2, "batch_size": 2, "reg_dataset": ds}
    plain = model.customize(ds.subset(["p0"]), "<new1>", plan)
    aug = model.customize(ds.subset(["p0"]), "<new1>", {**plan, "augment": "custom-diffusion"})
    assert aug.fingerprint != plain.fingerprint
    assert aug.history[-1]["config"]["augment"] == "custom-diffusion"
    assert "augment" not in plain.history[-1]["config"]  # a record without it is what it always was
    again = model.customize(ds.subset(["p0"]), "<new1>", {**plan, "augment": "custom-diffusion"})
    assert again.fingerprint == aug.fingerprint
    with pytest.raises(UserError, match="'augment' must be one of none, custom-diffusion"):
        model.customize(ds.subset(["p0"]), "<new1>", {**plan, "augment": "crop"})
