"""A dataset held in memory: the shared implementation behind the built-in datasets.

``InMemoryDataset(name, version, ids, images, captions)`` implements the :class:`~genattr.harness.api.Dataset`
protocol over a ``N×C×H×W`` float tensor in ``[-1, 1]`` and one caption tuple per image.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from .api import Example


class InMemoryDataset:
    def __init__(self, name: str, version: str, ids: Sequence[str], images, captions: Sequence[Sequence[str]], meta=None):
        import torch

        images = torch.as_tensor(images, dtype=torch.float32)
        if images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
        if not (len(ids) == images.shape[0] == len(captions)):
            raise ValueError("ids, images and captions must have the same length")
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset {name!r} has duplicate ids")
        if any(len(c) == 0 for c in captions):
            raise ValueError(f"dataset {name!r} has an item without captions")
        self.name = name
        self.version = version
        self._ids = [str(i) for i in ids]
        self._images = images.contiguous()
        self._captions = [tuple(str(c) for c in cs) for cs in captions]
        self._index = {i: k for k, i in enumerate(self._ids)}
        self.meta = dict(meta or {})
        self._fingerprint: str | None = None

    # -- protocol -----------------------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self._images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self._images.shape[1])

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def index_of(self, item_id: str) -> int:
        return self._index[item_id]

    def item(self, i: int) -> Example:
        return Example(self._ids[i], self._images[i], self._captions[i])

    def images(self, indices: Sequence[int] | None = None):
        if indices is None:
            return self._images
        import torch

        return self._images[torch.as_tensor(list(indices), dtype=torch.long)]

    def captions(self, i: int) -> tuple[str, ...]:
        return self._captions[i]

    @property
    def all_captions(self) -> list[tuple[str, ...]]:
        return list(self._captions)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.channels}x{self.resolution}x{self.resolution}".encode())
            for i, cs in zip(self._ids, self._captions):
                h.update(i.encode() + b"\x00" + "\x1e".join(cs).encode() + b"\x00")
            h.update(self._images.numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, ids: Sequence[str]) -> "InMemoryDataset":
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise KeyError(f"ids not in dataset {self.name!r}: {missing[:5]}")
        idx = [self._index[i] for i in ids]
        return InMemoryDataset(
            self.name, self.version, list(ids), self.images(idx), [self._captions[k] for k in idx], self.meta
        )

    def concat(self, other: "InMemoryDataset", name: str | None = None) -> "InMemoryDataset":
        """This dataset followed by ``other`` (ids must not collide)."""
        import torch

        return InMemoryDataset(
            name or self.name,
            self.version,
            self._ids + other.ids,
            torch.cat([self._images, other.images()]),
            self._captions + other.all_captions,
            self.meta,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} N={len(self)} {self.channels}×{self.resolution}px>"
