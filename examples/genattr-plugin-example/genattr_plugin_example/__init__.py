"""Nearest neighbours in pixel space: an example genattr attribution-method plugin.

Score of training image z for query ẑ: −d(ẑ, z) with d the L2, L1 or cosine distance of the flattened pixels
(higher = more influential, as genattr requires). Images are compared at the query's resolution.
"""

from __future__ import annotations

import genattr
from genattr.harness.errors import UserError

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


@genattr.hookimpl
def register_methods(register):
    register("nearest-pixel", NearestPixel, version=NearestPixel.version,
             description="Example plugin: negative pixel distance to the query (l2 | l1 | cosine)", needs_model=False)
