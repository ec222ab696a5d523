"""Image files → tensors: the shared loader of the real-data datasets (mscoco, abc)."""

from __future__ import annotations

import os
from typing import Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_image(path, resolution: int):
    """One image file as a float32 tensor ``3×R×R`` in ``[-1, 1]``: converted to RGB, the shorter side resized to
    ``resolution`` (bicubic), then centre-cropped (as Stable Diffusion and the MSCOCO latent diffusion recipe do)."""
    import numpy as np
    import torch
    from PIL import Image

    from genattr.harness.errors import UserError

    r = int(resolution)
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (r, r))  # decode at a reduced scale when the file allows it (fast)
            im = im.convert("RGB")
            w, h = im.size
            s = r / min(w, h)
            nw, nh = max(r, round(w * s)), max(r, round(h * s))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - r) // 2, (nh - r) // 2
            im = im.crop((left, top, left + r, top + r))
            a = np.asarray(im, dtype=np.float32)
    except FileNotFoundError:
        raise UserError(f"image file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(a.transpose(2, 0, 1) / 127.5 - 1.0)


def load_images(paths: Sequence, resolution: int):
    """Several image files as ``N×3×R×R`` in ``[-1, 1]`` (see :func:`load_image`)."""
    import torch

    r = int(resolution)
    out = torch.empty((len(paths), 3, r, r), dtype=torch.float32)
    for k, p in enumerate(paths):
        out[k] = load_image(os.fspath(p), r)
    return out
