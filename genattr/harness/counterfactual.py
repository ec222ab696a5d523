"""Counterfactual host services: the per-timestep query loss ΔL is made of, and the regeneration ΔG compares.

Public (``genattr.query_loss``, ``genattr.regenerate``): any benchmark or metric plugin computes θ0's and a
retrained model's side with the same noise through these, whatever the model, as long as it meets
:class:`~genattr.harness.api.T2IModel` (``latents``, ``loss``, ``generate``, ``num_train_timesteps``).
"""

from __future__ import annotations

#: The paper's ΔL timestep stride (t = 0, 5, …, 995 for a 1000-step DDPM).
LOSS_STRIDE = 5


def loss_timesteps(num_train_timesteps: int = 1000, stride: int = LOSS_STRIDE) -> list[int]:
    """``0, stride, 2·stride, …`` below ``num_train_timesteps``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return list(range(0, int(num_train_timesteps), int(stride)))


def query_noise_key(query) -> str:
    """The stable key the query's ΔL noise derives from."""
    return f"query:{query.id}"


def query_loss(model, query, *, seed: int = 0, stride: int = LOSS_STRIDE, batch_size: int = 100):
    """Per-timestep DDPM losses of ``query`` (its image, prompt and optional mask) under ``model``: a float64 numpy
    array over :func:`loss_timesteps`. The noise for timestep ``t`` is ``item_noise(seed, "query:<id>", 0, t)``:
    identical for every model, so two models' losses can be subtracted term by term."""
    import numpy as np
    import torch

    from genattr.harness.seeding import item_noise

    ts = loss_timesteps(getattr(model, "num_train_timesteps", 1000), stride)
    image = query.image.detach().float().cpu()
    if image.ndim != 3:
        raise ValueError(f"query image must be C×H×W, got shape {tuple(image.shape)}")
    with torch.no_grad():
        latent_shape = tuple(model.latents(image[None]).shape[1:])
    key = query_noise_key(query)
    out: list[float] = []
    with torch.no_grad():
        for s in range(0, len(ts), batch_size):
            chunk = ts[s:s + batch_size]
            b = len(chunk)
            noise = torch.stack([item_noise(seed, key, 0, t, latent_shape) for t in chunk])
            images = image[None].expand(b, *image.shape).contiguous()
            mask = None
            if query.mask is not None:
                m = query.mask.float().cpu()
                mask = m[None].expand(b, *m.shape).contiguous()
            losses = model.loss(images, [query.prompt] * b, torch.as_tensor(chunk, dtype=torch.long), noise, mask=mask)
            out.extend(float(v) for v in losses.detach().cpu().reshape(-1))
    return np.asarray(out, dtype=np.float64)


def query_seed(query, seed: int | None = None) -> int:
    if seed is not None:
        return int(seed)
    if "seed" not in query.meta:
        raise ValueError(f"query {query.id!r} has no meta['seed']; pass seed= to regenerate it")
    return int(query.meta["seed"])


def query_steps(query, steps: int | None = None) -> int:
    if steps is not None:
        return int(steps)
    return int(query.meta.get("steps", 50))


def regenerate(model, query, *, seed: int | None = None, steps: int | None = None):
    """The image (``C×H×W`` in ``[-1, 1]``) ``model`` generates for the query's prompt from the query's seed (the
    noise ε of ΔG), with the query's ``meta["guidance_scale"]`` when set (else the model's default) — for θ0 this
    reproduces the query itself when ``steps`` match the ones it was made with."""
    import torch

    kw = {}
    if query.meta.get("guidance_scale") is not None:
        kw["guidance_scale"] = float(query.meta["guidance_scale"])
    with torch.no_grad():
        img = model.generate([query.prompt], [query_seed(query, seed)], steps=query_steps(query, steps), **kw)
    return img[0].detach().float().cpu()
