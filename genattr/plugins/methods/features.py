"""Feature-similarity baselines (PAPER_NOTES §4; the paper's Table 1 rows "CLIP", "CLIP text", "DINO", "DINOv2").

Score: cosine similarity of embeddings, ``τ(ẑ, z_i) = ⟨e(x̂), e(x_i)⟩`` with ``e`` an L2-normalised encoder output
(:mod:`genattr.plugins.encoders`):

* ``clip`` — CLIP image features (default ``openai/clip-vit-base-patch32``, the paper's ViT-B/32);
* ``dino`` — DINO ViT CLS token (default ``facebook/dino-vitb16``);
* ``dinov2`` — DINOv2 CLS token (default ``facebook/dinov2-with-registers-large``, ViT-L/14 with registers);
* ``clip-text`` — CLIP *text* features: each training item's embedding is the mean of its captions' normalised
  text embeddings (renormalised), compared with the query prompt's (COCO items have five captions; the paper
  compares "the training caption" with the prompt — averaging over captions is our choice for several captions);
* ``features`` — the offline stand-in: a small CNN trained on the built-in dataset (``builtin:digits`` /
  ``builtin:shapes``, chosen from the training set's name unless ``encoder`` is set), so the feature family is
  comparable on the built-in miniatures without pretrained weights.

Configuration (all methods): ``model`` (hub id or local directory; ``encoder`` for ``features``), ``batch_size``,
``flip`` (default False: the paper compares plain embeddings; True takes the max over the query's horizontal flip,
like ``pixel``). Training-set embeddings are computed once in ``prepare`` and cached under
``features/train-embeddings`` keyed on the encoder fingerprint and the dataset fingerprint (so every method and
metric using the same encoder on the same data shares them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genattr.harness.api import AttributionContext, Query
from genattr.harness.errors import UserError
from genattr.plugins.methods.baselines import _candidate_indices, query_images

EMBED_NS = "features/train-embeddings"


def train_image_embeddings(encoder, dataset, cache, chunk: int = 256):
    """``N×D`` embeddings of every training image (cached: encoder fingerprint + dataset fingerprint)."""
    import torch

    def compute():
        parts = [encoder.embed_images(dataset.images(list(range(s, min(s + chunk, len(dataset))))))
                 for s in range(0, len(dataset), chunk)]
        return {"embeddings": torch.cat(parts) if parts else torch.zeros(0, encoder.dim)}

    key = cache.key("image-embeddings", encoder.fingerprint, dataset.fingerprint)
    meta = {"encoder": encoder.name, "dataset": getattr(dataset, "name", "?"), "n": len(dataset)}
    return cache.tensors(EMBED_NS, key, compute, meta=meta)["embeddings"].float()


def train_caption_embeddings(encoder, dataset, cache, chunk: int = 512):
    """``N×D``: per training item, the renormalised mean of its captions' normalised text embeddings (cached)."""
    import torch
    import torch.nn.functional as F

    def compute():
        caps = [tuple(dataset.captions(i)) for i in range(len(dataset))]
        flat = [c for cs in caps for c in cs]
        owner = torch.tensor([i for i, cs in enumerate(caps) for _ in cs], dtype=torch.long)
        emb = torch.cat([encoder.embed_texts(flat[s : s + chunk]) for s in range(0, len(flat), chunk)]) if flat \
            else torch.zeros(0, encoder.dim)
        sums = torch.zeros(len(caps), emb.shape[1]).index_add_(0, owner, emb)
        return {"embeddings": F.normalize(sums, dim=1, eps=1e-12)}

    key = cache.key("caption-embeddings", encoder.fingerprint, dataset.fingerprint)
    meta = {"encoder": encoder.name, "dataset": getattr(dataset, "name", "?"), "n": len(dataset)}
    return cache.tensors(EMBED_NS, key, compute, meta=meta)["embeddings"].float()


def builtin_encoder_for(dataset_name: str) -> str | None:
    """``builtin:digits`` / ``builtin:shapes`` for a training set named after a built-in dataset, else None."""
    n = str(dataset_name or "").lower()
    for which in ("digits", "shapes"):
        if n == which or n.startswith(which) or which in n.split("+")[0]:
            return f"builtin:{which}"
    return None


def builtin_dataset_for_encoder(dataset):
    """The dataset itself when it carries ``labels``/``specs`` (so the encoder can train on it), else None (the
    encoder then trains on the default built-in dataset)."""
    return dataset if (hasattr(dataset, "labels") or hasattr(dataset, "specs")) else None


class _ImageFeatureMethod:
    """Cosine similarity of image embeddings from one encoder (see the module docstring)."""

    name = ""
    version = "1"
    needs_model = False
    family = ""  # encoder family: clip | dino | dinov2

    def __init__(self, model: str | None = None, batch_size: int = 32, flip: bool = False):
        from genattr.plugins.encoders import DEFAULT_MODELS

        from genattr.presets import Flag, Integer, check_values

        check_values(self.name, {"batch_size": batch_size, "flip": flip},
                     {"batch_size": Integer(min=1), "flip": Flag()})
        self.config = {"model": str(model or DEFAULT_MODELS[self.family]), "batch_size": int(batch_size),
                       "flip": bool(flip)}
        self._state: tuple | None = None

    # -- encoder ---------------------------------------------------------------------------------------------
    def encoder_spec(self, ctx: AttributionContext) -> str:
        return f"{self.family}:{self.config['model']}"

    def encoder(self, ctx: AttributionContext):
        from genattr.plugins.encoders import get_encoder

        return get_encoder(self.encoder_spec(ctx), cache=ctx.cache, device=ctx.device,
                           setting=f"{self.name}.model", batch_size=self.config["batch_size"])

    # -- protocol --------------------------------------------------------------------------------------------
    def prepare(self, ctx: AttributionContext) -> None:
        enc = self.encoder(ctx)
        key = (enc.fingerprint, ctx.train_set.fingerprint)
        if self._state is None or self._state[0] != key:
            self._state = (key, enc, train_image_embeddings(enc, ctx.train_set, ctx.cache))

    def _query_embeddings(self, enc, queries: Sequence[Query]):
        import torch

        x = query_images(queries)
        views = [enc.embed_images(x)]
        if self.config["flip"]:
            views.append(enc.embed_images(torch.flip(x, dims=[-1])))
        return views

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates=None) -> np.ndarray:
        import torch

        idx = _candidate_indices(len(ctx.train_set), candidates)
        if len(queries) == 0:
            return np.zeros((0, idx.size))
        self.prepare(ctx)
        _, enc, train = self._state
        t = train[torch.as_tensor(idx, dtype=torch.long)].double()
        views = self._query_embeddings(enc, queries)
        return torch.stack([v.double() @ t.T for v in views]).amax(dim=0).numpy()


