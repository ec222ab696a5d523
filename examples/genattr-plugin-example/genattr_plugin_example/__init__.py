"""An example third-party genattr plugin: one attribution method, one dataset and two metrics.

* method ``nearest-pixel`` — score of training image z for query ẑ: −d(ẑ, z) with d the L2, L1 or cosine distance of
  the flattened pixels (higher = more influential, as genattr requires). Images are compared at the query's
  resolution.
* dataset ``blobs`` — procedural captioned RGB images: one or two soft coloured blobs at named places on a dark
  background ("a red blob at the top left"), deterministic in (seed, index). It implements the optional
  ``heldout(n, count)`` protocol method, so the leave-K-out benchmark draws its query captions from blobs the training
  set never saw, and takes its size as ``n``.
* metric ``precision-at-k`` (retrieval, column ``precision@10``) — the fraction of the top k that are true sources.
* metric ``loss-ratio`` (counterfactual) — the retrained model's mean query loss over θ0's (> 1: the removal made
  the query harder), from the per-timestep losses a counterfactual benchmark hands every metric.

Everything comes from the top-level ``genattr`` API: a plugin never imports ``genattr.harness``.
"""

from __future__ import annotations

import genattr
from genattr import UserError

DISTANCES = ("l2", "l1", "cosine")


class NearestPixel:
    """Negative pixel-space distance to the query (l2 | l1 | cosine)."""

    name = "nearest-pixel"
    version = "1"
    needs_model = False

    def __init__(self, distance: str = "l2", batch_size: int = 512):
        if distance not in DISTANCES:
            raise UserError(
                f"nearest-pixel: unknown distance {distance!r}; choose from {', '.join(DISTANCES)}"
            )
        self.config = {"distance": distance, "batch_size": int(batch_size)}
        self._train = None
        self._key = None

    def prepare(self, ctx) -> None:
        key = ctx.train_set.fingerprint
        if key == self._key:
            return
        self._train = ctx.train_set.images().reshape(len(ctx.train_set), -1).float()
        self._key = key

    def attribute(self, ctx, queries, candidates=None):
        import torch
        import torch.nn.functional as F

        self.prepare(ctx)
        train = self._train if candidates is None else self._train[torch.as_tensor(list(candidates))]
        q = torch.stack([query.image for query in queries]).reshape(len(queries), -1).float()
        if q.shape[1] != train.shape[1]:
            raise UserError(
                f"nearest-pixel: query has {q.shape[1]} values, training images {train.shape[1]}"
            )
        out = []
        for start in range(0, train.shape[0], self.config["batch_size"]):
            t = train[start:start + self.config["batch_size"]]
            d = self.config["distance"]
            if d == "l2":
                s = -torch.cdist(q, t, p=2)
            elif d == "l1":
                s = -torch.cdist(q, t, p=1)
            else:
                s = F.normalize(q, dim=1) @ F.normalize(t, dim=1).T - 1.0
            out.append(s)
        return torch.cat(out, dim=1).numpy().astype("float64")


# -- a dataset -----------------------------------------------------------------------------------------------------
COLOURS = {"red": (1.0, -0.8, -0.8), "green": (-0.8, 1.0, -0.8), "blue": (-0.8, -0.8, 1.0),
           "yellow": (1.0, 1.0, -0.8)}
PLACES = {"top left": (0.3, 0.3), "top right": (0.3, 0.7), "bottom left": (0.7, 0.3), "bottom right": (0.7, 0.7),
          "centre": (0.5, 0.5)}


def _blob_scene(seed: int, index: int):
    rng = genattr.numpy_rng(seed, "blobs", index)
    k = 1 + int(rng.integers(2))
    places = rng.choice(len(PLACES), size=k, replace=False)
    return [(list(COLOURS)[int(rng.integers(len(COLOURS)))], list(PLACES)[int(p)]) for p in places]


def _caption(scene, variant: int) -> str:
    parts = [f"a {c} blob at the {p}" for c, p in scene]
    joined = " and ".join(parts)
    return (joined, f"{joined} on a dark background", f"a picture of {joined}")[variant % 3]


def Blobs(n: int = 96, resolution: int = 8, seed: int = 0, captions_per_image: int = 2, start: int = 0):
    """``n`` procedural blob images (indices ``start …``) as a genattr dataset with a ``heldout(n, count)``."""
    import torch

    if int(n) < 1 or int(resolution) < 4:
        raise UserError(f"blobs: n must be positive and resolution at least 4, got n={n}, resolution={resolution}")
    r = int(resolution)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, r), torch.linspace(0, 1, r), indexing="ij")
    images, captions, ids = [], [], []
    for index in range(int(start), int(start) + int(n)):
        scene = _blob_scene(seed, index)
        img = torch.full((3, r, r), -1.0)
        for colour, place in scene:
            cy, cx = PLACES[place]
            w = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
            img = img * (1 - w) + torch.tensor(COLOURS[colour])[:, None, None] * w
        images.append(img.clamp(-1, 1))
        captions.append(tuple(_caption(scene, v) for v in range(int(captions_per_image))))
        ids.append(f"blobs-{index:05d}")
    ds = genattr.InMemoryDataset("blobs", "1", ids, torch.stack(images), captions,
                                 meta={"resolution": r, "seed": int(seed), "start": int(start)})

    def heldout(n_train: int, count: int):
        held = Blobs(n=count, resolution=r, seed=seed, captions_per_image=captions_per_image,
                     start=int(start) + int(n_train))
        return [(held.ids[i], held.captions(i)) for i in range(len(held))]

    ds.heldout = heldout
    return ds


# -- two metrics ---------------------------------------------------------------------------------------------------
class PrecisionAtK:
    """Precision@k: the fraction of the top ``k`` that are true sources (ties: positives last)."""

    name = "precision-at-k"
    version = "1"
    kind = "retrieval"
    higher_is_better = True

    def __init__(self, k: int = 10):
        self.k = int(k)
        self.config = {"k": self.k}
        self.column = f"precision@{self.k}"
        self.display = f"Precision@{self.k}"

    def __call__(self, scores, positives) -> float:
        import numpy as np

        s = np.asarray(scores, dtype=np.float64)
        pos = np.zeros(s.size, dtype=bool)
        pos[np.asarray(positives, dtype=np.int64)] = True
        order = np.lexsort((pos, -np.where(np.isnan(s), -np.inf, s)))
        return float(pos[order[: self.k]].mean())


class LossRatio:
    """The retrained model's mean query loss over θ0's (from the per-timestep losses a benchmark passes)."""

    name = "loss-ratio"
    version = "1"
    kind = "counterfactual"
    higher_is_better = True

    def __init__(self):
        self.config = {}

    def __call__(self, base_model, retrained_model, query, *, base_losses, retrained_losses) -> float:
        import numpy as np

        return float(np.mean(retrained_losses) / max(float(np.mean(base_losses)), 1e-12))


@genattr.hookimpl
def register_methods(register):
    register("nearest-pixel", NearestPixel, version=NearestPixel.version,
             description="Example plugin: negative pixel distance to the query (l2 | l1 | cosine)", needs_model=False)


@genattr.hookimpl
def register_datasets(register):
    register("blobs", Blobs, version="1", description="Example plugin: procedural coloured blobs with captions")


@genattr.hookimpl
def register_metrics(register):
    register("precision-at-k", PrecisionAtK, version="1", kind="retrieval", higher_is_better=True,
             display="Precision@K", description="Example plugin: fraction of the top K that are true sources")
    register("loss-ratio", LossRatio, version="1", kind="counterfactual", higher_is_better=True,
             display="L ratio", description="Example plugin: retrained / original mean query loss")
