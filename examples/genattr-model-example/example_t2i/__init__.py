"""example-t2i: a genattr model plugin — a small pixel-space text-to-image diffusion model with its own network.

It meets genattr's model contract (docs/models.md) with nothing but the top-level ``genattr`` API:

* the ``T2IModel`` part every attribution method uses: ``loss`` / ``denoise_loss`` (per-example ε-prediction losses,
  UNet tensors overridable by name through ``torch.func.functional_call`` for per-sample gradients),
  ``add_noise``, ``unet_forward``, ``generate`` (each image's noise from its own seed), ``parameters(selection)``
  with Stable Diffusion's names for the cross-attention projections (``...attn2.to_k`` / ``...attn2.to_v``),
  ``text_embeddings``, ``latents`` (pixels: the identity), ``fingerprint``;
* ``trainable``: ``recipe(scale, dataset)``, ``build(dataset, config)``, ``train(dataset, plan)`` (honouring
  ``item_weights``: weight 0 leaves an item out on the full set's batches), ``save(path)`` / ``load(path)``;
* ``customizable``: ``customize(exemplars, token, plan)`` (Custom Diffusion: the cross-attention K/V plus the new
  token's embedding), ``save_delta(path)`` / ``apply_delta(path)`` (safetensors).

Replace the network (:class:`Net`) and the text encoder (:class:`TextEncoder`) with your own; keep the method
signatures. Torch is imported inside functions, so ``genattr list`` stays fast.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path

import genattr

#: Build options (``recipe(...)["model"]`` and ``model_config`` override them).
DEFAULTS = {"width": 32, "embed_dim": 16, "max_length": None, "seed": 0, "words": None}
#: Training-plan options of this model beyond genattr's standard keys.
TRAIN_DEFAULTS = {"steps": 40, "batch_size": 16, "lr": 2e-3, "seed": 0, "item_weights": None, "progress": False}
#: Customization-plan options.
CUSTOMIZE_DEFAULTS = {"steps": 10, "batch_size": 4, "lr": 1e-3, "seed": 0, "weights": "cross-attn-kv",
                      "reg_dataset": None, "reg_weight": 1.0, "progress": False}
RECIPES = {
    "tiny": {"model": {"width": 16}, "train": {"steps": 40, "batch_size": 16, "lr": 2e-3},
             "customize": {"steps": 10, "batch_size": 4, "lr": 1e-3}},
    "small": {"model": {"width": 32}, "train": {"steps": 800, "batch_size": 64, "lr": 2e-3},
              "customize": {"steps": 300, "batch_size": 8, "lr": 5e-3}},
}
PAD, UNK = 0, 1


def words_of(caption: str) -> list[str]:
    return re.findall(r"<[^>\s]+>|[a-z0-9]+|[^\sa-z0-9]", str(caption).lower())


def _check(options: dict, defaults: dict, what: str) -> dict:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise genattr.UserError(f"example-t2i: unknown {what} option {unknown[0]!r}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def _modules(channels: int, width: int, embed_dim: int, vocab_size: int, max_length: int):
    """``(net, text encoder)``: the denoiser and the caption encoder."""
    import torch
    from torch import nn

    class CrossAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = nn.Linear(width, width, bias=False)
            self.to_k = nn.Linear(embed_dim, width, bias=False)
            self.to_v = nn.Linear(embed_dim, width, bias=False)
            self.to_out = nn.Linear(width, width)

        def forward(self, h, ctx):
            b, c, hh, ww = h.shape
            q = self.to_q(h.flatten(2).transpose(1, 2))
            a = torch.softmax(q @ self.to_k(ctx).transpose(1, 2) / math.sqrt(c), dim=-1)
            return h + self.to_out(a @ self.to_v(ctx)).transpose(1, 2).reshape(b, c, hh, ww)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.GroupNorm(4, width)
            self.conv1 = nn.Conv2d(width, width, 3, padding=1)
            self.time = nn.Linear(width, width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1)
            self.attn2 = CrossAttention()

        def forward(self, h, temb, ctx):
            x = self.conv1(torch.nn.functional.silu(self.norm(h))) + self.time(temb)[:, :, None, None]
            return self.attn2(h + self.conv2(torch.nn.functional.silu(x)), ctx)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
            self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            self.blocks = nn.ModuleList([Block(), Block()])
            self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

        def forward(self, x, t, ctx):
            half = width // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
            ang = t.float()[:, None] * freqs[None]
            temb = self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=1))
            h = self.conv_in(x)
            for block in self.blocks:
                h = block(h, temb, ctx)
            return self.conv_out(h)

    class TextEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(vocab_size, embed_dim)
            self.position = nn.Parameter(torch.zeros(max_length, embed_dim))
            self.mix = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))

        def forward(self, ids):
            e = self.token_embedding(ids) + self.position[None]
            return e + self.mix(e)

    return Net(), TextEncoder()


class ExampleT2i(genattr.ModelBase):
    """A small text-to-image DDPM in pixel space (see the module docstring)."""

    name = "example-t2i"
    version = "1"
    init_seed_key = "seed"
    num_train_timesteps = 1000

    def __init__(self, resolution: int, channels: int, **config):
        import torch
        from diffusers import DDPMScheduler

        self.config = _check(dict(config), DEFAULTS, "model")
        self.config["words"] = sorted(set(self.config["words"] or ()))
        self.config["max_length"] = int(self.config["max_length"] or 16)
        self.resolution, self.channels = int(resolution), int(channels)
        self.words = list(self.config["words"])  # the caption words, then the added tokens
        self.added_tokens: list[str] = []
        self.delta_names: list[str] = []
        self.base_fingerprint: str | None = None
        self.guidance_scale = 1.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.config["seed"]))
            self.unet, self.text_encoder = _modules(self.channels, int(self.config["width"]),
                                                    int(self.config["embed_dim"]), 2 + len(self.words),
                                                    int(self.config["max_length"]))
        self.unet.eval()
        self.text_encoder.eval()
        self.scheduler = DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_schedule="linear",
                                       clip_sample=True)
        self._alphas = self.scheduler.alphas_cumprod.float()
        self._fp = None

    # -- the trainable capability: recipes, building, saving ------------------------------------------------------
    @classmethod
    def recipe(cls, scale: str, dataset: str | None = None) -> dict:
        if scale not in RECIPES:
            raise genattr.UserError(f"example-t2i: no recipe for scale {scale!r}; recipes: {', '.join(RECIPES)}")
        return {"dataset": {}, **copy.deepcopy(RECIPES[scale])}

    @classmethod
    def check_plan(cls, kind: str, plan) -> None:
        """Option names of a training (``kind="train"``) or customization plan; the host calls it before any work,
        so a misspelt option fails before the base model trains."""
        if kind == "train":
            _check(dict(plan), TRAIN_DEFAULTS, "training")
        else:
            _check(dict(plan), CUSTOMIZE_DEFAULTS, "customization")

    @classmethod
    def pin_config(cls, dataset, config) -> dict:
        """The vocabulary and caption length from ``dataset`` (genattr passes the full training set, so a retrain on
        a subset keeps the architecture)."""
        out = dict(config)
        captions = [c for i in range(len(dataset)) for c in dataset.captions(i)]
        if out.get("words") is None:
            out["words"] = sorted({w for c in captions for w in words_of(c)})
        if out.get("max_length") is None:
            out["max_length"] = max(8, max((len(words_of(c)) for c in captions), default=0) + 4)
        return out

    @classmethod
    def build(cls, dataset, config) -> "ExampleT2i":
        config = cls.pin_config(dataset, config)
        return cls(dataset.resolution, dataset.channels, **config)

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        save_file(self._state(), str(p / "model.safetensors"))
        (p / "genattr_model.json").write_text(json.dumps({
            "model": self.name, "version": self.version, "resolution": self.resolution, "channels": self.channels,
            "config": self.config, "added_tokens": self.added_tokens, "base_fingerprint": self.base_fingerprint}))

    @classmethod
    def load(cls, path: str) -> "ExampleT2i":
        from safetensors.torch import load_file

        p = Path(path)
        meta = json.loads((p / "genattr_model.json").read_text())
        if meta.get("model") != cls.name:
            raise genattr.UserError(f"{path} holds a {meta.get('model')!r} model, not {cls.name!r}")
        model = cls(meta["resolution"], meta["channels"], **meta["config"])
        for token in meta["added_tokens"]:
            model._add_token(token)
        model._load_state(load_file(str(p / "model.safetensors")))
        model.base_fingerprint = meta.get("base_fingerprint")
        return model

    def _state(self) -> dict:
        return {**{f"unet.{k}": v.detach().contiguous() for k, v in self.unet.state_dict().items()},
                **{f"text_encoder.{k}": v.detach().contiguous() for k, v in self.text_encoder.state_dict().items()}}

    def _load_state(self, state: dict) -> None:
        self.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        self.text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
        self._fp = None

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            h = hashlib.sha256(json.dumps([self.name, self.version, self.resolution, self.channels, self.config,
                                           self.added_tokens], sort_keys=True).encode())
            for k, v in sorted(self._state().items()):
                h.update(k.encode() + v.cpu().numpy().tobytes())
            self._fp = h.hexdigest()
        return self._fp

    # -- text -------------------------------------------------------------------------------------------------------
    def tokenize(self, captions):
        import torch

        vocab = {w: 2 + i for i, w in enumerate(self.words)}
        n = int(self.config["max_length"])
        rows = []
        for c in captions:
            ids = [vocab.get(w, UNK) for w in words_of(c)][:n]
            rows.append(ids + [PAD] * (n - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def text_embeddings(self, captions):
        return self.text_encoder(self.tokenize(list(captions)))

    def _add_token(self, token: str) -> int:
        import torch

        if token in self.words:
            return 2 + self.words.index(token)
        emb = self.text_encoder.token_embedding
        new = torch.nn.Embedding(emb.num_embeddings + 1, emb.embedding_dim)
        with torch.no_grad():
            new.weight[:-1] = emb.weight
            new.weight[-1] = emb.weight[2:].mean(0) if emb.num_embeddings > 2 else 0.0
        self.text_encoder.token_embedding = new
        self.words = self.words + [token]  # appended: the existing ids stay
        self.added_tokens.append(token)
        self._fp = None
        return emb.num_embeddings

    # -- diffusion --------------------------------------------------------------------------------------------------
    def latents(self, images):
        return images

    def latent_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def add_noise(self, latents, noise, timesteps):
        a = self._alphas.to(latents.device)[timesteps.long()].reshape(-1, *([1] * (latents.ndim - 1)))
        return a.sqrt() * latents + (1 - a).sqrt() * noise

    def unet_forward(self, x_t, timesteps, text_emb, params=None):
        if params is None:
            return self.unet(x_t, timesteps, text_emb)
        from torch.func import functional_call

        return functional_call(self.unet, dict(params), (x_t, timesteps, text_emb), strict=False)

    def denoise_loss(self, latents, text_emb, timesteps, noise, mask=None, params=None, target="loss"):
        import torch

        t = torch.as_tensor(timesteps, device=latents.device).long()
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        pred = self.unet_forward(self.add_noise(latents, noise, t), t, text_emb, params)
        err = (pred - noise) ** 2 if target == "loss" else pred ** 2
        if mask is None:
            return err.flatten(1).mean(1)
        m = mask.float().reshape(-1, 1, *mask.shape[-2:]).to(err.device)
        return (err * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * err.shape[1]).clamp_min(1e-12)

    def loss(self, images, captions, timesteps, noise, mask=None):
        return self.denoise_loss(images.float(), self.text_embeddings(captions), timesteps, noise, mask)

    def parameters(self, selection: str = "cross-attn-kv") -> dict:
        """``{name: parameter}`` of a selection, named as in Stable Diffusion (this network has no self-attention,
        so ``attn`` is ``cross-attn``)."""
        keep = {"cross-attn-kv": lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n,
                "cross-attn": lambda n: ".attn2." in n, "attn": lambda n: ".attn2." in n, "full": lambda n: True}
        if selection not in keep:
            raise genattr.UserError(f"example-t2i: unknown parameter selection {selection!r}; choose one of "
                                    f"{', '.join(genattr.PARAMETER_SELECTIONS)}")
        return {n: p for n, p in self.unet.named_parameters() if keep[selection](n)}

    def generate(self, prompts, seeds, steps: int = 50, guidance_scale=None, **_):
        import torch
        from diffusers import DDPMScheduler

        out = []
        with torch.no_grad():
            for prompt, seed in zip(prompts, seeds):
                sched = DDPMScheduler.from_config(self.scheduler.config)
                sched.set_timesteps(int(steps))
                g = genattr.generator(int(seed), "generate")
                x = torch.randn(self.latent_shape(), generator=g)[None]
                ctx = self.text_embeddings([prompt])
                for t in sched.timesteps:
                    eps = self.unet(x, torch.full((1,), int(t), dtype=torch.long), ctx)
                    x = sched.step(eps, t, x, generator=g).prev_sample
                out.append(x[0].clamp(-1, 1))
        return torch.stack(out)

    # -- training ---------------------------------------------------------------------------------------------------
    def _fit(self, images, captions, weights, params, plan, key, extra=None):
        """AdamW on ``params`` with every draw from ``genattr.generator(seed, key, step)``."""
        import torch

        opt = torch.optim.AdamW(params, lr=float(plan["lr"]))
        bs, n, losses = int(plan["batch_size"]), images.shape[0], []
        self.unet.train()
        for step in range(int(plan["steps"])):
            g = genattr.generator(int(plan["seed"]), key, step)
            idx = torch.randint(0, n, (bs,), generator=g)
            caps = [captions[i][int(c) % len(captions[i])] for i, c in
                    zip(idx.tolist(), torch.randint(0, 1 << 30, (bs,), generator=g).tolist())]
            t = torch.randint(0, self.num_train_timesteps, (bs,), generator=g)
            noise = torch.randn((bs,) + self.latent_shape(), generator=g)
            per = self.denoise_loss(images[idx], self.text_embeddings(caps), t, noise)
            loss = (per * weights[idx]).sum() / bs
            if extra is not None:
                loss = loss + extra(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        self.unet.eval()
        self._fp = None
        return losses

    def train(self, dataset, plan) -> dict:
        import torch

        plan = _check(dict(plan), TRAIN_DEFAULTS, "training")
        ids = list(dataset.ids)
        weights = torch.ones(len(ids))
        pos = {i: k for k, i in enumerate(ids)}
        for i, w in dict(plan["item_weights"] or {}).items():
            if str(i) not in pos:
                raise genattr.UserError(f"example-t2i: item_weights names {i!r}, not in the training set")
            weights[pos[str(i)]] = float(w)
        images = dataset.images(list(range(len(ids)))).float()
        captions = [tuple(dataset.captions(i)) for i in range(len(ids))]
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        return {"losses": self._fit(images, captions, weights, params, plan, "train"), "steps": plan["steps"],
                "batch_size": plan["batch_size"]}

    # -- the customizable capability --------------------------------------------------------------------------------
    def clone(self) -> "ExampleT2i":
        return copy.deepcopy(self)

    def customize(self, exemplars, token: str, plan) -> "ExampleT2i":
        import torch

        plan = _check(dict(plan), CUSTOMIZE_DEFAULTS, "customization")
        items = [exemplars.item(i) for i in range(len(exemplars))] if hasattr(exemplars, "item") else list(exemplars)
        model = self.clone()
        model.base_fingerprint = self.base_fingerprint or self.fingerprint
        tid = model._add_token(token)
        images = torch.stack([e.image.float() for e in items])
        captions = [tuple(c if token in c else f"{token} {c}" for c in e.captions) for e in items]
        selected = list(model.parameters(plan["weights"]).values())
        emb = model.text_encoder.token_embedding.weight
        frozen = emb.detach().clone()
        reg = plan["reg_dataset"]
        use_reg = reg is not None and len(reg) > 0 and float(plan["reg_weight"]) > 0
        rimg = reg.images(list(range(len(reg)))).float() if use_reg else None
        rcap = [tuple(reg.captions(i)) for i in range(len(reg))] if use_reg else None

        def regularise(step):  # Custom Diffusion's prior preservation: the base data's loss
            g = genattr.generator(int(plan["seed"]), "customize-reg", token, step)
            idx = torch.randint(0, rimg.shape[0], (int(plan["batch_size"]),), generator=g)
            caps = [rcap[i][0] for i in idx.tolist()]
            t = torch.randint(0, self.num_train_timesteps, (len(caps),), generator=g)
            noise = torch.randn((len(caps),) + self.latent_shape(), generator=g)
            return float(plan["reg_weight"]) * model.denoise_loss(rimg[idx], model.text_embeddings(caps), t,
                                                                  noise).mean()

        losses = model._fit(images, captions, torch.ones(len(items)), selected + [emb], plan, f"customize/{token}",
                            regularise if use_reg else None)
        with torch.no_grad():  # only the new token's row learns
            keep = torch.ones(emb.shape[0], dtype=torch.bool)
            keep[tid] = False
            emb[keep] = frozen[keep]
        model.delta_names = sorted(model.parameters(plan["weights"]))
        model.customize_report = {"losses": losses}
        model._fp = None
        return model

    def save_delta(self, path: str) -> None:
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        named = dict(self.unet.named_parameters())
        emb = self.text_encoder.token_embedding.weight
        tensors = {f"unet.{n}": named[n].detach().contiguous() for n in self.delta_names}
        tensors.update({f"modifier_token.{t}": emb[2 + self.words.index(t)].detach().contiguous()
                        for t in self.added_tokens})
        save_file(tensors, str(p / "delta.safetensors"))
        (p / "delta.json").write_text(json.dumps({"base_fingerprint": self.base_fingerprint,
                                                  "tokens": self.added_tokens, "unet": self.delta_names}))

    def apply_delta(self, path: str) -> "ExampleT2i":
        import torch
        from safetensors.torch import load_file

        p = Path(path)
        meta = json.loads((p / "delta.json").read_text())
        if meta["base_fingerprint"] != self.fingerprint:
            raise genattr.UserError(f"example-t2i: delta {path} was made from another base model")
        tensors = load_file(str(p / "delta.safetensors"))
        model = self.clone()
        model.base_fingerprint = meta["base_fingerprint"]
        named = dict(model.unet.named_parameters())
        with torch.no_grad():
            for token in meta["tokens"]:
                tid = model._add_token(token)
                model.text_encoder.token_embedding.weight[tid] = tensors[f"modifier_token.{token}"]
            for n in meta["unet"]:
                named[n].copy_(tensors[f"unet.{n}"])
        model.delta_names = list(meta["unet"])
        model._fp = None
        return model

    def to(self, device):
        if str(device) != "cpu":
            raise genattr.UserError(f"example-t2i runs on the CPU only, not {device!r}")
        return self


@genattr.hookimpl
def register_models(register):
    register("example-t2i", genattr.lazy("example_t2i:ExampleT2i"), version=ExampleT2i.version,
             capabilities=["trainable", "customizable"],
             description="A small pixel-space text-to-image DDPM with its own network (a genattr model plugin)")
