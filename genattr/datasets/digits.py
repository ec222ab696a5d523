"""The ``digits`` dataset: scikit-learn's bundled handwritten digits with caption paraphrases.

1797 grey images of 8×8 pixels (values 0…16), resized bilinearly to ``resolution`` and scaled to ``[-1, 1]``
(background −1, ink towards +1), one channel. Each image gets ``captions_per_image`` distinct paraphrases naming
its digit ("a handwritten digit 3", "the number three", …), chosen deterministically from (seed, index). Ids are
``digits-0000`` … ``digits-1796`` (the index in scikit-learn's order, kept by ``limit`` and ``subset``).
"""

from __future__ import annotations

from genattr.harness.data import InMemoryDataset
from genattr.harness.seeding import numpy_rng

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Caption paraphrases; ``{d}`` is the digit as a numeral, ``{w}`` as a word.
TEMPLATES = (
    "a handwritten digit {d}",
    "the number {w}",
    "a handwritten {w}",
    "the digit {d}",
    "a picture of the number {w}",
    "a {w} written by hand",
    "a scanned handwritten digit {w}",
    "a small grey image of the digit {d}",
)


def digit_caption(label: int, template: int = 0) -> str:
    """Caption ``template`` (an index into :data:`TEMPLATES`, taken modulo its length) for digit ``label``."""
    return TEMPLATES[template % len(TEMPLATES)].format(d=int(label), w=NUMBER_WORDS[int(label)])


def digit_prompts(label: int) -> list[str]:
    """Every caption paraphrase for digit ``label`` (prompts for generating that digit)."""
    return [digit_caption(label, k) for k in range(len(TEMPLATES))]


class Digits(InMemoryDataset):
    """scikit-learn's ``load_digits`` as a captioned dataset (see the module docstring).

    ``resolution``: output size in pixels (bilinear resize of the 8×8 originals); ``captions_per_image``: 1 …
    ``len(TEMPLATES)`` paraphrases per image; ``limit``: keep only the first ``limit`` images; ``seed``: which
    paraphrases each image gets (the images themselves do not depend on it). ``labels``: the digit of each item.
    """

    name = "digits"
    version = "1"

    def __init__(self, resolution: int = 16, captions_per_image: int = 5, limit: int | None = None, seed: int = 0):
        import numpy as np
        import torch
        import torch.nn.functional as F
        from sklearn.datasets import load_digits

        from genattr.harness.errors import UserError

        if not 1 <= int(captions_per_image) <= len(TEMPLATES):
            raise UserError(f"digits: captions_per_image must be in 1..{len(TEMPLATES)}, got {captions_per_image}")
        if int(resolution) < 4:
            raise UserError(f"digits: resolution must be at least 4, got {resolution}")
        raw = load_digits()
        pixels = np.asarray(raw.images, dtype=np.float32)
        labels = np.asarray(raw.target, dtype=np.int64)
        if limit is not None:
            if int(limit) < 1:
                raise UserError(f"digits: limit must be positive, got {limit}")
            pixels, labels = pixels[: int(limit)], labels[: int(limit)]
        x = torch.from_numpy(pixels / 16.0).unsqueeze(1)  # N×1×8×8 in [0, 1]
        if int(resolution) != 8:
            x = F.interpolate(x, size=(int(resolution), int(resolution)), mode="bilinear", align_corners=False)
        x = (x.clamp(0, 1) * 2 - 1).contiguous()
        ids = [f"digits-{i:04d}" for i in range(len(labels))]
        captions = []
        for i, lab in enumerate(labels):
            order = numpy_rng(seed, "digits-captions", i).permutation(len(TEMPLATES))[: int(captions_per_image)]
            captions.append(tuple(digit_caption(int(lab), int(k)) for k in order))
        super().__init__(self.name, self.version, ids, x, captions,
                         meta={"resolution": int(resolution), "seed": int(seed),
                               "captions_per_image": int(captions_per_image)})
        self.labels = [int(v) for v in labels]
        self._limit = None if limit is None else int(limit)

    def take(self, n: int) -> "Digits":
        """The first ``n`` images (a ``Digits`` again, so ``labels`` stay available)."""
        if int(n) >= len(self):
            return self
        m = self.meta
        return Digits(resolution=m["resolution"], captions_per_image=m["captions_per_image"], limit=int(n),
                      seed=m["seed"])

    def heldout(self, n: int, count: int) -> list[tuple[str, tuple[str, ...]]]:
        """The captions of every image after the first ``n`` (all of them when ``n`` covers the set: digit
        captions only name the digit, so their wording can be reused): ``[(id, captions)]``."""
        m = self.meta
        full = self if self._limit is None else Digits(resolution=m["resolution"],
                                                       captions_per_image=m["captions_per_image"], seed=m["seed"])
        held = [(full.ids[i], full.captions(i)) for i in range(int(n), len(full))]
        return held or [(full.ids[i], full.captions(i)) for i in range(len(full))]
