"""The autoencoder of the built-in latent miniature: an ``AutoencoderKL`` trained once per dataset, then frozen.

Stable Diffusion's VAE is trained once, on data far larger than any benchmark's, and every diffusion model of the
paper's experiments (the COCO model trained from scratch, every leave-K-out retrain, every customized model) uses it
frozen. A miniature has no such VAE offline, so it trains one on its dataset's full training set — once — and every
model built for that dataset (θ0, each retrain without K items, each LDS subset model) uses the same frozen weights.
The VAE seeing the removed items is the miniature's analogue of SD's VAE having seen LAION; the diffusion model is
what leave-K-out retrains.

* :func:`train_autoencoder` — the training loop: reconstruction ``MSE + l1_weight·L1`` plus ``kl_weight·KL`` of the
  posterior (a small weight, as in latent diffusion's KL-regularised autoencoders), AdamW with a cosine schedule, on
  the deterministic posterior mean for the reconstruction term (what the diffusion model encodes) plus a sample for
  the KL term. Afterwards the latent statistics of the training set set the VAE config's ``shift_factor`` and
  ``scaling_factor`` (mean and 1/std of the posterior means), so the diffusion model's latents are centred with
  unit variance — SD v1's 0.18215 plays the same role for its VAE; ``shift_factor`` is the SD3 / FLUX convention of
  the same config.
* :func:`pretrained_autoencoder` / :func:`store_autoencoder` — the same, through the cache (namespace ``models/autoencoder``, keyed by the
  dataset's fingerprint, the architecture, the plan and the seed): trained on first use, loaded afterwards.

Deviations from SD's VAE, named: no perceptual (LPIPS) or adversarial loss (no pretrained network offline; the
images are flat procedural renders, for which a pixel loss reaches a PSNR near 30 dB), a much smaller network.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from genattr.harness.errors import UserError
from genattr.harness.seeding import generator

#: The training plan's keys and defaults.
AUTOENCODER_DEFAULTS: dict[str, Any] = {"steps": 350, "batch_size": 32, "lr": 2e-3, "l1_weight": 0.5,
                                        "kl_weight": 1e-6, "seed": 0}

NS_AUTOENCODER = "models/autoencoder"


def autoencoder_plan(plan: Mapping[str, Any] | None) -> dict:
    """``plan`` over :data:`AUTOENCODER_DEFAULTS`; unknown keys and bad values are one line."""
    out = dict(AUTOENCODER_DEFAULTS)
    if plan:
        unknown = set(plan) - set(AUTOENCODER_DEFAULTS)
        if unknown:
            raise UserError(f"diffusers: unknown vae_train option(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(AUTOENCODER_DEFAULTS)}")
        out.update(plan)
    from genattr.presets import Integer, Number, check_value

    for key, spec in {"steps": Integer(min=1), "batch_size": Integer(min=1), "lr": Number(gt=0),
                      "l1_weight": Number(min=0), "kl_weight": Number(min=0), "seed": Integer()}.items():
        check_value("diffusers", f"vae_train.{key}", out[key], spec)
    return out


def train_autoencoder(vae, images: torch.Tensor, plan: Mapping[str, Any] | None = None,
                      normalise: bool = True) -> dict:
    """Train ``vae`` (an ``AutoencoderKL``) in place on ``images`` (``N×C×H×W`` in ``[-1, 1]``), then (``normalise``)
    set its ``shift_factor`` / ``scaling_factor`` from the training set's latents; returns a report (losses,
    seconds, the latent statistics)."""
    cfg = autoencoder_plan(plan)
    steps, bs, seed = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["seed"])
    n = int(images.shape[0])
    opt = torch.optim.AdamW(vae.parameters(), lr=float(cfg["lr"]), weight_decay=0.0)
    warmup = min(50, steps // 10)
    losses = []
    t0 = time.perf_counter()
    vae.requires_grad_(True)
    vae.train()
    try:
        for step in range(steps):
            g = generator(seed, "autoencoder", step)
            idx = torch.randint(0, n, (bs,), generator=g)
            x = images[idx].to(next(vae.parameters()).device)
            factor = (step + 1) / max(1, warmup) if step < warmup else \
                0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            for group in opt.param_groups:
                group["lr"] = float(cfg["lr"]) * factor
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.mean).sample
            loss = torch.nn.functional.mse_loss(rec, x) + float(cfg["l1_weight"]) * (rec - x).abs().mean()
            if float(cfg["kl_weight"]):
                loss = loss + float(cfg["kl_weight"]) * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        vae.eval()
        vae.requires_grad_(False)
    seconds = time.perf_counter() - t0
    if not normalise:
        return {"losses": losses, "seconds": seconds, "steps": steps, "batch_size": bs}
    stats = latent_statistics(vae, images)
    vae.register_to_config(shift_factor=stats["mean"], scaling_factor=1.0 / max(stats["std"], 1e-6))
    return {"losses": losses, "seconds": seconds, "steps": steps, "batch_size": bs,
            "latent_mean": stats["mean"], "latent_std": stats["std"], "psnr": stats["psnr"]}


@torch.no_grad()
def latent_statistics(vae, images: torch.Tensor, chunk: int = 256) -> dict:
    """Mean and standard deviation of the posterior means over ``images`` (all latent entries pooled), and the
    reconstruction PSNR (dB, images in ``[-1, 1]`` taken as ``[0, 1]``)."""
    dev = next(vae.parameters()).device
    total, sq, count, err = 0.0, 0.0, 0, 0.0
    for s in range(0, images.shape[0], chunk):
        x = images[s:s + chunk].to(dev)
        z = vae.encode(x).latent_dist.mean
        total += float(z.sum())
        sq += float((z.double() ** 2).sum())
        count += z.numel()
        rec = vae.decode(z).sample.clamp(-1, 1)
        err += float(((rec - x) / 2).pow(2).sum())
    mean = total / count
    std = math.sqrt(max(sq / count - mean * mean, 0.0))
    mse = err / images.numel()
    return {"mean": mean, "std": std, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}


def autoencoder_key(dataset, vae_config: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    """The cache key of :func:`pretrained_autoencoder`."""
    from genattr.harness.cache import Cache

    return Cache.key("autoencoder", "1", dict(vae_config), autoencoder_plan(plan), dataset.fingerprint,
                     int(dataset.channels), int(dataset.resolution))


def _fresh(dataset, vae_config: Mapping[str, Any], plan: Mapping[str, Any] | None):
    """An untrained ``AutoencoderKL`` of ``vae_config`` for ``dataset``'s channels and resolution (seeded)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(autoencoder_plan(plan)["seed"]))
        return AutoencoderKL(in_channels=int(dataset.channels), out_channels=int(dataset.channels),
                             sample_size=int(dataset.resolution), **dict(vae_config))


