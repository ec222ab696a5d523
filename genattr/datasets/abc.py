"""The public AbC benchmark (Customized Model benchmark, Wang et al. 2023) read from a local directory.

Layout (paths inside the JSON files are relative to ``root``, the folder that holds ``dataset/``)::

    root/dataset/json/test_{artchive,bamfg,observed_imagenet,unobserved_imagenet}.json
    root/dataset/exemplar/…        exemplar images of each customized model
    root/dataset/synth/…           images synthesized by each customized model (the queries)
    root/dataset/laion_subset/…    the retrieval pool (LAION images)

Each ``test_{split}.json`` is a JSON list; an entry has ``exemplar`` (a list of image paths: 1 for ImageNet,
4–12 for BAM-FG, up to 67 for Artchive), ``synth`` (a dict from prompt type — ``gpt``/``object`` for the style
sets, ``media``/``gpt`` for ImageNet — to a list of image paths), ``class_id`` (a string) and ``category`` (a
string for ImageNet, ``null`` for the style sets). :func:`load_abc_split` reads one split into :class:`AbCEntry`
records with absolute paths.

The pool (:class:`AbCPool`) is every image under ``dataset/laion_subset`` (recursively, sorted by relative path;
extensions .jpg .jpeg .png .webp .bmp). Its id is the path relative to ``laion_subset`` (e.g. ``000001.jpg``).
Captions, first match wins:

1. a sidecar text file next to the image with the same stem (``000001.txt``): one caption per non-empty line;
2. a captions JSON file ``dataset/laion_subset.json`` or ``dataset/laion_subset/captions.json``: an object mapping
   the id (or the file name without extension) to a caption string or a list of captions;
3. otherwise the empty caption ``""`` (model-free methods do not need captions; model-based methods then score
   those pool images with the empty prompt).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError

from ._images import IMAGE_EXTENSIONS, load_image, load_images  # noqa: F401  (load_image re-exported)

SPLITS = ("artchive", "bamfg", "observed_imagenet", "unobserved_imagenet")
#: Which splits are object-centric and which are artist-style.
SPLIT_KINDS = {"artchive": "style", "bamfg": "style", "observed_imagenet": "object", "unobserved_imagenet": "object"}


@dataclass
class AbCEntry:
    """One customized model of the AbC benchmark.

    ``index``: position in the split's JSON list; ``split``; ``class_id``; ``category`` (None for style sets);
    ``exemplar_paths``: absolute paths of its exemplars; ``synth``: prompt type → absolute paths of its
    synthesized images; ``root``: the benchmark root the paths were resolved against.
    """

    index: int
    split: str
    class_id: str
    category: str | None
    exemplar_paths: list[str]
    synth: dict[str, list[str]] = field(default_factory=dict)
    root: str = ""

    @property
    def id(self) -> str:
        """A stable id of the customized model: ``{split}/{index:04d}-{class_id}``."""
        return f"{self.split}/{self.index:04d}-{self.class_id}"

    @property
    def kind(self) -> str:
        return SPLIT_KINDS[self.split]

    @property
    def exemplar_ids(self) -> list[str]:
        """The exemplar paths relative to ``root`` (as written in the JSON file): stable ids of the exemplars."""
        return [os.path.relpath(p, self.root) for p in self.exemplar_paths]

    @property
    def synth_paths(self) -> list[str]:
        """Every synthesized image, prompt types in sorted order."""
        return [p for k in sorted(self.synth) for p in self.synth[k]]

    def missing_files(self) -> list[str]:
        """Exemplar and synthesized image paths that do not exist."""
        return [p for p in self.exemplar_paths + self.synth_paths if not os.path.isfile(p)]


def _root(root) -> Path:
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise UserError(f"abc: root directory not found: {root}")
    if not (root / "dataset").is_dir():
        raise UserError(f"abc: {root} has no 'dataset' folder (expected the AbC layout root/dataset/json, …)")
    return root


def load_abc_split(root, split: str) -> list[AbCEntry]:
    """The customized models of one split, read from ``root/dataset/json/test_{split}.json``."""
    if split not in SPLITS:
        raise UserError(f"abc: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = _root(root)
    path = root / "dataset" / "json" / f"test_{split}.json"
    if not path.is_file():
        raise UserError(f"abc: split file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise UserError(f"abc: {path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"abc: {path} must hold a JSON list of entries, got {type(data).__name__}")
    entries = []
    for k, e in enumerate(data):
        try:
            exemplar = e["exemplar"]
            exemplar = [exemplar] if isinstance(exemplar, str) else list(exemplar)
            synth = {str(t): [str(root / p) for p in ps] for t, ps in dict(e.get("synth") or {}).items()}
            entries.append(AbCEntry(
                index=k, split=split, class_id=str(e["class_id"]),
                category=None if e.get("category") is None else str(e["category"]),
                exemplar_paths=[str(root / p) for p in exemplar], synth=synth, root=str(root)))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"abc: entry {k} of {path} is malformed ({type(err).__name__}: {err})") from None
    return entries


def _pool_captions(root: Path, pool_dir: Path) -> dict[str, list[str]]:
    for cand in (root / "dataset" / "laion_subset.json", pool_dir / "captions.json"):
        if cand.is_file():
            try:
                with open(cand, encoding="utf-8") as f:
                    data = json.load(f)
            except ValueError as e:
                raise UserError(f"abc: captions file {cand} is not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise UserError(f"abc: captions file {cand} must map image ids to captions")
            return {str(k): ([v] if isinstance(v, str) else [str(c) for c in v]) for k, v in data.items()}
    return {}


class AbCPool(InMemoryDataset):
    """The AbC retrieval pool: every image under ``root/dataset/laion_subset`` (see the module docstring).

    ``resolution``: images are resized (shorter side) and centre-cropped to it; ``limit``: keep the first
    ``limit`` images in sorted order. Held in memory as float32 (100k images at 64 px ≈ 4.9 GB).
    """

    name = "abc"
    version = "1"

    def __init__(self, root, resolution: int = 64, limit: int | None = None):
        root = _root(root)
        pool_dir = root / "dataset" / "laion_subset"
        if not pool_dir.is_dir():
            raise UserError(f"abc: pool directory not found: {pool_dir}")
        files = sorted(
            p.relative_to(pool_dir).as_posix() for p in pool_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if limit is not None:
            if int(limit) < 1:
                raise UserError(f"abc: limit must be positive, got {limit}")
            files = files[: int(limit)]
        if not files:
            raise UserError(f"abc: no images under {pool_dir}")
        table = _pool_captions(root, pool_dir)
        captions = []
        for rel in files:
            side = (pool_dir / rel).with_suffix(".txt")
            if side.is_file():
                lines = [" ".join(l.split()) for l in side.read_text(encoding="utf-8").splitlines()]
                caps = [l for l in lines if l]
            else:
                caps = table.get(rel) or table.get(rel.rsplit(".", 1)[0]) or []
            captions.append(tuple(caps) or ("",))
        images = load_images([pool_dir / f for f in files], int(resolution))
        super().__init__(self.name, self.version, files, images, captions,
                         meta={"root": str(root), "resolution": int(resolution)})
        self.paths = [str(pool_dir / f) for f in files]
