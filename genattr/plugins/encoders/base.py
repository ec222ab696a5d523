"""The encoder interface, the trivial ``pixels`` encoder and helpers shared by the other encoders.

Encoder
-------
``name`` (the canonical spec), ``kind``, ``dim``, ``fingerprint`` (sha256 over the weights and preprocessing;
``id`` is the same), ``supports_text``, ``embed_images(images, batch_size=None)`` (``B×C×H×W`` in ``[-1, 1]`` →
``B×D`` float32 CPU tensor, rows L2-normalised) and ``embed_texts(texts, batch_size=None)`` (``len(texts)×D``,
CLIP only).

torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Sequence

from genattr.harness.errors import UserError

#: Bumped whenever an encoder's output for the same weights and inputs changes (it enters every fingerprint).
ENCODER_VERSION = "1"


def _sha(obj) -> str:
    """sha256 of ``json.dumps(obj, sort_keys=True, default=str)`` — default separators, unlike
    :func:`genattr.harness.cache.hash_json` (compact ones), so the two digests differ; ``pixels`` fingerprints were
    always this one, and changing it would change every result keyed on them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def single_thread():
    """Run tiny tensor work (small convolutions, d×d mappers) on one intra-op thread, restoring the setting after:
    on a shared CPU, several threads contending for tiny kernels can be tens of times slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------------------
# base class
# ------------------------------------------------------------------------------------------------------------------
class Encoder:
    """Common interface (see the module docstring)."""

    name: str = ""
    kind: str = ""
    dim: int = 0
    supports_text: bool = False
    batch_size: int = 64

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    @property
    def id(self) -> str:
        return self.fingerprint

    def _embed_batch(self, images):  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_images(self, images, batch_size: int | None = None):
        """``B×C×H×W`` images in ``[-1, 1]`` → ``B×D`` float32 CPU tensor with unit-norm rows."""
        import torch
        import torch.nn.functional as F

        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"embed_images expects B×C×H×W images, got shape {tuple(images.shape)}")
        bs = int(batch_size or self.batch_size)
        out = []
        with torch.no_grad():
            for s in range(0, images.shape[0], bs):
                e = self._embed_batch(images[s : s + bs].float())
                out.append(F.normalize(e.float().cpu(), dim=1, eps=1e-12))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None):
        raise UserError(f"encoder {self.name!r} has no text tower (use a clip:<model> encoder for text)")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"


# ------------------------------------------------------------------------------------------------------------------
# pixels
# ------------------------------------------------------------------------------------------------------------------
class PixelEncoder(Encoder):
    kind = "pixels"

    def __init__(self, resolution: int = 16, channels: int = 3):
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.name = f"pixels:{self.resolution}"
        self.dim = self.channels * self.resolution**2
        self.batch_size = 1024

    @property
    def fingerprint(self) -> str:
        return _sha({"encoder": "pixels", "v": ENCODER_VERSION, "r": self.resolution, "c": self.channels})

    def _embed_batch(self, images):
        from genattr.plugins.methods.baselines import match_format

        x = match_format(images, self.channels, self.resolution)
        return x.reshape(x.shape[0], -1)
