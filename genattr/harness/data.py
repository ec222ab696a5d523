"""Dataset building blocks shared by the built-in datasets and benchmarks (and offered to plugins).

* ``InMemoryDataset(name, version, ids, images, captions)`` implements the :class:`~genattr.harness.api.Dataset`
  protocol over a ``N×C×H×W`` float tensor in ``[-1, 1]`` and one caption tuple per image.
* ``ConcatDataset(name, parts)`` — datasets one after another, read from the parts on demand (a pool on disk stays
  on disk).
* :func:`take` and :func:`heldout` — the optional ``take(n)`` / ``heldout(n, count)`` protocol methods with the
  generic fallbacks benchmarks use.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

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


class ConcatDataset:
    """Datasets one after another (a :class:`~genattr.harness.api.Dataset`; ids must not collide). Items are read
    from the parts on demand, so a pool on disk stays on disk."""

    version = "1"

    def __init__(self, name: str, parts: Sequence[Any]):
        self.name = name
        self.parts = list(parts)
        if len({(p.channels, p.resolution) for p in self.parts}) > 1:
            raise ValueError("ConcatDataset: parts differ in channels or resolution")
        self._offsets = [0]
        for p in self.parts:
            self._offsets.append(self._offsets[-1] + len(p))
        self._ids = [i for p in self.parts for i in p.ids]
        if len(set(self._ids)) != len(self._ids):
            raise ValueError(f"dataset {name!r} has duplicate ids")
        self._index = {i: k for k, i in enumerate(self._ids)}
        self._fp = None

    resolution = property(lambda self: self.parts[0].resolution)
    channels = property(lambda self: self.parts[0].channels)

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def index_of(self, item_id: str) -> int:
        return self._index[item_id]

    def _locate(self, i: int):
        import bisect

        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._offsets, i) - 1
        return self.parts[k], i - self._offsets[k]

    def item(self, i: int):
        part, j = self._locate(int(i))
        return part.item(j)

    def captions(self, i: int):
        part, j = self._locate(int(i))
        return part.captions(j)

    def images(self, indices: Sequence[int] | None = None):
        import torch

        indices = list(range(len(self))) if indices is None else [int(i) for i in indices]
        if not indices:
            return torch.empty((0, self.channels, self.resolution, self.resolution))
        out = [None] * len(indices)
        by_part: dict = {}
        for pos, i in enumerate(indices):
            part, j = self._locate(i)
            by_part.setdefault(id(part), (part, []))[1].append((pos, j))
        for part, items in by_part.values():  # one batched read per part
            imgs = part.images([j for _, j in items])
            for (pos, _), img in zip(items, imgs):
                out[pos] = img.float()
        return torch.stack(out)

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            import hashlib

            h = hashlib.sha256(self.name.encode())
            for p in self.parts:
                h.update(p.fingerprint.encode())
            self._fp = h.hexdigest()
        return self._fp

    def subset(self, ids: Sequence[str]):
        idx = [self._index[i] for i in ids]
        return InMemoryDataset(self.name, self.version, list(ids), self.images(idx), [self.captions(i) for i in idx])

    def __repr__(self) -> str:
        return f"<ConcatDataset {self.name} N={len(self)} parts={len(self.parts)}>"


# -- the optional take / heldout protocol -----------------------------------------------------------------------
#: Keyword arguments by which a dataset's constructor may take its size (``limit`` keeps the first items, ``n``
#: generates that many); benchmarks pass the size there when a dataset has one, instead of building more first.
SIZE_OPTIONS = ("limit", "n")


def size_option(factory) -> str | None:
    """The keyword (one of :data:`SIZE_OPTIONS`) by which ``factory`` (a dataset class or function, or a registry
    ``lazy`` factory) takes its size, or None."""
    import inspect

    target = factory.resolve() if hasattr(factory, "resolve") else factory
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in SIZE_OPTIONS if k in params), None)


def take(dataset, n: int):
    """The first ``n`` items: ``dataset.take(n)`` when the dataset offers it (it may keep its own type and
    attributes, e.g. labels), else ``subset`` of the first ``n`` ids."""
    if int(n) >= len(dataset):
        return dataset
    own = getattr(dataset, "take", None)
    if callable(own):
        return own(int(n))
    return dataset.subset(dataset.ids[: int(n)])


def heldout(dataset, n: int, count: int) -> list[tuple[str, tuple[str, ...]]]:
    """Captions of items that are not among the first ``n`` (held out of a training set made of them):
    ``dataset.heldout(n, count)`` when the dataset offers it, else the items after the first ``n`` of ``dataset``
    itself. May return more than ``count`` (the caller picks); an error when there are none."""
    from .errors import UserError

    own = getattr(dataset, "heldout", None)
    held = own(int(n), int(count)) if callable(own) else [(dataset.ids[i], tuple(dataset.captions(i)))
                                                          for i in range(int(n), len(dataset))]
    if not held:
        raise UserError(f"dataset {getattr(dataset, 'name', '?')!r} has no items beyond the first {n} to take "
                        "held-out captions from; lower n or give the dataset a heldout(n, count) method")
    return held


def images_and_captions(data) -> tuple[Any, list[tuple[str, ...]], list[str]]:
    """``(N×C×H×W float images, captions per item, ids)`` of a Dataset or a sequence of Examples."""
    import torch

    from .errors import UserError

    if hasattr(data, "item") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)):
        n = len(data)
        images = data.images(list(range(n)))
        captions = [tuple(data.captions(i)) for i in range(n)]
        return images.float(), captions, list(data.ids)
    items = list(data)
    if not items:
        raise UserError("no examples given")
    images = torch.stack([torch.as_tensor(e.image, dtype=torch.float32) for e in items])
    return images, [tuple(e.captions) for e in items], [e.id for e in items]


def examples_fingerprint(data) -> str:
    """The fingerprint of a Dataset, or a sha256 over ids, captions and pixels of a sequence of Examples."""
    fp = getattr(data, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    images, captions, ids = images_and_captions(data)
    h = hashlib.sha256()
    h.update(f"{tuple(images.shape)}".encode())
    for i, cs in zip(ids, captions):
        h.update(str(i).encode() + b"\x00" + "\x1e".join(cs).encode() + b"\x00")
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def match_format(images, channels: int, resolution: int):
    """Resize ``B×C×H×W`` images in [-1, 1] to ``resolution`` (bilinear, antialiased) and convert channels
    (grey → RGB by repetition, RGB → grey by the mean)."""
    import torch.nn.functional as F

    x = images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x
