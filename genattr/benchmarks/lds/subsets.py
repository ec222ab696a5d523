"""The LDS benchmark's pure functions: the subset draw, the subset size, the training seeds, a query's digest, the
attenuation bound of the ceiling and the Spearman correlation it uses."""

from __future__ import annotations

import math

from genattr.harness.api import Query
from genattr.harness.errors import UserError


def draw_subsets(seed: int, n: int, m: int, beta: float) -> list:
    """The M subsets as sorted training-index arrays: ``S_j = sorted(numpy_rng(seed, "lds/subset", j).choice(n,
    ⌊β·n⌋, replace=False))``."""
    import numpy as np

    from genattr.harness.seeding import numpy_rng

    size = subset_size(n, beta)
    return [np.sort(numpy_rng(int(seed), "lds/subset", j).choice(int(n), size=size, replace=False))
            for j in range(int(m))]


def attenuation_bound(rho: float, seeds: int = 1) -> float:
    """The highest correlation any prediction can reach with outputs that are averaged over ``seeds`` training
    seeds, when two single-seed runs correlate ``rho``: ``sqrt(reliability)``, with reliability ``rho`` for one seed
    and ``R·rho / (1 + (R−1)·rho)`` for R (Spearman-Brown). Classical model: output = expected output +
    independent seed noise; the expected output itself correlates ``sqrt(reliability)`` with the noisy one
    (Spearman's correction for attenuation). 0 when ``rho ≤ 0``."""
    rho, r = float(rho), int(seeds)
    if rho <= 0:
        return 0.0
    return float(math.sqrt(min(1.0, r * rho / (1 + (r - 1) * rho))))


def subset_size(n: int, beta: float) -> int:
    """``⌊β·n⌋``, checked to leave at least one item in and one out."""
    size = int(math.floor(float(beta) * int(n)))
    if not 1 <= size < int(n):
        raise UserError(f"lds: beta={beta} gives subsets of {size} of N={n} items; it must keep at least one item "
                        "and leave at least one out")
    return size


def seed_for(train_seed: int, r: int) -> int:
    """Training seed ``r`` of every subset: the run's training seed for r = 0, else ``derive_seed(train seed,
    "lds/seed", r)`` (31 bits)."""
    from .._counterfactual import derive

    return int(train_seed) if int(r) == 0 else derive(int(train_seed), "lds/seed", int(r))


def query_digest(q: Query) -> str:
    """What identifies a query's output: id, prompt, mask and the image's pixels."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"{q.id}\x1f{q.prompt}\x1f".encode())
    img = q.image.detach().float().cpu().contiguous()
    h.update(str(tuple(img.shape)).encode() + img.numpy().tobytes())
    if q.mask is not None:
        h.update(q.mask.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _spearman(a, b) -> float:
    from genattr.harness.statistics import spearman

    return spearman(a, b)
