"""The ``mscoco`` dataset: MSCOCO 2017 images and captions from a local directory (the paper's leave-K-out data).

Layout (as distributed by cocodataset.org)::

    root/annotations/captions_train2017.json   {"images": [{"id", "file_name"}, …],
                                               "annotations": [{"image_id", "caption", "id"}, …]}
    root/train2017/000000000009.jpg …

``split`` names both the captions file and the image folder (``train2017``, ``val2017``); ``annotations`` points at
another captions file. Ids are the COCO image ids as strings; items are ordered by image id; images without a
caption are skipped. Each item keeps its first five captions by annotation id (COCO has five, a few images have
six or seven). Images are converted to RGB, the shorter side resized to ``resolution`` (bicubic) and centre-cropped.
``limit`` keeps the first ``limit`` images (by id).

``latents``: an optional safetensors file of precomputed latents keyed by image id (e.g. VAE means × scaling factor,
one ``c×h×w`` tensor per id); exposed as ``self.latents``, a ``N×c×h×w`` tensor in the dataset's order (``None``
when not given). Every id of the dataset must be present in the file.

Memory: the dataset is held in memory as float32 (``N × 3 × R²`` × 4 bytes: 118k images at 64 px ≈ 5.8 GB), so
use ``limit`` for quick runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError

CAPTIONS_PER_IMAGE = 5


def read_coco_captions(path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """``(file name by image id, captions by image id)`` from a COCO captions JSON file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mscoco: captions file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = sorted(data["annotations"], key=lambda a: (int(a["image_id"]), int(a.get("id", 0))))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"mscoco: {path} is not a COCO captions file ({type(e).__name__}: {e})") from None
    caps: dict[int, list[str]] = {}
    for a in anns:
        caps.setdefault(int(a["image_id"]), []).append(" ".join(str(a["caption"]).split()))
    return files, caps


class MSCOCO(InMemoryDataset):
    """MSCOCO 2017 from ``root`` (see the module docstring)."""

    name = "mscoco"
    version = "1"

    def __init__(self, root, split: str = "train2017", annotations=None, resolution: int = 64,
                 limit: int | None = None, latents=None, query_split: str = "val2017", query_annotations=None):
        from ._images import load_images

        root = Path(os.path.expanduser(str(root)))
        if not root.is_dir():
            raise UserError(f"mscoco: root directory not found: {root}")
        ann = Path(annotations) if annotations else root / "annotations" / f"captions_{split}.json"
        files, caps = read_coco_captions(ann)
        image_dir = root / split
        if not image_dir.is_dir():
            raise UserError(f"mscoco: image directory not found: {image_dir} (split {split!r})")
        image_ids = sorted(i for i in files if caps.get(i))
        if limit is not None:
            if int(limit) < 1:
                raise UserError(f"mscoco: limit must be positive, got {limit}")
            image_ids = image_ids[: int(limit)]
        if not image_ids:
            raise UserError(f"mscoco: no captioned images in {ann}")
        paths = [image_dir / files[i] for i in image_ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"mscoco: {len(missing)} image file(s) listed in {ann.name} are missing, e.g. {missing[0]}")
        images = load_images(paths, int(resolution))
        ids = [str(i) for i in image_ids]
        captions = [tuple(caps[i][:CAPTIONS_PER_IMAGE]) for i in image_ids]
        super().__init__(self.name, self.version, ids, images, captions,
                         meta={"split": split, "resolution": int(resolution), "root": str(root)})
        self.file_names = [files[i] for i in image_ids]
        self.latents = _load_latents(latents, ids) if latents is not None else None
        self._args = {"root": str(root), "resolution": int(resolution), "query_split": query_split,
                      "query_annotations": query_annotations}

    def heldout(self, n: int, count: int) -> list[tuple[str, tuple[str, ...]]]:
        """Captions of ``count`` images of the held-out split (``query_split``, e.g. ``val2017``; its captions
        file ``query_annotations``), as the paper synthesized its queries from COCO validation prompts."""
        a = self._args
        held = MSCOCO(a["root"], split=a["query_split"], annotations=a["query_annotations"],
                      resolution=a["resolution"], limit=int(count))
        return [(held.ids[i], held.captions(i)) for i in range(len(held))]


def _load_latents(path, ids):
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"mscoco: latents file not found: {path}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = [i for i in ids if i not in keys]
            if missing:
                raise UserError(f"mscoco: latents file {path} lacks {len(missing)} of the dataset's ids, "
                                f"e.g. {missing[0]}")
            return torch.stack([f.get_tensor(i).float() for i in ids])
    except UserError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"mscoco: cannot read latents file {path}: {e}") from None
