"""The regime check: does a base model generalise, or does it copy its training images?

Attribution benchmarks built on a model that memorises measure the wrong thing: when generated queries are
near-copies of training images, the pixel-nearest training image *is* the answer, and pixel similarity is near-optimal
attribution. The real settings (Stable Diffusion, a COCO latent diffusion model) generate images that are not
copies. :func:`regime_check` measures it on a counterfactual benchmark's θ0 and queries:

* **near-copy share** — the share of generated queries nearer to a training image than 90 % of held-out real images
  are (their nearest-neighbour distance to the training set below the held-out reals' 10th percentile). A model that
  generalises generates images about as far from the training set as unseen real images are: ≈ 10 %. With its 95 %
  Wilson interval (``near_copy_ci95``): over Q samples a model that generates like the reals scatters by
  ±√(0.09/Q) (± 1.3 % at Q = 500), so the check's sample count decides what it can tell apart.
* **nearest-neighbour ratio** — mean nearest-neighbour distance of the queries / of the held-out reals (≈ 1 when
  the queries look like new samples; far below 1 when they are copies).

**A latent model is judged on its own renderings.** Its samples pass through its decoder, whose blur alone brings an
image closer to its pixel-nearest training image (a blurred shape sits nearer a crisp one of another shape than a
crisp held-out image does) — that is not copying. So the training and held-out images are compared after the same
round trip through the model (``decode(latents(x))``, the best rendering the model can give them); for a
pixel-space model the round trip is the identity and nothing changes. ``rendered`` in the result says which.

Both in pixel space and in a feature space: seeded random convolutional features (64 random 3×3 filters, ReLU,
average-pooled to 4×4 — a fixed, data-independent embedding that tolerates small shifts). Passing means, in both
spaces, a near-copy share not significantly above :data:`MAX_NEAR_COPY` (the lower end of its 95 % interval at most
10 %: the samples are not nearer to the training set than unseen real images are, beyond what sampling explains)
and a ratio ≥ :data:`MIN_NN_RATIO`. A rule on the share itself would fail a model that generates exactly like the
reals about half the time (its expected share *is* 10 %) and would reward blurred samples, which sit far from
everything.

Reported, not judged: the cosine between the model's noise prediction ε̂(x_t, t, c) on training items and the
noise the empirical optimal denoiser implies at t ∈ {100, 200, 400} — the denoiser that knows the training set
(a softmax over distances to every training item, in the space diffusion runs in; unconditional: captions are not
used). A cosine near 1 means the model behaves like that lookup table. Needs the model's ``latents``,
``add_noise``, ``unet_forward`` and ``text_embeddings`` (the built-in adapters have them); otherwise ``None``.
"""

from __future__ import annotations

from typing import Sequence

#: The passing thresholds.
MAX_NEAR_COPY = 0.10
MIN_NN_RATIO = 0.9

#: Timesteps of the optimal-denoiser comparison.
DENOISER_TIMESTEPS = (100, 200, 400)


def _nn(a, b, chunk: int = 256, index: bool = False):
    """Distance of each row of ``a`` to its nearest row of ``b`` (Euclidean); with ``index``, ``(distances, the
    index of that row of b)``."""
    import torch

    dist, arg = [], []
    b = b.double()
    for i in range(0, a.shape[0], chunk):
        nearest = torch.cdist(a[i:i + chunk].double(), b).min(dim=1)
        dist.append(nearest.values)
        arg.append(nearest.indices)
    if not dist:
        dist, arg = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.long)]
    return (torch.cat(dist), torch.cat(arg)) if index else torch.cat(dist)


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % at ``z`` = 1.96) of a share ``hits / n``; ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def random_features(images, seed: int = 0):
    """Seeded random convolutional features of ``B×C×H×W`` images in [-1, 1]: 64 random 3×3 filters (per input
    channel count), ReLU, average-pooled to 4×4, flattened."""
    import torch
    import torch.nn.functional as F

    from .seeding import generator

    c = images.shape[1]
    g = generator(seed, "regime/random-features", c)
    w = torch.randn(64, c, 3, 3, generator=g) / (3.0 * c ** 0.5)
    x = F.relu(F.conv2d(images.float(), w, padding=1))
    return F.adaptive_avg_pool2d(x, 4).flatten(1)


