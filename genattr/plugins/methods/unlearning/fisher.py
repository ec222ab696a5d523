"""The diagonal Fisher of the unlearning step: per-sample gradients, the seeded Fisher draws, the zero-Fisher guard."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

from genattr.harness.errors import UserError

from .update import _device_of, _eval_mode


def fisher_draws(seed: int, n_items: int, caption_counts: Sequence[int], sample: int, num_train_timesteps: int,
                 flips: bool) -> tuple[int, int, int, bool]:
    """(item index, caption index, timestep, flipped) of Fisher sample ``sample`` — a function of the seed and the
    sample index only."""
    from genattr.harness.seeding import numpy_rng

    u = numpy_rng(seed, "unlearning/fisher", sample).random(4)
    i = min(int(u[0] * n_items), n_items - 1)
    c = min(int(u[1] * caption_counts[i]), caption_counts[i] - 1)
    t = min(int(u[2] * num_train_timesteps), num_train_timesteps - 1)
    return i, c, t, bool(flips and u[3] < 0.5)


def per_sample_gradients(model, params: Mapping[str, Any], latents, text_emb, timesteps, noise, mask=None,
                         method: str = "vmap") -> dict:
    """``{name: B × *shape}`` gradients of each example's ``denoise_loss`` with respect to ``params`` (tensors that
    override the UNet's by name)."""
    import torch

    params = {k: v.detach() for k, v in params.items()}
    if method == "vmap":
        from torch.func import grad, vmap

        def f(p, lat, emb, t, eps, m):
            return model.denoise_loss(lat[None], emb[None], t[None], eps[None],
                                      mask=None if m is None else m[None], params=p)[0]

        in_dims = (None, 0, 0, 0, 0, None if mask is None else 0)
        with warnings.catch_warnings():  # ops without a batching rule (CPU flash attention) fall back to a loop
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            g = vmap(grad(f), in_dims=in_dims)(params, latents, text_emb, timesteps, noise, mask)
        return {k: v.detach() for k, v in g.items()}
    out = {k: [] for k in params}
    for b in range(latents.shape[0]):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = model.denoise_loss(latents[b:b + 1], text_emb[b:b + 1], timesteps[b:b + 1], noise[b:b + 1],
                                  mask=None if mask is None else mask[b:b + 1], params=p)[0]
        gs = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
        for k, g in zip(p, gs):
            out[k].append(torch.zeros_like(p[k]) if g is None else g)
    return {k: torch.stack(v) for k, v in out.items()}


def fisher_diagonal(model, dataset, selection: str = "cross-attn-kv", samples: int = 256, seed: int = 0,
                    batch: int = 32, flips: bool = True, method: str = "vmap", progress: bool = False) -> dict:
    """Diagonal Fisher ``{name: tensor}`` over ``model.parameters(selection)``: the mean over ``samples`` draws of
    the squared per-sample gradient of the noise loss (one random item, caption, timestep, noise, flip each)."""
    import torch

    from genattr.harness.progress import bar
    from genattr.harness.seeding import generator

    sel = model.parameters(selection)
    if not sel:
        raise UserError(f"unlearning: model {getattr(model, 'name', '?')!r} has no weights in selection {selection!r}")
    dev = _device_of(model)
    params = {k: v.detach() for k, v in sel.items()}
    acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    n = len(dataset)
    counts = [len(dataset.captions(i)) for i in range(n)]
    T = int(model.num_train_timesteps)
    shape = None
    with _eval_mode(model):
        for start in bar(range(0, samples, batch), desc="Fisher", unit="batch", enabled=progress):
            ks = range(start, min(start + batch, samples))
            draws = [fisher_draws(seed, n, counts, k, T, flips) for k in ks]
            with torch.no_grad():
                imgs = dataset.images([d[0] for d in draws]).to(dev)
                flip = torch.tensor([d[3] for d in draws], device=dev)
                imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
                lat = model.latents(imgs)
                emb = model.text_embeddings([dataset.captions(d[0])[d[1]] for d in draws])
            if shape is None:
                shape = tuple(lat.shape[1:])
            noise = torch.stack([torch.randn(shape, generator=generator(seed, "unlearning/fisher-noise", k))
                                 for k in ks]).to(dev, lat.dtype)
            t = torch.tensor([d[2] for d in draws], device=dev, dtype=torch.long)
            g = per_sample_gradients(model, params, lat, emb, t, noise, method=method)
            for k in acc:
                acc[k] += g[k].detach().double().pow(2).sum(0)
    return {k: (v / samples).to(params[k].dtype).cpu() for k, v in acc.items()}


def clamp_fisher(fisher: Mapping[str, Any], floor: float) -> dict:
    """``F`` clamped from below at ``floor × mean(F)`` (mean over all entries of all tensors)."""
    import torch

    total = sum(float(v.double().sum()) for v in fisher.values())
    count = sum(v.numel() for v in fisher.values())
    mean = total / max(count, 1)
    if not mean > 0:
        raise UserError("unlearning: the Fisher diagonal is zero everywhere (no gradient reaches the selected "
                        "weights); choose another selection or use variant 'sgd'")
    return {k: torch.clamp(v, min=floor * mean) for k, v in fisher.items()}
