"""Pictures of what was attributed, kept beside the results so the leaderboard can show them without models.

:func:`attribution_media` writes the query image and the images of its top-ranked training items as PNG files
under ``RUN_DIR/media/`` (named by a hash of their pixels, so an image shared by many rows is stored once) and
returns the JSON a result row carries in ``extra["media"]``::

    {"query": "media/<hash>.png",
     "top": [{"id": item id, "score": float, "image": "media/<hash>.png", "positive": bool (when known)}, …]}

Paths are relative to the run directory. Nothing is written when the run directory is unknown or not writable (a
remote worker without the shared folder): the row then simply has no pictures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Sequence

MEDIA_DIR = "media"
#: Thumbnails are upscaled (nearest neighbour) to at least this many pixels so 8–16 px images stay visible.
MIN_THUMB = 64


def _to_uint8(image):
    import numpy as np

    a = image.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(dtype=__import__("torch").uint8)
    a = a.numpy()
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.transpose(a[:3], (1, 2, 0))
    return np.ascontiguousarray(a)


def save_png(run_dir: str | os.PathLike, image) -> str | None:
    """Write ``image`` (``C×H×W`` in [-1, 1]) as ``media/<hash>.png`` under ``run_dir``; returns the relative path
    (or None when it cannot be written)."""
    from PIL import Image

    arr = _to_uint8(image)
    digest = hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:20]
    rel = f"{MEDIA_DIR}/{digest}.png"
    path = Path(run_dir) / rel
    if path.is_file():
        return rel
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # never parents=True: a run directory removed during the run is not recreated here
        path.parent.mkdir(exist_ok=True)
        img = Image.fromarray(arr)
        scale = max(1, -(-MIN_THUMB // max(arr.shape[0], 1)))
        if scale > 1:
            img = img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk leaves no partial file behind
        return None
    return rel


def attribution_media(run_dir, query_image, train_set, scores, top: int = 10,
                      indices: Sequence[int] | None = None, positives: Sequence[int] | None = None) -> dict | None:
    """``{"query", "top"}`` for one query's score vector over ``train_set`` (or over ``indices`` of it); with
    ``positives`` (training indices of the true sources) each top entry says whether it is one."""
    import numpy as np

    if not run_dir:
        return None
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.where(np.isnan(s), -np.inf, s), kind="stable")[:top]
    q = save_png(run_dir, query_image)
    if q is None:
        return None
    ids = train_set.ids
    pos = None if positives is None else {int(p) for p in positives}
    out = []
    for j in order:
        i = int(j if indices is None else indices[int(j)])
        entry = {"id": ids[i], "score": float(s[j]), "image": save_png(run_dir, train_set.item(i).image)}
        if pos is not None:
            entry["positive"] = i in pos
        out.append(entry)
    return {"query": q, "top": out}