def _space(query_images, train_images, held_images) -> dict:
    import torch

    dq = _nn(query_images.flatten(1), train_images.flatten(1))
    dr = _nn(held_images.flatten(1), train_images.flatten(1))
    threshold = float(torch.quantile(dr, 0.10))
    near = float((dq < threshold).double().mean())
    ratio = float(dq.mean() / dr.mean().clamp_min(1e-12))
    lo, hi = wilson_interval(int(round(near * len(dq))), len(dq))
    return {"near_copy_share": round(near, 4), "near_copy_ci95": [round(lo, 4), round(hi, 4)],
            "nn_ratio": round(ratio, 4), "query_nn_mean": round(float(dq.mean()), 4),
            "heldout_nn_mean": round(float(dr.mean()), 4), "heldout_nn_p10": round(threshold, 4),
            "passed": lo <= MAX_NEAR_COPY and ratio >= MIN_NN_RATIO}


def denoiser_cosines(model, train_images, captions: Sequence[str], seed: int = 0, draws: int = 32,
                     timesteps: Sequence[int] = DENOISER_TIMESTEPS) -> dict | None:
    """``{t: mean cosine(ε̂, ε*)}`` over ``draws`` training items (see the module docstring), or None when the
    model lacks the pieces."""
    import torch

    from .seeding import generator, numpy_rng

    needed = ("latents", "add_noise", "unet_forward", "text_embeddings")
    if not all(callable(getattr(model, k, None)) for k in needed):
        return None
    ac_all = getattr(getattr(model, "scheduler", None), "alphas_cumprod", None)
    if ac_all is None:
        return None
    with torch.no_grad():
        lat = torch.cat([model.latents(train_images[i:i + 256]) for i in range(0, len(train_images), 256)]).float()
        n = lat.shape[0]
        pick = numpy_rng(seed, "regime/denoiser").choice(n, size=min(draws, n), replace=False)
        out = {}
        for t in timesteps:
            t = int(min(t, int(model.num_train_timesteps) - 1))
            a = float(torch.as_tensor(ac_all)[t])
            x0 = lat[pick]
            eps = torch.randn(x0.shape, generator=generator(seed, "regime/noise", t))
            ts = torch.full((len(pick),), t, dtype=torch.long)
            x_t = model.add_noise(x0.to(model_device(model)), eps.to(model_device(model)), ts.to(model_device(model)))
            emb = model.text_embeddings([captions[int(i)] for i in pick])
            pred = model.unet_forward(x_t, ts.to(model_device(model)), emb).float().cpu()
            x_t = x_t.float().cpu()
            # E[x0 | x_t] under the empirical training distribution, then the noise it implies
            d2 = torch.cdist(x_t.flatten(1).double(), (a ** 0.5) * lat.flatten(1).double()) ** 2
            w = torch.softmax(-d2 / (2.0 * (1.0 - a)), dim=1)
            x0_hat = (w @ lat.flatten(1).double()).reshape(x_t.shape)
            eps_star = (x_t.double() - (a ** 0.5) * x0_hat) / ((1.0 - a) ** 0.5)
            cos = torch.nn.functional.cosine_similarity(pred.flatten(1).double(), eps_star.flatten(1), dim=1)
            out[str(t)] = round(float(cos.mean()), 4)
    return out


def model_device(model):
    try:
        return next(model.unet.parameters()).device
    except Exception:  # noqa: BLE001 - a model without a torch UNet: the CPU
        import torch

        return torch.device("cpu")