class ClipImageMethod(_ImageFeatureMethod):
    """Cosine similarity of CLIP image embeddings (default ViT-B/32, ``openai/clip-vit-base-patch32``)."""

    name = "clip"
    family = "clip"


class DinoMethod(_ImageFeatureMethod):
    """Cosine similarity of DINO ViT CLS embeddings (default ViT-B/16, ``facebook/dino-vitb16``)."""

    name = "dino"
    family = "dino"


class Dinov2Method(_ImageFeatureMethod):
    """Cosine similarity of DINOv2 CLS embeddings (default ViT-L/14 with registers,
    ``facebook/dinov2-with-registers-large``)."""

    name = "dinov2"
    family = "dinov2"


class BuiltinFeatureMethod(_ImageFeatureMethod):
    """Cosine similarity of embeddings from a small CNN trained on the built-in dataset (the offline stand-in for
    CLIP / DINO; see :mod:`genattr.plugins.encoders`).

    Config: ``encoder`` (default ``"auto"``: ``builtin:digits`` for a training set named ``digits…``,
    ``builtin:shapes`` for ``shapes…``; any encoder spec is accepted), ``encoder_options`` (``dim``, ``steps``,
    ``seed``, … of the built-in encoder), ``batch_size``, ``flip``. The encoder trains on the training set itself
    when it carries its labels (``Digits.labels`` / ``Shapes.specs``), otherwise on the default built-in dataset."""

    name = "features"
    family = "builtin"

    def __init__(self, encoder: str = "auto", encoder_options: dict | None = None, batch_size: int = 256,
                 flip: bool = False):
        from genattr.presets import Flag, Integer, check_values

        check_values("features", {"batch_size": batch_size, "flip": flip},
                     {"batch_size": Integer(min=1), "flip": Flag()})
        self.config = {"encoder": str(encoder or "auto"), "encoder_options": dict(encoder_options or {}),
                       "batch_size": int(batch_size), "flip": bool(flip)}
        self._state = None

    def encoder_spec(self, ctx: AttributionContext) -> str:
        spec = self.config["encoder"]
        if spec == "auto":
            spec = builtin_encoder_for(ctx.train_set.name)
            if spec is None:
                raise UserError(f"features: no built-in encoder for training set {ctx.train_set.name!r}; set "
                                "encoder=builtin:digits|builtin:shapes or a model spec (e.g. --set "
                                "features.encoder=builtin:shapes)")
        return spec

    def encoder(self, ctx: AttributionContext):
        from genattr.plugins.encoders import get_encoder

        spec = self.encoder_spec(ctx)
        opts = dict(self.config["encoder_options"])
        if spec.startswith("builtin:"):
            return get_encoder(spec, cache=ctx.cache, device=ctx.device,
                               dataset=builtin_dataset_for_encoder(ctx.train_set), **opts)
        return get_encoder(spec, cache=ctx.cache, device=ctx.device, setting="features.encoder", **opts)


class ClipTextMethod:
    """Cosine similarity between the CLIP text embedding of the query prompt and each training item's captions
    (mean of the captions' normalised embeddings, renormalised). Default ``openai/clip-vit-base-patch32``.

    Config: ``model``, ``batch_size`` (captions per text batch)."""

    name = "clip-text"
    version = "1"
    needs_model = False

    def __init__(self, model: str | None = None, batch_size: int = 256):
        from genattr.plugins.encoders import DEFAULT_MODELS

        from genattr.presets import Integer, check_value

        check_value("clip-text", "batch_size", batch_size, Integer(min=1))
        self.config = {"model": str(model or DEFAULT_MODELS["clip"]), "batch_size": int(batch_size)}
        self._state = None

    def encoder(self, ctx: AttributionContext):
        from genattr.plugins.encoders import get_encoder

        return get_encoder(f"clip:{self.config['model']}", cache=ctx.cache, device=ctx.device,
                           setting="clip-text.model")

    def prepare(self, ctx: AttributionContext) -> None:
        enc = self.encoder(ctx)
        key = (enc.fingerprint, ctx.train_set.fingerprint)
        if self._state is None or self._state[0] != key:
            self._state = (key, enc, train_caption_embeddings(enc, ctx.train_set, ctx.cache,
                                                              chunk=self.config["batch_size"]))

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates=None) -> np.ndarray:
        import torch

        idx = _candidate_indices(len(ctx.train_set), candidates)
        if len(queries) == 0:
            return np.zeros((0, idx.size))
        self.prepare(ctx)
        _, enc, train = self._state
        q = enc.embed_texts([q.prompt for q in queries], batch_size=self.config["batch_size"]).double()
        return (q @ train[torch.as_tensor(idx, dtype=torch.long)].double().T).numpy()
