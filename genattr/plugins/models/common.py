"""Shared DDPM logic of the built-in model adapters (ε-prediction, diffusers ``DDPMScheduler``, 1000 steps).

:class:`DDPMAdapter` implements every operation of the :class:`~genattr.harness.api.T2IModel` protocol on top of
four parts a subclass provides — a diffusers ``UNet2DConditionModel`` (``self.unet``), a transformers text encoder
(``self.text_encoder``), a tokenizer (through :meth:`DDPMAdapter.tokenize`) and the map between pixels and the
space diffusion runs in (:meth:`DDPMAdapter.latents` / :meth:`DDPMAdapter.decode`):

* ``denoise_loss`` / ``loss`` — per-example DDPM losses, optionally masked, optionally with UNet tensors overridden
  (``torch.func.functional_call``) so that per-sample gradients can be taken with ``vmap(grad(...))``;
* ``generate`` — ancestral DDPM sampling, each image's noise from its own seed only, classifier-free guidance;
* ``parameters(selection)`` — Stable-Diffusion-named UNet tensors (``cross-attn-kv | cross-attn | attn | full``);
* ``train`` — a deterministic training loop (every draw from :mod:`genattr.harness.seeding`, keyed on seed + step);
* ``customize`` — Custom Diffusion style fine-tuning with a new token; ``save_delta`` / :func:`load_delta`;
* ``fingerprint`` — sha256 over configuration and weights.

Everything here imports torch lazily or is only imported through the lazily loaded adapter modules.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F


def _quiet_library_logging() -> None:
    """diffusers and transformers print progress bars and installation advice on every save and load of a model;
    genattr draws its own progress bars (and ``--quiet`` must mean quiet), so only their errors are shown."""
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            import importlib

            log = importlib.import_module(module)
            log.set_verbosity_error()
            log.disable_progress_bar()
        except (ImportError, AttributeError):  # pragma: no cover - older library versions
            pass


_quiet_library_logging()

from genattr.harness.api import PARAMETER_SELECTIONS
from genattr.harness.cache import canonical_json
from genattr.harness.errors import UserError
from genattr.harness.seeding import generator

#: Defaults of :meth:`DDPMAdapter.train`.
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 100,
    "batch_size": 32,
    "lr": 1e-3,
    "seed": 0,
    "caption_dropout": 0.0,
    "flip": True,
    "weight_decay": 0.0,
    "warmup": None,  # steps of linear warm-up; None: min(100, steps // 10)
    "lr_schedule": "cosine",  # "cosine" (decay to 0.1·lr) or "constant"
    "grad_clip": 1.0,
    "ema": 0.0,  # exponential moving average of the trained weights (0: off)
    "train_text_encoder": None,  # None: the adapter's default
    "guidance_scale": None,  # the model's default guidance scale after training with caption dropout
    "exclude": None,  # ids of items left out by zero loss weight in the full set's batch sequence (coupled retrain)
    "progress": False,
}

#: Defaults of :meth:`DDPMAdapter.customize` (Custom Diffusion: 250 steps, lr 1e-5 × batch scaling in the paper's
#: SD setting; the tiny models need the larger rates of :func:`genattr.plugins.models.recipes.recipe_customize`).
CUSTOMIZE_DEFAULTS: dict[str, Any] = {
    "weights": "cross-attn-kv",
    "steps": 300,
    "lr": 1e-3,
    "batch_size": 8,
    "seed": 0,
    "flip": True,
    "init_word": None,  # the word whose embedding initialises the new token; None: the adapter's choice
    "reg_dataset": None,  # a Dataset of regularisation images (the base set), or None
    "reg_weight": 1.0,
    "reg_batch_size": None,  # None: same as batch_size
    "train_token": True,
    "grad_clip": 1.0,
    "progress": False,
}

TOKEN_EMBEDDING = "text_encoder.token_embedding"


def select_parameter_names(names: Iterable[str], selection: str) -> list[str]:
    """The UNet parameter names a selection covers (Stable Diffusion / diffusers naming).

    ``cross-attn-kv``: ``attn2.to_k`` / ``attn2.to_v`` weights; ``cross-attn``: every ``attn2`` tensor;
    ``attn``: every ``attn1`` and ``attn2`` tensor; ``full``: every UNet tensor."""
    names = list(names)
    if selection == "cross-attn-kv":
        return [n for n in names if (".attn2.to_k." in n or ".attn2.to_v." in n) and n.endswith(".weight")]
    if selection == "cross-attn":
        return [n for n in names if ".attn2." in n]
    if selection == "attn":
        return [n for n in names if ".attn1." in n or ".attn2." in n]
    if selection == "full":
        return names
    raise UserError(f"unknown parameter selection {selection!r}; choose one of {', '.join(PARAMETER_SELECTIONS)}")


def _images_and_captions(data) -> tuple[torch.Tensor, list[tuple[str, ...]], list[str]]:
    """(N×C×H×W images, captions per item, ids) of a Dataset or a sequence of Examples."""
    if hasattr(data, "item") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)):
        n = len(data)
        images = data.images(list(range(n)))
        captions = [tuple(data.captions(i)) for i in range(n)]
        ids = list(data.ids)
        return images.float(), captions, ids
    items = list(data)
    if not items:
        raise UserError("no examples given")
    images = torch.stack([torch.as_tensor(e.image, dtype=torch.float32) for e in items])
    return images, [tuple(e.captions) for e in items], [e.id for e in items]


def examples_fingerprint(data) -> str:
    """The fingerprint of a Dataset, or a sha256 over ids, captions and pixels of a sequence of Examples."""
    fp = getattr(data, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    images, captions, ids = _images_and_captions(data)
    h = hashlib.sha256()
    h.update(f"{tuple(images.shape)}".encode())
    for i, cs in zip(ids, captions):
        h.update(str(i).encode() + b"\x00" + "\x1e".join(cs).encode() + b"\x00")
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def own_memory(*modules: torch.nn.Module) -> None:
    """Give every parameter and buffer its own memory. ``from_pretrained`` may memory-map safetensors files, so
    a loaded model would otherwise change when its file on disk changes (a cache entry being rewritten)."""
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                t.data = t.data.clone()


def _lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        p = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    raise UserError(f"unknown lr_schedule {schedule!r} (cosine, constant)")


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


class DDPMAdapter:
    """Base class of the built-in adapters (see the module docstring). Subclasses set ``name``, ``version``,
    ``resolution``, ``channels``, ``unet``, ``text_encoder``, ``scheduler`` and implement :meth:`tokenize`,
    :meth:`latents`, :meth:`decode`, :meth:`_add_token_to_tokenizer`, :meth:`config`, :meth:`save` and
    :meth:`load`."""

    name = "ddpm"
    version = "0"
    #: whether :meth:`train` also trains the text encoder by default
    train_text_encoder_default = False
    #: classifier-free guidance scale :meth:`generate` uses by default (set by training with caption dropout)
    guidance_scale: float = 1.0

    # -- to implement -------------------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def latents(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _add_token_to_tokenizer(self, token: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def token_ids(self, word: str) -> list[int]:  # pragma: no cover - abstract
        """Token ids of ``word`` without special tokens."""
        raise NotImplementedError

    def save(self, path: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- common state -------------------------------------------------------------------------------------------
    def _init_common(self) -> None:
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self._alphas_cumprod = self.scheduler.alphas_cumprod.detach().clone().float()
        self.prediction_type = getattr(self.scheduler.config, "prediction_type", "epsilon")
        self.unet.eval()
        self.text_encoder.eval()
        self._fp: str | None = None
        # customization bookkeeping (relative to the base model): see save_delta
        self.base_fingerprint: str | None = None
        self.added_tokens: list[str] = []
        self.delta_names: list[str] = []
        self.history: list[dict] = []

    def _invalidate(self) -> None:
        self._fp = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "DDPMAdapter":
        for m in self._modules().values():
            m.to(device)
        self._alphas_cumprod = self._alphas_cumprod.to(device)
        return self

    def _modules(self) -> dict[str, torch.nn.Module]:
        """Modules whose weights make up the model (for fingerprint and save)."""
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def clone(self) -> "DDPMAdapter":
        """A deep copy (weights, tokenizer, bookkeeping)."""
        return copy.deepcopy(self)

    def tokenizer_state(self) -> Any:
        """A JSON-able description of the tokenizer (part of the fingerprint)."""
        return None

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            h = hashlib.sha256()
            h.update(canonical_json({"name": self.name, "version": self.version, "config": self.config(),
                                     "tokenizer": self.tokenizer_state()}).encode())
            for mname, module in sorted(self._modules().items()):
                for k, v in sorted(module.state_dict().items()):
                    t = v.detach().cpu().contiguous()
                    h.update(f"{mname}.{k}:{t.dtype}:{tuple(t.shape)}".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fp = h.hexdigest()
        return self._fp

    # -- text ---------------------------------------------------------------------------------------------------
    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """``B×L×D`` encoder hidden states (fixed-length padding, so a caption's embedding never depends on the
        other captions of its batch)."""
        ids = self.tokenize(list(captions)).to(self.device)
        return self.text_encoder(input_ids=ids)[0]

    # -- losses -------------------------------------------------------------------------------------------------
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`` (as ``DDPMScheduler.add_noise``; vmap-friendly)."""
        ac = self._alphas_cumprod.to(latents.device)[timesteps.long()]
        shape = (-1,) + (1,) * (latents.ndim - 1)
        return ac.sqrt().reshape(shape) * latents + (1 - ac).sqrt().reshape(shape) * noise

    def _target(self, latents, noise, timesteps):
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            ac = self._alphas_cumprod.to(latents.device)[timesteps.long()]
            shape = (-1,) + (1,) * (latents.ndim - 1)
            return ac.sqrt().reshape(shape) * noise - (1 - ac).sqrt().reshape(shape) * latents
        if self.prediction_type == "sample":
            return latents
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def unet_forward(self, x_t, timesteps, text_emb, params: Mapping[str, torch.Tensor] | None = None):
        """The UNet's prediction, with ``params`` overriding UNet tensors by name when given."""
        if params is None:
            return self.unet(x_t, timesteps, encoder_hidden_states=text_emb, return_dict=False)[0]
        from torch.func import functional_call

        return functional_call(
            self.unet, dict(params), (x_t, timesteps), {"encoder_hidden_states": text_emb, "return_dict": False},
            strict=False,
        )[0]

    def latent_mask(self, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``B×1×h×w`` weights from a ``B×H×W`` (or ``H×W``) pixel mask: area-averaged to the latent size (the
        identity for pixel-space models)."""
        m = mask.float()
        if m.ndim == 2:
            m = m[None]
        m = m[:, None]
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m, size=size, mode="area")
        return m

    def denoise_loss(
        self,
        latents: torch.Tensor,
        text_emb: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        mask: torch.Tensor | None = None,
        params: Mapping[str, torch.Tensor] | None = None,
        target: str = "loss",
    ) -> torch.Tensor:
        """Per-example values ``B``: ``target="loss"`` the mean of ``(ε − ε_θ(x_t, t, c))²`` (for
        ``v_prediction`` schedulers the v target); ``target="eps-sq-norm"`` the mean of ``ε_θ(x_t, t, c)²``.
        ``noise`` has the latents' shape; ``mask`` (``B×H×W`` pixels) restricts the mean to the masked region."""
        timesteps = torch.as_tensor(timesteps, device=latents.device).long()
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        x_t = self.add_noise(latents, noise, timesteps)
        pred = self.unet_forward(x_t, timesteps, text_emb, params)
        if target == "loss":
            err = (pred.float() - self._target(latents, noise, timesteps).float()) ** 2
        elif target == "eps-sq-norm":
            err = pred.float() ** 2
        else:
            raise UserError(f"unknown denoise_loss target {target!r} (loss, eps-sq-norm)")
        if mask is None:
            return err.flatten(1).mean(1)
        w = self.latent_mask(mask.to(err.device), tuple(err.shape[-2:]))
        num = (err * w).flatten(1).sum(1)
        den = w.flatten(1).sum(1) * err.shape[1]
        return num / den.clamp_min(1e-12)

    def loss(self, images, captions, timesteps, noise, mask=None) -> torch.Tensor:
        """Per-example DDPM losses from pixel images and caption strings (``noise`` in latent shape)."""
        images = images.to(self.device, torch.float32)
        return self.denoise_loss(self.latents(images), self.text_embeddings(captions), timesteps,
                                 noise.to(self.device), mask)

    # -- parameters ---------------------------------------------------------------------------------------------
    def parameters(self, selection: str = "cross-attn-kv") -> dict[str, torch.nn.Parameter]:
        """``{diffusers name: Parameter}`` of the UNet for a selection (see :func:`select_parameter_names`)."""
        named = dict(self.unet.named_parameters())
        return {n: named[n] for n in select_parameter_names(named, selection)}

    # -- sampling -----------------------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        c = int(self.unet.config.in_channels)
        s = int(self.unet.config.sample_size)
        return (c, s, s)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int = 50,
        guidance_scale: float | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> torch.Tensor:
        """Images ``B×C×H×W`` in ``[-1, 1]`` by ancestral DDPM sampling with ``steps`` steps (diffusers
        ``DDPMScheduler``). Each image's initial and sampler noise come from a generator seeded by its own seed
        only, so an image does not depend on the rest of its batch. ``guidance_scale`` (default: the model's
        ``guidance_scale``, > 1 only after training with caption dropout) applies classifier-free guidance with the
        empty prompt."""
        from diffusers import DDPMScheduler

        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise UserError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        g_scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        out = []
        for start in range(0, len(prompts), batch_size):
            p, s = prompts[start:start + batch_size], seeds[start:start + batch_size]
            sched = DDPMScheduler.from_config(self.scheduler.config)
            sched.set_timesteps(int(steps))
            gens = [generator(seed, "generate") for seed in s]
            x = torch.stack([torch.randn(self.latent_shape(), generator=g) for g in gens]).to(self.device)
            x = x * sched.init_noise_sigma
            cond = self.text_embeddings(p)
            uncond = self.text_embeddings([""] * len(p)) if g_scale != 1.0 else None
            for t in _progress(sched.timesteps, progress, "sampling"):
                tt = torch.full((len(p),), int(t), device=self.device, dtype=torch.long)
                if uncond is not None:
                    eps = self.unet(torch.cat([x, x]), torch.cat([tt, tt]),
                                    encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + g_scale * (e_c - e_u)
                else:
                    eps = self.unet(x, tt, encoder_hidden_states=cond, return_dict=False)[0]
                x = sched.step(eps, t, x, generator=gens if len(gens) > 1 else gens[0]).prev_sample
            out.append(self.decode(x).clamp(-1, 1).float().cpu())
        return torch.cat(out)

    # -- training -----------------------------------------------------------------------------------------------
    def _batch_latents(self, images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        with torch.no_grad():
            return self.latents(images.to(self.device))

    def train(self, dataset, config: Mapping[str, Any] | None = None) -> dict:
        """Train in place on ``dataset`` (a Dataset or a sequence of Examples); returns a report
        (``losses`` per step, ``seconds``, ``images_per_second``).

        Config (defaults in :data:`TRAIN_DEFAULTS`): ``steps``, ``batch_size``, ``lr`` (AdamW), ``seed``,
        ``caption_dropout`` (probability of the empty caption, enabling classifier-free guidance),
        ``flip`` (random horizontal flips, as in the paper), ``warmup``, ``lr_schedule``, ``grad_clip``, ``ema``,
        ``train_text_encoder``, ``exclude``, ``progress``. Batches walk through seeded per-epoch permutations;
        captions, timesteps, noise, flips and caption dropout come from ``generator(seed, "train", step)``, so the
        same seed and data give the same weights on the same machine.

        ``exclude`` (a list of item ids of ``dataset``) trains *without* those items while keeping every other
        random draw of training on the full set: the batches, noise, timesteps, captions and flips are exactly the
        full set's, and an excluded item's loss term gets weight 0 (the batch loss stays a sum over ``batch_size``,
        so every remaining item's gradient weight is unchanged). The result differs from training on the full set
        only by the excluded items' gradient contributions — the coupled retraining of the leave-K-out benchmark,
        which removes the reshuffling noise of training on a smaller set (see docs/benchmarks/leave-k-out.md)."""
        cfg = {**TRAIN_DEFAULTS, **dict(config or {})}
        unknown = set(cfg) - set(TRAIN_DEFAULTS)
        if unknown:
            raise UserError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        images, captions, ids = _images_and_captions(dataset)
        if tuple(images.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise UserError(f"{self.name}: images are {tuple(images.shape[1:])}, the model takes "
                            f"{(self.channels, self.resolution, self.resolution)}")
        weight = None
        if cfg["exclude"]:
            pos = {str(i): k for k, i in enumerate(ids)}
            missing = [str(i) for i in cfg["exclude"] if str(i) not in pos]
            if missing:
                raise UserError(f"training option exclude names {len(missing)} id(s) not in the training set, "
                                f"e.g. {missing[0]!r}")
            weight = torch.ones(len(ids))
            weight[[pos[str(i)] for i in cfg["exclude"]]] = 0.0
            if not bool(weight.any()):
                raise UserError("training option exclude leaves no training item")
            weight = weight.to(self.device)  # once, not per step
        train_te = self.train_text_encoder_default if cfg["train_text_encoder"] is None else cfg["train_text_encoder"]
        params = list(self.unet.parameters()) + (list(self.text_encoder.parameters()) if train_te else [])
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        steps, bs, seed = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["seed"])
        warmup = min(100, steps // 10) if cfg["warmup"] is None else int(cfg["warmup"])
        ema = float(cfg["ema"])
        ema_state = {n: p.detach().clone() for n, p in self._named_trainable(train_te)} if ema > 0 else None
        n = images.shape[0]
        perms: dict[int, torch.Tensor] = {}

        def index(pos: int) -> int:
            e = pos // n
            if e not in perms:
                perms.clear()
                perms[e] = torch.randperm(n, generator=generator(seed, "train-epoch", e))
            return int(perms[e][pos % n])

        self.unet.train()
        if train_te:
            self.text_encoder.train()
        losses = []
        t0 = time.perf_counter()
        try:
            for step in _progress(range(steps), cfg["progress"], f"training {self.name}"):
                g = generator(seed, "train", step)
                idx = [index(step * bs + k) for k in range(bs)]
                cap_pick = torch.randint(0, 1 << 30, (bs,), generator=g)
                caps = [captions[i][int(c) % len(captions[i])] for i, c in zip(idx, cap_pick)]
                t = torch.randint(0, self.num_train_timesteps, (bs,), generator=g)
                noise = torch.randn((bs,) + self.latent_shape(), generator=g)
                flips = torch.rand(bs, generator=g) < 0.5
                drop = torch.rand(bs, generator=g) < float(cfg["caption_dropout"])
                if not cfg["flip"]:
                    flips[:] = False
                caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
                lat = self._batch_latents(images[idx], flips)
                for group in opt.param_groups:
                    group["lr"] = cfg["lr"] * _lr_factor(step, steps, warmup, cfg["lr_schedule"])
                if train_te:
                    emb = self.text_embeddings(caps)
                else:
                    with torch.no_grad():
                        emb = self.text_embeddings(caps)
                per = self.denoise_loss(lat, emb, t.to(self.device), noise.to(self.device))
                if weight is None:
                    loss = per.mean()
                else:
                    loss = (per * weight[idx]).sum() / bs
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
                opt.step()
                if ema_state is not None:
                    with torch.no_grad():
                        for nme, p in self._named_trainable(train_te):
                            ema_state[nme].lerp_(p.detach(), 1 - ema)
                losses.append(float(loss.detach()))
        finally:
            self.unet.eval()
            self.text_encoder.eval()
        if ema_state is not None:
            with torch.no_grad():
                for nme, p in self._named_trainable(train_te):
                    p.copy_(ema_state[nme])
        seconds = time.perf_counter() - t0
        if float(cfg["caption_dropout"]) > 0 and cfg["guidance_scale"] is not None:
            self.guidance_scale = float(cfg["guidance_scale"])
        self.history.append({"op": "train", "dataset": examples_fingerprint(dataset),
                             "config": {k: v for k, v in cfg.items() if k != "progress"}})
        self._invalidate()
        return {"losses": losses, "seconds": seconds, "images_per_second": steps * bs / max(seconds, 1e-9),
                "steps": steps, "batch_size": bs}

    def _named_trainable(self, train_te: bool):
        yield from (("unet." + n, p) for n, p in self.unet.named_parameters())
        if train_te:
            yield from (("text_encoder." + n, p) for n, p in self.text_encoder.named_parameters())

    # -- customization ------------------------------------------------------------------------------------------
    def default_init_word(self) -> str:
        return "a"

    def add_token(self, token: str, init_word: str | None = None) -> int:
        """Add ``token`` as one new tokenizer entry with a new embedding row initialised from ``init_word``'s
        (mean of its token embeddings); returns its id."""
        if len(self.token_ids(token)) == 1 and token in self.added_tokens:
            return self.token_ids(token)[0]
        emb = self.text_encoder.get_input_embeddings()
        word = init_word or self.default_init_word()
        init_ids = self.token_ids(word)
        with torch.no_grad():
            init = emb.weight[init_ids].mean(0) if init_ids else emb.weight.mean(0)
        new_id = self._add_token_to_tokenizer(token)
        if new_id >= emb.weight.shape[0]:
            self.text_encoder.resize_token_embeddings(new_id + 1, mean_resizing=False)
            emb = self.text_encoder.get_input_embeddings()
        with torch.no_grad():
            emb.weight[new_id] = init
        if self.token_ids(token) != [new_id]:  # pragma: no cover - tokenizer misconfiguration
            raise RuntimeError(f"token {token!r} does not tokenize as one token")
        self.added_tokens.append(token)
        self._invalidate()
        return new_id

    def customize(self, exemplars, token: str, config: Mapping[str, Any] | None = None) -> "DDPMAdapter":
        """A new model fine-tuned on ``exemplars`` (Examples or a Dataset) with the new token ``token``.

        Custom Diffusion (Kumari et al. 2023): a new embedding row for ``token`` initialised from
        ``config["init_word"]``, then fine-tuning of ``config["weights"]`` — ``"cross-attn-kv"`` (the paper:
        ``attn2.to_k`` / ``attn2.to_v``) or any other selection, e.g. ``"full"`` (the whole UNet: a documented
        deviation that tiny models need) — plus that embedding row, with optional regularisation images from the
        base set (``reg_dataset``, ``reg_weight``). Exemplar captions that do not mention ``token`` get it
        prepended. Options: :data:`CUSTOMIZE_DEFAULTS`. The returned model records what changed
        (``added_tokens``, ``delta_names``) for :meth:`save_delta`."""
        cfg = {**CUSTOMIZE_DEFAULTS, **dict(config or {})}
        unknown = set(cfg) - set(CUSTOMIZE_DEFAULTS)
        if unknown:
            raise UserError(f"unknown customization option(s): {', '.join(sorted(unknown))}")
        if not token or any(ch.isspace() for ch in token):
            raise UserError(f"the new token must be one non-empty word without spaces, got {token!r}")
        images, captions, _ = _images_and_captions(exemplars)
        captions = [tuple(c if token in c else f"{token} {c}" for c in cs) for cs in captions]
        reg = cfg["reg_dataset"]
        reg_images = reg_captions = None
        if reg is not None and len(reg) > 0 and float(cfg["reg_weight"]) > 0:
            reg_images, reg_captions, _ = _images_and_captions(reg)

        model = self.clone()
        model.base_fingerprint = self.base_fingerprint or self.fingerprint
        if self.base_fingerprint is None:
            model.added_tokens, model.delta_names = [], []
        new_id = model.add_token(token, cfg["init_word"])
        selected = model.parameters(cfg["weights"])
        for p in model.unet.parameters():
            p.requires_grad_(False)
        for p in model.text_encoder.parameters():
            p.requires_grad_(False)
        for p in selected.values():
            p.requires_grad_(True)
        emb = model.text_encoder.get_input_embeddings().weight
        train_token = bool(cfg["train_token"])
        emb.requires_grad_(train_token)
        frozen_rows = emb.detach().clone()
        trainable = list(selected.values()) + ([emb] if train_token else [])
        opt = torch.optim.AdamW(trainable, lr=float(cfg["lr"]), weight_decay=0.0)
        steps, bs, seed = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["seed"])
        rbs = int(cfg["reg_batch_size"] or bs)
        n = images.shape[0]
        losses = []
        model.unet.train()
        t0 = time.perf_counter()
        try:
            for step in _progress(range(steps), cfg["progress"], f"customizing {self.name}"):
                g = generator(seed, "customize", token, step)
                idx = torch.randint(0, n, (bs,), generator=g).tolist()
                cap_pick = torch.randint(0, 1 << 30, (bs,), generator=g)
                caps = [captions[i][int(c) % len(captions[i])] for i, c in zip(idx, cap_pick)]
                t = torch.randint(0, model.num_train_timesteps, (bs,), generator=g)
                noise = torch.randn((bs,) + model.latent_shape(), generator=g)
                flips = (torch.rand(bs, generator=g) < 0.5) & bool(cfg["flip"])
                lat = model._batch_latents(images[idx], flips)
                loss = model.denoise_loss(lat, model.text_embeddings(caps), t.to(model.device),
                                          noise.to(model.device)).mean()
                if reg_images is not None:
                    gr = generator(seed, "customize-reg", token, step)
                    ridx = torch.randint(0, reg_images.shape[0], (rbs,), generator=gr).tolist()
                    rpick = torch.randint(0, 1 << 30, (rbs,), generator=gr)
                    rcaps = [reg_captions[i][int(c) % len(reg_captions[i])] for i, c in zip(ridx, rpick)]
                    rt = torch.randint(0, model.num_train_timesteps, (rbs,), generator=gr)
                    rnoise = torch.randn((rbs,) + model.latent_shape(), generator=gr)
                    rflips = (torch.rand(rbs, generator=gr) < 0.5) & bool(cfg["flip"])
                    rlat = model._batch_latents(reg_images[ridx], rflips)
                    loss = loss + float(cfg["reg_weight"]) * model.denoise_loss(
                        rlat, model.text_embeddings(rcaps), rt.to(model.device), rnoise.to(model.device)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(trainable, float(cfg["grad_clip"]))
                opt.step()
                if train_token:  # only the new row learns
                    with torch.no_grad():
                        keep = torch.ones(emb.shape[0], dtype=torch.bool)
                        keep[new_id] = False
                        emb[keep] = frozen_rows[keep]
                losses.append(float(loss.detach()))
        finally:
            model.unet.eval()
            for p in model.unet.parameters():
                p.requires_grad_(True)
            for p in model.text_encoder.parameters():
                p.requires_grad_(True)
        model.delta_names = sorted(set(model.delta_names) | set(selected))
        record = {k: v for k, v in cfg.items() if k not in ("progress", "reg_dataset")}
        record["reg_dataset"] = examples_fingerprint(reg) if reg is not None else None
        model.history.append({"op": "customize", "token": token, "exemplars": examples_fingerprint(exemplars),
                              "config": record, "seconds": time.perf_counter() - t0,
                              "loss_first": losses[0] if losses else None,
                              "loss_last": losses[-1] if losses else None})
        model.customize_report = {"losses": losses, "seconds": time.perf_counter() - t0}
        model._invalidate()
        return model

    def save_delta(self, path: str) -> None:
        """Store only what customization changed: ``delta.safetensors`` (the changed UNet tensors under
        ``unet.<name>`` and the new token rows under ``text_encoder.token_embedding.new``) and ``delta.json``
        (base fingerprint, tokens, history)."""
        from safetensors.torch import save_file

        if self.base_fingerprint is None:
            raise UserError("save_delta: this model is not a customized model (use save)")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        unet = dict(self.unet.named_parameters())
        tensors = {f"unet.{n}": unet[n].detach().cpu().contiguous() for n in self.delta_names}
        if self.added_tokens:
            ids = [self.token_ids(t)[0] for t in self.added_tokens]
            emb = self.text_encoder.get_input_embeddings().weight.detach().cpu()
            tensors[TOKEN_EMBEDDING + ".new"] = emb[ids].contiguous()
        save_file(tensors, str(p / "delta.safetensors"))
        meta = {"format": "genattr-delta", "model": self.name, "version": self.version,
                "base_fingerprint": self.base_fingerprint, "tokens": list(self.added_tokens),
                "unet_tensors": list(self.delta_names), "guidance_scale": self.guidance_scale,
                "history": self.history}
        (p / "delta.json").write_text(json.dumps(meta, indent=1, default=str))


def load_delta(base_model: DDPMAdapter, path: str) -> DDPMAdapter:
    """Rebuild a customized model from its base and a directory written by :meth:`DDPMAdapter.save_delta`."""
    from safetensors.torch import load_file

    p = Path(path)
    meta = json.loads((p / "delta.json").read_text())
    if meta.get("format") != "genattr-delta":
        raise UserError(f"{path} is not a genattr customization delta")
    if meta["base_fingerprint"] != base_model.fingerprint:
        raise UserError(f"delta {path} was made from base model {meta['base_fingerprint'][:12]}, "
                        f"not {base_model.fingerprint[:12]}")
    tensors = load_file(str(p / "delta.safetensors"))
    model = base_model.clone()
    model.base_fingerprint = meta["base_fingerprint"]
    model.added_tokens, model.delta_names = [], []
    new = tensors.get(TOKEN_EMBEDDING + ".new")
    for k, token in enumerate(meta["tokens"]):
        tid = model.add_token(token)
        with torch.no_grad():
            model.text_encoder.get_input_embeddings().weight[tid] = new[k]
    unet = dict(model.unet.named_parameters())
    with torch.no_grad():
        for n in meta["unet_tensors"]:
            unet[n].copy_(tensors[f"unet.{n}"])
    model.delta_names = list(meta["unet_tensors"])
    model.guidance_scale = float(meta.get("guidance_scale", model.guidance_scale))
    model.history = list(meta.get("history", []))
    model._invalidate()
    return model