def _load(path: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(path / "vae"))
    vae.requires_grad_(False)
    return vae.eval()


def store_autoencoder(cache, dataset, vae_config: Mapping[str, Any], plan: Mapping[str, Any] | None,
                      key: str | None = None) -> Path:
    """The cache entry of the autoencoder :func:`pretrained_autoencoder` returns, trained and stored when missing
    (``key``: a key :func:`autoencoder_key` gave earlier, used as is); nothing is loaded."""

    def create(tmp: Path):
        vae = _fresh(dataset, vae_config, plan)
        report = train_autoencoder(vae, dataset.images(), plan)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "losses"}
                                                    | {"loss_first": report["losses"][0],
                                                       "loss_last": report["losses"][-1]}))

    key = key or autoencoder_key(dataset, vae_config, plan)
    return cache.get_or_create(NS_AUTOENCODER, key, create, {"dataset": dataset.fingerprint})


def pretrained_autoencoder(cache, dataset, vae_config: Mapping[str, Any], plan: Mapping[str, Any] | None,
                           key: str | None = None):
    """The ``AutoencoderKL`` of ``vae_config`` trained on ``dataset`` under ``plan`` — from ``cache`` when stored
    there (:func:`store_autoencoder`), else trained and stored. Without a cache it is trained and returned."""
    if cache is None:
        vae = _fresh(dataset, vae_config, plan)
        train_autoencoder(vae, dataset.images(), plan)
        return vae
    return _load(store_autoencoder(cache, dataset, vae_config, plan, key))


def stored_autoencoder(cache, key: str):
    """The autoencoder stored under ``key`` (None when the cache does not hold it)."""
    if cache is None:
        return None
    path = cache.lookup(NS_AUTOENCODER, key)
    return None if path is None else _load(path)
