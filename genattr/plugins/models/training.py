"""Training and customization of the built-in adapters (:class:`~genattr.plugins.models.common.DDPMAdapter`
delegates its ``train``, ``customize`` and ``save_delta`` here):

* :func:`train` — a deterministic training loop (every draw from :mod:`genattr.harness.seeding`, keyed on seed +
  step), optionally leaving items out by zero loss weight (the coupled retraining of leave-K-out);
* :func:`customize` — Custom Diffusion style fine-tuning with a new token; :func:`save_delta` / :func:`load_delta`
  store and rebuild only what customization changed;
* the helpers both use: the examples' images, captions and fingerprint (:func:`examples_fingerprint`), the
  learning-rate schedule and progress bars.

Only imported through the lazily loaded adapter modules (it imports torch).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from genattr.harness.api import PARAMETER_SELECTIONS
from genattr.harness.errors import UserError, did_you_mean
from genattr.harness.seeding import generator

if TYPE_CHECKING:
    from .common import DDPMAdapter

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
    "item_weights": None,  # {item id: loss weight}, 1 for unnamed items; 0 leaves an item out (coupled retrain)
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
    "augment": "none",  # "custom-diffusion": Custom Diffusion's resize augmentation (custom_diffusion_augment)
    "progress": False,
}

#: Values of the customization option ``augment``.
AUGMENTS = ("none", "custom-diffusion")

TOKEN_EMBEDDING = "text_encoder.token_embedding"
#: Key prefix of a new token's embedding in a delta (Custom Diffusion's ``modifier_token``).
MODIFIER_TOKEN = "modifier_token"
DELTA_FORMAT = "genattr-delta/2"


from genattr.harness.data import examples_fingerprint  # noqa: E402,F401 - re-exported
from genattr.harness.data import images_and_captions as _images_and_captions  # noqa: E402


def item_weight_vector(ids, item_weights) -> torch.Tensor:
    """Per-item loss weights (1 for items ``item_weights`` does not name); one-line errors for unknown ids,
    negative or non-finite weights, and weights that leave no item."""
    pos = {str(i): k for k, i in enumerate(ids)}
    try:
        named = {str(k): float(v) for k, v in dict(item_weights).items()}
    except (TypeError, ValueError):
        raise UserError("training option item_weights must map item ids to numbers") from None
    missing = [i for i in named if i not in pos]
    if missing:
        raise UserError(f"training option item_weights names {len(missing)} id(s) not in the training set, "
                        f"e.g. {missing[0]!r}")
    bad = [i for i, w in named.items() if not math.isfinite(w) or w < 0]
    if bad:
        raise UserError(f"training option item_weights: weight of {bad[0]!r} must be finite and >= 0, "
                        f"got {named[bad[0]]}")
    weight = torch.ones(len(ids))
    for i, w in named.items():
        weight[pos[i]] = w
    if not bool(weight.any()):
        raise UserError("training option item_weights leaves no training item")
    return weight


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


def check_options(kind: str, options: Mapping[str, Any]) -> None:
    """The option names of a training (``kind="train"``, :data:`TRAIN_DEFAULTS`) or customization
    (``"customize"``, :data:`CUSTOMIZE_DEFAULTS`) plan, and a customization's parameter selection: a one-line
    :class:`UserError` for the first bad one. Run by :func:`train` and :func:`customize`, and before any work by the
    benchmarks (``DDPMAdapter.check_plan`` through :func:`genattr.harness.models.check_model_plan`)."""
    defaults, what = {"train": (TRAIN_DEFAULTS, "training"), "customize": (CUSTOMIZE_DEFAULTS, "customization")}[kind]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(k for k in defaults if k != "progress")
        raise UserError(f"unknown {what} option {unknown[0]!r}{did_you_mean(unknown[0], list(defaults))}; "
                        f"known: {known}")
    choices = {"weights": PARAMETER_SELECTIONS, "augment": AUGMENTS} if kind == "customize" else {}
    for key, allowed in choices.items():
        if key in options and options[key] not in allowed:
            raise UserError(f"customization option {key!r} must be one of {', '.join(allowed)}, got "
                            f"{options[key]!r}")


def train(model: DDPMAdapter, dataset, config: Mapping[str, Any] | None = None) -> dict:
    """The body of :meth:`DDPMAdapter.train <genattr.plugins.models.common.DDPMAdapter.train>` (see there):
    train ``model`` in place on ``dataset``; returns the report."""
    check_options("train", dict(config or {}))
    cfg = {**TRAIN_DEFAULTS, **dict(config or {})}
    images, captions, ids = _images_and_captions(dataset)
    if tuple(images.shape[1:]) != (model.channels, model.resolution, model.resolution):
        raise UserError(f"{model.name}: images are {tuple(images.shape[1:])}, the model takes "
                        f"{(model.channels, model.resolution, model.resolution)}")
    weight = None
    if cfg["item_weights"]:
        weight = item_weight_vector(ids, cfg["item_weights"]).to(model.device)  # once, not per step
    train_te = model.train_text_encoder_default if cfg["train_text_encoder"] is None else cfg["train_text_encoder"]
    params = list(model.unet.parameters()) + (list(model.text_encoder.parameters()) if train_te else [])
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, bs, seed = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["seed"])
    warmup = min(100, steps // 10) if cfg["warmup"] is None else int(cfg["warmup"])
    ema = float(cfg["ema"])
    ema_state = {n: p.detach().clone() for n, p in model._named_trainable(train_te)} if ema > 0 else None
    n = images.shape[0]
    perms: dict[int, torch.Tensor] = {}
    # the frozen encoder's latents of the whole set, once (the VAE posterior mean is deterministic): a latent
    # model's training then never runs its encoder per step
    encoded = None
    if not cfg["flip"]:
        with torch.no_grad():
            encoded = torch.cat([model.latents(images[s:s + 256].to(model.device)) for s in range(0, n, 256)])

    def index(pos: int) -> int:
        e = pos // n
        if e not in perms:
            perms.clear()
            perms[e] = torch.randperm(n, generator=generator(seed, "train-epoch", e))
        return int(perms[e][pos % n])

    model.unet.train()
    if train_te:
        model.text_encoder.train()
    losses = []
    t0 = time.perf_counter()
    try:
        for step in _progress(range(steps), cfg["progress"], f"training {model.name}"):
            g = generator(seed, "train", step)
            idx = [index(step * bs + k) for k in range(bs)]
            cap_pick = torch.randint(0, 1 << 30, (bs,), generator=g)
            caps = [captions[i][int(c) % len(captions[i])] for i, c in zip(idx, cap_pick)]
            t = torch.randint(0, model.num_train_timesteps, (bs,), generator=g)
            noise = torch.randn((bs,) + model.latent_shape(), generator=g)
            flips = torch.rand(bs, generator=g) < 0.5
            drop = torch.rand(bs, generator=g) < float(cfg["caption_dropout"])
            if not cfg["flip"]:
                flips[:] = False
            caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
            lat = encoded[idx] if encoded is not None else model._batch_latents(images[idx], flips)
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * _lr_factor(step, steps, warmup, cfg["lr_schedule"])
            if train_te:
                emb = model.text_embeddings(caps)
            else:
                with torch.no_grad():
                    emb = model.text_embeddings(caps)
            per = model.denoise_loss(lat, emb, t.to(model.device), noise.to(model.device))
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
                    for nme, p in model._named_trainable(train_te):
                        ema_state[nme].lerp_(p.detach(), 1 - ema)
            losses.append(float(loss.detach()))
    finally:
        model.unet.eval()
        model.text_encoder.eval()
    if ema_state is not None:
        with torch.no_grad():
            for nme, p in model._named_trainable(train_te):
                p.copy_(ema_state[nme])
    seconds = time.perf_counter() - t0
    if float(cfg["caption_dropout"]) > 0 and cfg["guidance_scale"] is not None:
        model.guidance_scale = float(cfg["guidance_scale"])
    model.history.append({"op": "train", "dataset": examples_fingerprint(dataset),
                          "config": {k: v for k, v in cfg.items() if k != "progress"}})
    model._invalidate()
    return {"losses": losses, "seconds": seconds, "images_per_second": steps * bs / max(seconds, 1e-9),
            "steps": steps, "batch_size": bs}


def custom_diffusion_augment(images: torch.Tensor, captions: Sequence[str], g: torch.Generator, latent_size: int):
    """Custom Diffusion's resize augmentation of exemplar images (its training script, on by default): each image is
    resized to a random side — with probability 2/3 in [S/3, S], else in [1.2 S, 1.4 S) — then placed at a random
    position on a zero canvas of side S (a smaller image) or randomly cropped to S (a larger one). The loss is
    restricted to the placed image: a mask over latent cells, shrunk by one cell on each side (the canvas edge of a
    cropped image is all valid). Captions of images resized below 0.6 S get ``"a far away "`` or ``"very small "``
    prefixed, of images above S ``"zoomed in "`` or ``"close up "``.

    Returns ``(images, masks, captions, sides)``: masks are ``B×S×S`` pixel masks, constant on each latent cell
    (``latent_size`` cells per side), for ``denoise_loss(mask=…)``; all draws come from ``g``. Deviations: resizing
    is bilinear with antialiasing on tensors (the script: PIL's); a small image near a corner can keep no whole
    interior latent cell at 8×8 latents — its mask is empty and it adds nothing to the loss (at SD's 64×64 latents
    every mask is non-empty)."""
    import torch.nn.functional as F

    b, _, s, _ = images.shape
    factor = max(1, s // int(latent_size))
    cells = s // factor
    out = torch.zeros_like(images)
    masks = torch.zeros(b, s, s)
    caps, sides = list(captions), []
    for i in range(b):
        if float(torch.rand((), generator=g)) < 0.66:
            side = int(torch.randint(s // 3, s + 1, (), generator=g))
        else:
            side = int(torch.randint(int(1.2 * s), int(1.4 * s), (), generator=g))
        x = F.interpolate(images[i:i + 1].float(), size=(side, side), mode="bilinear", align_corners=False,
                          antialias=True)[0].to(images.dtype)
        m = torch.zeros(cells, cells)
        if side > s:
            top, left = (int(v) for v in torch.randint(0, side - s + 1, (2,), generator=g))
            out[i] = x[:, top:top + s, left:left + s]
            m[:] = 1.0
        else:
            top, left = (int(v) for v in torch.randint(0, s - side + 1, (2,), generator=g))
            out[i, :, top:top + side, left:left + side] = x
            m[top // factor + 1:(top + side) // factor - 1, left // factor + 1:(left + side) // factor - 1] = 1.0
        masks[i] = m.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
        pick = int(torch.randint(0, 2, (), generator=g))
        if side < 0.6 * s:
            caps[i] = ("a far away ", "very small ")[pick] + caps[i]
        elif side > s:
            caps[i] = ("zoomed in ", "close up ")[pick] + caps[i]
        sides.append(side)
    return out, masks, caps, sides


def customize(base: DDPMAdapter, exemplars, token: str, config: Mapping[str, Any] | None = None) -> DDPMAdapter:
    """The body of :meth:`DDPMAdapter.customize <genattr.plugins.models.common.DDPMAdapter.customize>` (see
    there): a copy of ``base`` fine-tuned on ``exemplars`` with the new token ``token``."""
    check_options("customize", dict(config or {}))
    cfg = {**CUSTOMIZE_DEFAULTS, **dict(config or {})}
    if not token or any(ch.isspace() for ch in token):
        raise UserError(f"the new token must be one non-empty word without spaces, got {token!r}")
    images, captions, _ = _images_and_captions(exemplars)
    captions = [tuple(c if token in c else f"{token} {c}" for c in cs) for cs in captions]
    reg = cfg["reg_dataset"]
    reg_images = reg_captions = None
    if reg is not None and len(reg) > 0 and float(cfg["reg_weight"]) > 0:
        reg_images, reg_captions, _ = _images_and_captions(reg)

    model = base.clone()
    model.base_fingerprint = base.base_fingerprint or base.fingerprint
    if base.base_fingerprint is None:
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
        for step in _progress(range(steps), cfg["progress"], f"customizing {base.name}"):
            g = generator(seed, "customize", token, step)
            idx = torch.randint(0, n, (bs,), generator=g).tolist()
            cap_pick = torch.randint(0, 1 << 30, (bs,), generator=g)
            caps = [captions[i][int(c) % len(captions[i])] for i, c in zip(idx, cap_pick)]
            t = torch.randint(0, model.num_train_timesteps, (bs,), generator=g)
            noise = torch.randn((bs,) + model.latent_shape(), generator=g)
            flips = (torch.rand(bs, generator=g) < 0.5) & bool(cfg["flip"])
            batch, mask = images[idx], None
            if cfg["augment"] == "custom-diffusion":  # flip first, as the script does, so the mask stays aligned
                batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
                flips = torch.zeros_like(flips)
                batch, mask, caps, _ = custom_diffusion_augment(
                    batch, caps, generator(seed, "customize-augment", token, step), model.latent_shape()[-1])
                mask = mask.to(model.device)
            lat = model._batch_latents(batch, flips)
            loss = model.denoise_loss(lat, model.text_embeddings(caps), t.to(model.device),
                                      noise.to(model.device), mask).mean()
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
    # "augment" is recorded only when used: the record of a customization without it is what it always was
    record = {k: v for k, v in cfg.items() if k not in ("progress", "reg_dataset")
              and not (k == "augment" and v == "none")}
    record["reg_dataset"] = examples_fingerprint(reg) if reg is not None else None
    model.history.append({"op": "customize", "token": token, "exemplars": examples_fingerprint(exemplars),
                          "config": record, "seconds": time.perf_counter() - t0,
                          "loss_first": losses[0] if losses else None,
                          "loss_last": losses[-1] if losses else None})
    model.customize_report = {"losses": losses, "seconds": time.perf_counter() - t0}
    model._invalidate()
    return model


def save_delta(model: DDPMAdapter, path: str) -> None:
    """The body of :meth:`DDPMAdapter.save_delta <genattr.plugins.models.common.DDPMAdapter.save_delta>`
    (see there): store what customization changed in the directory ``path``."""
    from safetensors.torch import save_file

    if model.base_fingerprint is None:
        raise UserError("save_delta: this model is not a customized model (use save)")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    unet = dict(model.unet.named_parameters())
    tensors = {f"unet.{n}": unet[n].detach().cpu().contiguous() for n in model.delta_names}
    emb = model.text_encoder.get_input_embeddings().weight.detach().cpu()
    for t in model.added_tokens:
        tensors[f"{MODIFIER_TOKEN}.{t}"] = emb[model.token_ids(t)[0]].contiguous()
    save_file(tensors, str(p / "delta.safetensors"))
    meta = {"format": DELTA_FORMAT, "model": model.name, "version": model.version,
            "base_fingerprint": model.base_fingerprint, "tokens": list(model.added_tokens),
            "unet_tensors": list(model.delta_names), "guidance_scale": model.guidance_scale,
            "history": model.history}
    (p / "delta.json").write_text(json.dumps(meta, indent=1, default=str))


def _official_delta(path: Path) -> dict:
    """Custom Diffusion's ``delta.bin`` (``{"unet": {name: tensor}, "modifier_token": {token: tensor}}``), read
    with ``torch.load(weights_only=True)``: tensors and containers only, no code runs."""
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path} is not a readable Custom Diffusion delta: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("unet", {}), dict):
        raise UserError(f"{path} is not a Custom Diffusion delta (expected a dict with 'unet' and 'modifier_token')")
    tensors = {f"unet.{k}": v for k, v in (raw.get("unet") or {}).items()}
    tensors.update({f"{MODIFIER_TOKEN}.{k}": v for k, v in (raw.get("modifier_token") or {}).items()})
    return tensors


def load_delta(base_model: DDPMAdapter, path: str) -> DDPMAdapter:
    """Rebuild a customized model from its base and a delta: a directory written by :func:`save_delta`, or Custom
    Diffusion's ``delta.bin`` (the file, or a directory holding it; the base fingerprint is then not checked)."""
    from safetensors.torch import load_file

    p = Path(path)
    meta: dict = {}
    if p.is_dir() and (p / "delta.json").is_file():
        meta = json.loads((p / "delta.json").read_text())
        if meta.get("format") != DELTA_FORMAT:
            raise UserError(f"{path} is not a genattr customization delta (format {meta.get('format')!r})")
        if meta["base_fingerprint"] != base_model.fingerprint:
            raise UserError(f"delta {path} was made from base model {meta['base_fingerprint'][:12]}, "
                            f"not {base_model.fingerprint[:12]}")
        tensors = load_file(str(p / "delta.safetensors"))
    else:
        official = p / "delta.bin" if p.is_dir() else p
        if not official.is_file():
            raise UserError(f"{path}: no delta.json (genattr delta) or delta.bin (Custom Diffusion delta) there")
        tensors = _official_delta(official)
    unet_names = [k[len("unet."):] for k in tensors if k.startswith("unet.")]
    tokens = meta.get("tokens") or [k[len(MODIFIER_TOKEN) + 1:] for k in tensors if k.startswith(MODIFIER_TOKEN + ".")]
    model = base_model.clone()
    model.base_fingerprint = meta.get("base_fingerprint") or base_model.fingerprint
    model.added_tokens, model.delta_names = [], []
    for token in tokens:
        tid = model.add_token(token)
        with torch.no_grad():
            model.text_encoder.get_input_embeddings().weight[tid] = tensors[f"{MODIFIER_TOKEN}.{token}"]
    unet = dict(model.unet.named_parameters())
    unknown = [n for n in unet_names if n not in unet]
    if unknown:
        raise UserError(f"delta {path} changes {unknown[0]!r}, which the base model's UNet does not have")
    with torch.no_grad():
        for n in unet_names:
            unet[n].copy_(tensors[f"unet.{n}"])
    model.delta_names = list(meta.get("unet_tensors") or unet_names)
    model.guidance_scale = float(meta.get("guidance_scale", model.guidance_scale))
    model.history = list(meta.get("history", []))
    model._invalidate()
    return model
