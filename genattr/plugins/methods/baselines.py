"""Model-free reference baselines: ``random`` and ``pixel`` (PAPER_NOTES §4; the paper's Table 1 rows "Random" and
"Pixel").

* :class:`RandomMethod` — the chance baseline: scores drawn uniformly from ``[0, 1)``. Each query's scores come from
  a generator seeded by ``(seed, "random", salt, query id)`` (``genattr.harness.seeding``; ``seed`` is the option
  when given, else the run's), so they do not depend on
  which other queries share the batch, nor on ``candidates`` (a candidate subset gets exactly the full scores at
  those indices).
* :class:`PixelMethod` — cosine similarity of flattened pixels,
  ``τ(ẑ, z_i) = max(cos(x̂, x_i), cos(flip(x̂), x_i))`` with ``flip`` the horizontal flip. The max over flips mirrors
  the random horizontal flips used in training (a training image and its mirror are the same training example);
  ``cos(flip(x̂), x_i) = cos(x̂, flip(x_i))``, so flipping the query is the same as flipping the training image.
  A query whose resolution or channel count differs from the training set's is resized (bilinear, antialiased) /
  converted (grey ↔ RGB) to the training set's format first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genattr.harness.api import AttributionContext, Query

from ._presets import check_seed, method_seed


def _candidate_indices(n: int, candidates: Sequence[int] | None) -> np.ndarray:
    if candidates is None:
        return np.arange(n)
    idx = np.asarray(list(candidates), dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"candidate indices must be in 0..{n - 1}")
    return idx % n if idx.size else idx


from genattr.harness.data import match_format  # noqa: E402,F401 - re-exported


def query_images(queries: Sequence[Query]):
    """Stack the queries' images into one ``Q×C×H×W`` float tensor (they must share a shape)."""
    import torch

    shapes = {tuple(q.image.shape) for q in queries}
    if len(shapes) > 1:
        # resize everything to the largest resolution so a mixed batch still stacks
        c = max(s[0] for s in shapes)
        r = max(s[-1] for s in shapes)
        return torch.cat([match_format(q.image[None], c, r) for q in queries])
    return torch.stack([q.image.float() for q in queries])


class RandomMethod:
    """Uniform random scores in ``[0, 1)``, seeded from ``(seed, salt, query id)`` — the chance baseline.

    Config: ``salt`` (default ``""``): an extra key mixed into the seed, to draw several independent random
    rankings under one run seed (the paper uses 10 random removal sets per K). ``seed`` (default null: the run's
    ``ctx.seed``, which with ``model_seeds`` is the model seed): a second *method* seed on the same models and
    queries, the option every seeded built-in takes (docs/plugins.md); it enters the configuration only when given,
    so the default configuration and its hash are unchanged."""

    name = "random"
    version = "1"
    needs_model = False

    def __init__(self, salt: str = "", seed: int | None = None):
        from genattr.presets import check_value

        check_seed(self.name, seed)
        check_value("random", "salt", salt, _Scalar())
        self.config = {"salt": str(salt)}
        if seed is not None:
            self.config["seed"] = int(seed)

    def prepare(self, ctx: AttributionContext) -> None:
        return None

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates=None) -> np.ndarray:
        from genattr.harness.seeding import numpy_rng

        n = len(ctx.train_set)
        idx = _candidate_indices(n, candidates)
        out = np.empty((len(queries), idx.size), dtype=np.float64)
        seed = method_seed(ctx, self.config.get("seed"))
        for k, q in enumerate(queries):
            rng = numpy_rng(seed, "random", self.config["salt"], str(q.id))
            out[k] = rng.random(n)[idx]
        return out


class _Scalar:
    """A string or a number (the random method's salt is mixed into its seed as text)."""

    def problem(self, value):
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a string or a number, got {value!r}"


class PixelMethod:
    """Cosine similarity of flattened pixels, the max over the query and its horizontal flip (see module docs).

    Config: ``flip`` (default True): take the max over the horizontal flip; ``batch_size`` (default 1024): training
    images compared per chunk (memory only; scores do not depend on it)."""

    name = "pixel"
    version = "1"
    needs_model = False

    def __init__(self, flip: bool = True, batch_size: int = 1024):
        from genattr.presets import Flag, Integer, check_values

        check_values("pixel", {"flip": flip, "batch_size": batch_size}, {"flip": Flag(), "batch_size": Integer(min=1)})
        self.config = {"flip": bool(flip), "batch_size": int(batch_size)}

    def prepare(self, ctx: AttributionContext) -> None:
        return None

    def _query_features(self, ctx: AttributionContext, queries: Sequence[Query]):
        import torch
        import torch.nn.functional as F

        ts = ctx.train_set
        x = match_format(query_images(queries), ts.channels, ts.resolution)
        views = [x]
        if self.config["flip"]:
            views.append(torch.flip(x, dims=[-1]))
        return [F.normalize(v.reshape(v.shape[0], -1).double(), dim=1, eps=1e-12) for v in views]

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates=None) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if len(queries) == 0:
            n = len(ctx.train_set) if candidates is None else len(list(candidates))
            return np.zeros((0, n))
        idx = _candidate_indices(len(ctx.train_set), candidates)
        views = self._query_features(ctx, queries)
        out = np.empty((len(queries), idx.size), dtype=np.float64)
        bs = self.config["batch_size"]
        with torch.no_grad():
            for s in range(0, idx.size, bs):
                chunk = idx[s : s + bs]
                t = ctx.train_set.images(chunk.tolist()).float()
                t = F.normalize(t.reshape(t.shape[0], -1).double(), dim=1, eps=1e-12)
                sims = torch.stack([v @ t.T for v in views]).amax(dim=0)
                out[:, s : s + chunk.size] = sims.numpy()
        return out
