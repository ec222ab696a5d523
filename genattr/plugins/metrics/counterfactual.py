"""Counterfactual metrics of the leave-K-out protocol (PAPER_NOTES §2): ΔL and ΔG.

Each metric compares the model that generated the query (θ0) with a model retrained from scratch without the top-K
training items (θ₋K) and is called as ``metric(base_model, retrained_model, query, **options) -> float``.

* :class:`DeltaLoss` — ``ΔL = L(ẑ, θ₋K) − L(ẑ, θ0)`` on the query image and prompt, averaged over the strided
  timesteps ``t = 0, 5, …, 995`` (stride 5, as the paper), with one noise draw per ``t`` derived from
  ``(seed, "query:<id>", 0, t)`` — the *same* noise for both models, so the difference measures the models and not
  the noise. Higher is better (removing the influential items should make the query harder to reproduce).
* :class:`DeltaGenMSE` — pixel mean squared error between the images θ0 and θ₋K generate from the same prompt and
  seed (hence the same initial and sampler noise). Pixels are compared on the ``[0, 1]`` scale (the images are
  ``[-1, 1]`` tensors, so this is a quarter of the MSE on that scale). Higher is better.
* :class:`DeltaGenSim` — cosine similarity of image embeddings of those two images, from an encoder plugin
  (``genattr.plugins.encoders.get_encoder``): ``clip:<id or dir>`` (CLIP, the paper's choice) when the user provides
  weights, and for the built-in datasets ``builtin:<dataset>`` — a small CNN trained on the built-in data, the
  documented offline stand-in for CLIP. Lower is better.

The helpers :func:`~genattr.harness.counterfactual.query_loss` (per-timestep losses of one query under one model) and
:func:`~genattr.harness.counterfactual.regenerate` (the image a model generates for a query's prompt and seed) are
host services, so a benchmark can cache the θ0 side once per query and share one regenerated image between the two
ΔG metrics (pass ``images=(base, retrained)``, or ``base_losses=``/``retrained_losses=``).
"""

from __future__ import annotations

from typing import Any, Sequence

from genattr.harness.counterfactual import (  # noqa: F401 - re-exported: the helpers live in the host
    LOSS_STRIDE,
    loss_timesteps,
    query_loss,
    query_noise_key,
    query_seed,
    query_steps,
    regenerate,
)


class _CounterfactualMetric:
    kind = "counterfactual"

    def __init__(self, **config: Any):
        self.config = dict(config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config}>"


class DeltaLoss(_CounterfactualMetric):
    """ΔL = L(ẑ, θ₋K) − L(ẑ, θ0), averaged over stride-5 timesteps with noise shared between the two models.

    Options (constructor defaults, overridable per call): ``stride`` (5), ``seed`` (0; the noise seed),
    ``batch_size`` (100). Per call, ``base_losses`` / ``retrained_losses`` (arrays from :func:`query_loss` with the
    same stride and seed) skip recomputing a side that is already known.
    """

    name = "delta-loss"
    version = "1"
    higher_is_better = True

    def __init__(self, stride: int = LOSS_STRIDE, seed: int = 0, batch_size: int = 100):
        super().__init__(stride=int(stride), seed=int(seed), batch_size=int(batch_size))

    def __call__(self, base_model, retrained_model, query, *, stride: int | None = None, seed: int | None = None,
                 batch_size: int | None = None, base_losses=None, retrained_losses=None, **_: Any) -> float:
        import numpy as np

        kw = dict(stride=int(stride if stride is not None else self.config["stride"]),
                  seed=int(seed if seed is not None else self.config["seed"]),
                  batch_size=int(batch_size or self.config["batch_size"]))
        if base_losses is None:
            base_losses = query_loss(base_model, query, **kw)
        if retrained_losses is None:
            retrained_losses = query_loss(retrained_model, query, **kw)
        base_losses = np.asarray(base_losses, dtype=np.float64)
        retrained_losses = np.asarray(retrained_losses, dtype=np.float64)
        if base_losses.shape != retrained_losses.shape:
            raise ValueError(f"loss arrays differ in shape: {base_losses.shape} vs {retrained_losses.shape}")
        return float(np.mean(retrained_losses - base_losses))