def regime_check(model, train_set, query_images, held_images, seed: int = 0) -> dict:
    """The regime check's figures (see the module docstring): ``{"pixel": {...}, "features": {...},
    "denoiser_cosine": {t: cos} | None, "passed": bool, "queries": Q, "heldout": R}``. With fewer than 2 held-out
    images the check cannot run: ``{"passed": None, "reason": ...}``."""
    import torch

    if held_images is None or len(held_images) < 2 or len(query_images) == 0:
        return {"passed": None, "reason": "no held-out real images to compare with" if held_images is None or
                len(held_images) < 2 else "no queries"}
    train = train_set.images(list(range(len(train_set)))).float()
    q = torch.stack([x.float() for x in query_images]) if not torch.is_tensor(query_images) else query_images.float()
    r = held_images.float()
    rendered = rendered_by_model(model)
    raw_train = train
    if rendered:
        train, r = _rendered(model, train), _rendered(model, r)
    pixel = _space(q, train, r)
    feats = _space(random_features(q, seed), random_features(train, seed), random_features(r, seed))
    captions = [train_set.captions(i)[0] for i in range(len(train_set))]
    try:
        den = denoiser_cosines(model, raw_train, captions, seed=seed)
    except Exception:  # noqa: BLE001 - a report, never a reason for a run to fail
        den = None
    return {"pixel": pixel, "features": feats, "denoiser_cosine": den, "queries": int(q.shape[0]),
            **({"rendered": "decode(latents(x))"} if rendered else {}),
            "heldout": int(r.shape[0]), "passed": bool(pixel["passed"] and feats["passed"]),
            "thresholds": {"max_near_copy": MAX_NEAR_COPY, "min_nn_ratio": MIN_NN_RATIO}}


#: Namespace and version of the cached checks (:func:`cached_regime_check`).
CACHE_NS, CACHE_VERSION = "regime/checks", "1"


def cached_regime_check(cache, model, train_set, query_images, held_images, seed: int = 0) -> dict:
    """:func:`regime_check` kept in ``cache`` (JSON, namespace :data:`CACHE_NS`), keyed on the model's and the
    training set's fingerprints, the content of the samples and of the held-out images, and ``seed``: a resumed run
    or another worker process reads the figures back instead of rendering the training set again. Without a cache,
    a fingerprint, samples or held-out images it is :func:`regime_check` itself."""
    import hashlib

    import torch

    fps = (getattr(model, "fingerprint", None), getattr(train_set, "fingerprint", None))
    if cache is None or None in fps or held_images is None or len(query_images) == 0:
        return regime_check(model, train_set, query_images, held_images, seed=seed)
    h = hashlib.sha256()
    for part in (query_images, held_images):
        x = part.float() if torch.is_tensor(part) else torch.stack([y.float() for y in part])
        h.update(str(tuple(x.shape)).encode())
        h.update(x.contiguous().cpu().numpy().tobytes())
    key = cache.key("regime-check", CACHE_VERSION, *fps, h.hexdigest(), int(seed))
    got = cache.get_json(CACHE_NS, key)
    if isinstance(got, dict):
        return got
    check = regime_check(model, train_set, query_images, held_images, seed=seed)
    cache.put_json(CACHE_NS, key, check)
    return check


def rendered_by_model(model) -> bool:
    """Whether ``model`` renders through a decoder (a latent model: its ``latents`` are not the images)."""
    latents, decode = getattr(model, "latents", None), getattr(model, "decode", None)
    if not (callable(latents) and callable(decode)):
        return False
    shape = getattr(model, "latent_shape", None)
    probe = (int(getattr(model, "channels", 3)), int(getattr(model, "resolution", 8)),
             int(getattr(model, "resolution", 8)))
    return not (callable(shape) and tuple(shape()) == probe)


def _rendered(model, images, chunk: int = 128):
    """``images`` after a round trip through ``model``'s encoder and decoder (a latent model:
    :func:`rendered_by_model`), clamped to [-1, 1]."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], chunk):
            x = images[i:i + chunk].to(getattr(model, "device", "cpu"))
            out.append(model.decode(model.latents(x)).clamp(-1, 1).float().cpu())
    return torch.cat(out)


def describe(check: dict) -> str:
    """One line: the figures of a regime check."""
    if check.get("passed") is None:
        return f"regime check not run ({check.get('reason')})"
    p, f = check["pixel"], check["features"]
    den = check.get("denoiser_cosine")
    den_s = (", ε̂ vs optimal denoiser cos " + " / ".join(f"{v:.2f}@t{k}" for k, v in den.items())) if den else ""
    def share(s: dict) -> str:
        ci = s.get("near_copy_ci95")
        return f"{s['near_copy_share']:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")

    return (f"{check['queries']} queries vs {check['heldout']} held-out reals: near-copies {share(p)} "
            f"(pixels) / {share(f)} (features), nearest-neighbour ratio {p['nn_ratio']:.2f} / "
            f"{f['nn_ratio']:.2f}{den_s}")
