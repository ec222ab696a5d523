"""Deterministic randomness from stable keys.

Every random draw in genattr derives from the run seed and a stable key (DESIGN.md, Determinism): a cell's seed from
(run seed, cell id); the noise for a training item from (item id, caption index, timestep). Never from a batch
position, so scores do not depend on batch sizes.
"""

from __future__ import annotations

import hashlib
from typing import Sequence


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from any sequence of keys (their ``str`` forms, separated unambiguously)."""
    h = hashlib.sha256("\x1f".join(f"{type(k).__name__}:{k}" for k in keys).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(*keys: object):
    """A CPU ``torch.Generator`` seeded from ``keys``."""
    import torch

    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


def numpy_rng(*keys: object):
    """A ``numpy.random.Generator`` seeded from ``keys``."""
    import numpy as np

    return np.random.default_rng(derive_seed(*keys))


def item_noise(seed: int, item_id: str, caption_index: int, timestep: int, shape: Sequence[int]):
    """Gaussian noise for one (item, caption, timestep): identical whenever the same key is asked for."""
    import torch

    return torch.randn(tuple(shape), generator=generator(seed, "noise", item_id, int(caption_index), int(timestep)))


def noise_batch(seed: int, item_ids: Sequence[str], caption_indices: Sequence[int], timesteps: Sequence[int], shape):
    """Stack :func:`item_noise` for a batch: ``len(item_ids) × *shape``."""
    import torch

    return torch.stack(
        [item_noise(seed, i, c, t, shape) for i, c, t in zip(item_ids, caption_indices, timesteps)]
    )


def strided_timesteps(count: int, num_train_timesteps: int = 1000) -> list[int]:
    """``count`` evenly strided timesteps ``0, s, 2s, …`` with ``s = num_train_timesteps // count`` (the paper's
    20 → 0, 50, …, 950)."""
    if count < 1 or count > num_train_timesteps:
        raise ValueError(f"timestep count must be in 1..{num_train_timesteps}, got {count}")
    stride = num_train_timesteps // count
    return [i * stride for i in range(count)]
