"""Shared DDPM logic of the built-in model adapters (ε-prediction, diffusers ``DDPMScheduler``, 1000 steps).

:class:`DDPMAdapter` implements every operation of the :class:`~genattr.harness.api.T2IModel` protocol on top of
four parts a subclass provides — a diffusers ``UNet2DConditionModel`` (``self.unet``), a transformers text encoder
(``self.text_encoder``), a tokenizer (through :meth:`DDPMAdapter.tokenize`) and the map between pixels and the
space diffusion runs in (:meth:`DDPMAdapter.latents` / :meth:`DDPMAdapter.decode`):

* ``denoise_loss`` / ``loss`` — per-example DDPM losses, optionally masked, optionally with UNet tensors overridden
  (``torch.func.functional_call``) so that per-sample gradients can be taken with ``vmap(grad(...))``;
* ``generate`` — ancestral DDPM sampling, each image's noise from its own seed only, classifier-free guidance;
* ``parameters(selection)`` — Stable-Diffusion-named UNet tensors (``cross-attn-kv | cross-attn | attn | full``);
* ``train`` / ``customize`` / ``save_delta`` — delegated to :mod:`genattr.plugins.models.training` (a
  deterministic training loop, Custom Diffusion style fine-tuning with a new token, customization deltas and
  :func:`load_delta`);
* ``fingerprint`` — sha256 over configuration and weights.

Everything here imports torch lazily or is only imported through the lazily loaded adapter modules.
"""

from __future__ import annotations

import copy
import hashlib
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
from genattr.harness.models import ModelBase
from genattr.harness.seeding import generator

from . import training as _training
from .training import (  # noqa: F401 - re-exported: they lived here before training.py
    CUSTOMIZE_DEFAULTS,
    TOKEN_EMBEDDING,
    TRAIN_DEFAULTS,
    _images_and_captions,
    _lr_factor,
    _progress,
    check_options,
    examples_fingerprint,
    load_delta,
)


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


def own_memory(*modules: torch.nn.Module) -> None:
    """Give every parameter and buffer its own memory. ``from_pretrained`` may memory-map safetensors files, so
    a loaded model would otherwise change when its file on disk changes (a cache entry being rewritten)."""
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                t.data = t.data.clone()


class DDPMAdapter(ModelBase):
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

    @classmethod
    def check_plan(cls, kind: str, plan: Mapping[str, Any]) -> None:
        """Option names of a training (``kind="train"``) or customization (``"customize"``) plan and a
        customization's parameter selection, before any work (:func:`~genattr.plugins.models.training.check_options`;
        the host calls it through :func:`genattr.harness.models.check_model_plan`)."""
        check_options(kind, plan)

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
        ``train_text_encoder``, ``item_weights``, ``progress``. Batches walk through seeded per-epoch permutations;
        captions, timesteps, noise, flips and caption dropout come from ``generator(seed, "train", step)``, so the
        same seed and data give the same weights on the same machine.

        ``item_weights`` (``{item id: weight}``, 1 for unnamed items) multiplies each item's loss term while every
        other random draw of training stays the full set's: the batches, noise, timesteps, captions and flips are
        exactly the full set's, and a weight-0 item's term vanishes (the batch loss stays a sum over
        ``batch_size``, so every remaining item's gradient weight is unchanged). With 0/1 weights the result differs
        from training on the full set only by the left-out items' gradient contributions — the coupled retraining
        of the leave-K-out benchmark,
        which removes the reshuffling noise of training on a smaller set (see docs/benchmarks/leave-k-out.md)."""
        return _training.train(self, dataset, config)

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
        return _training.customize(self, exemplars, token, config)

    def save_delta(self, path: str) -> None:
        """Store only what customization changed, in Custom Diffusion's delta layout (``{"unet": {name: tensor},
        "modifier_token": {token: embedding}}``) flattened into ``delta.safetensors`` (keys ``unet.<name>`` and
        ``modifier_token.<token>``), with ``delta.json`` (base fingerprint, tokens, history)."""
        _training.save_delta(self, path)

    def apply_delta(self, path: str) -> "DDPMAdapter":
        """A new model: this one with a stored delta applied — a directory written by :meth:`save_delta`, or
        Custom Diffusion's own ``delta.bin`` (a file, or a directory holding one)."""
        return _training.load_delta(self, path)