def _pair(base_model, retrained_model, query, images, seed, steps):
    if images is not None:
        a, b = images
        return a.detach().float().cpu(), b.detach().float().cpu()
    return (regenerate(base_model, query, seed=seed, steps=steps),
            regenerate(retrained_model, query, seed=seed, steps=steps))


class DeltaGenMSE(_CounterfactualMetric):
    """ΔG (MSE): mean squared pixel difference, on the ``[0, 1]`` scale, between ``G_θ0(ε, c)`` and ``G_θ₋K(ε, c)``
    (same prompt ``c``, same seed hence same noise ε). Options: ``seed`` / ``steps`` (default: the query's
    ``meta["seed"]`` / ``meta["steps"]``); ``images=(base_image, retrained_image)`` to pass both images instead."""

    name = "delta-gen-mse"
    version = "1"
    higher_is_better = True

    def __init__(self, steps: int | None = None):
        super().__init__(steps=steps)

    def __call__(self, base_model, retrained_model, query, *, seed: int | None = None, steps: int | None = None,
                 images: Sequence | None = None, **_: Any) -> float:
        a, b = _pair(base_model, retrained_model, query, images, seed,
                     steps if steps is not None else self.config["steps"])
        if a.shape != b.shape:
            raise ValueError(f"generated images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        return float((((a - b) / 2.0) ** 2).mean())


class DeltaGenSim(_CounterfactualMetric):
    """ΔG (similarity): cosine similarity of image embeddings of ``G_θ0(ε, c)`` and ``G_θ₋K(ε, c)``.

    ``encoder``: an encoder spec (``"builtin:digits"``, ``"builtin:shapes"``, ``"clip:<hub id or directory>"``) or an
    object with ``embed_images(B×C×H×W) -> B×D``. Default: ``builtin:<dataset>`` when the query's
    ``meta["dataset"]`` is a built-in dataset, else ``clip:openai/clip-vit-base-patch32`` (the paper's CLIP; it
    must be available locally). Per call: ``cache``, ``device`` and ``dataset`` (what a built-in encoder trains on)
    are handed to ``get_encoder``; ``images=(base, retrained)``, ``seed``, ``steps`` as for :class:`DeltaGenMSE`.
    """

    name = "delta-gen-sim"
    version = "1"
    higher_is_better = False

    BUILTIN = ("digits", "shapes")
    DEFAULT_CLIP = "clip:openai/clip-vit-base-patch32"

    def __init__(self, encoder: Any = None, steps: int | None = None):
        super().__init__(encoder=encoder if isinstance(encoder, (str, type(None))) else repr(encoder), steps=steps)
        self._encoder_obj = None if isinstance(encoder, (str, type(None))) else encoder
        self._encoders: dict = {}

    @classmethod
    def default_spec(cls, dataset_name: str | None) -> str:
        if dataset_name in cls.BUILTIN:
            return f"builtin:{dataset_name}"
        return cls.DEFAULT_CLIP

    def encoder(self, spec=None, *, query=None, cache=None, device: str = "cpu", dataset=None):
        """Resolve an encoder object (kept for the life of this metric object)."""
        if spec is not None and not isinstance(spec, str):
            return spec
        if spec is None and self._encoder_obj is not None:
            return self._encoder_obj
        spec = spec or self.config["encoder"] or self.default_spec((query.meta.get("dataset") if query else None))
        key = (spec, id(cache), device, getattr(dataset, "fingerprint", None))
        if key not in self._encoders:
            from genattr.plugins.encoders import get_encoder

            self._encoders[key] = get_encoder(spec, cache=cache, device=device, dataset=dataset)
        return self._encoders[key]

    def __call__(self, base_model, retrained_model, query, *, encoder=None, cache=None, device: str = "cpu",
                 dataset=None, seed: int | None = None, steps: int | None = None, images: Sequence | None = None,
                 **_: Any) -> float:
        import torch

        a, b = _pair(base_model, retrained_model, query, images, seed,
                     steps if steps is not None else self.config["steps"])
        enc = self.encoder(encoder, query=query, cache=cache, device=device, dataset=dataset)
        with torch.no_grad():
            e = enc.embed_images(torch.stack([a, b]).to(device)).detach().float().cpu()
        e = torch.nn.functional.normalize(e, dim=-1)
        return float((e[0] * e[1]).sum())
