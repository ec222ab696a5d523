"""The ``shapes`` dataset: procedural captioned scenes (the offline stand-in for MSCOCO), and the concepts of the
built-in Customized Model benchmark (novel object glyphs and novel rendering styles).

Scenes
------
A scene is a JSON-able spec ``{"objects": [{"shape", "colour", "size", "position"}, …]}`` (optionally with a
``"style"``), drawn deterministically from ``(seed, index)``:

* 1 … ``max_objects`` objects; shapes :data:`SHAPES`, colours :data:`COLOURS`, sizes :data:`SIZES`;
* positions :data:`POSITIONS`: a single object may sit at any of the five, scenes with several objects use distinct
  positions among left/right/top/bottom (the centre would overlap them), so objects never hide each other;
* each further object repeats the shape and colour of an earlier one with probability 1/4, so captions such as
  "two red circles" are common.

Images are RGB on a black background, rendered with 4×4 supersampling (anti-aliased edges) and scaled to
``[-1, 1]``. At 16 px a large object is about 6 px across and a small one about 4.5 px.

Captions state count, colour, shape and position in several paraphrases ("a red circle on the left and a blue
square at the top", "two red circles and a blue square", "three objects: …"); :func:`caption_scene` gives one,
:func:`scene_captions` several distinct ones.

Concepts
--------
:func:`make_concepts` returns the concepts of one split. An *object* concept is a novel glyph (not one of
:data:`SHAPES`) in a fixed colour, shown once, large, in the centre (one exemplar). A *style* concept is a novel
rendering style applied to ordinary scenes (4–12 exemplars of different scenes). Captions and query prompts name
the concept by its token (``<v*>``): "a <v*> object on the left", "two red circles in <v*> style". The ``train``
and ``test`` splits use disjoint glyphs and styles (:data:`CONCEPT_GLYPHS`, :data:`CONCEPT_STYLES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from genattr.harness.data import InMemoryDataset
from genattr.harness.seeding import numpy_rng

SHAPES = ("circle", "square", "triangle")

#: Colour name → RGB in [0, 1]: clearly distinct at 16 px.
COLOURS = {
    "red": (0.95, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
}

#: Size name → radius as a fraction of the image side.
SIZES = {"small": 0.15, "large": 0.20}

#: Position name → centre (x, y) as fractions of the image side (y grows downwards).
POSITIONS = {
    "left": (0.21, 0.5),
    "right": (0.79, 0.5),
    "top": (0.5, 0.21),
    "bottom": (0.5, 0.79),
    "centre": (0.5, 0.5),
}
SIDE_POSITIONS = ("left", "right", "top", "bottom")

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}

#: Novel glyphs (object-centric concepts), disjoint between the splits; the colour each is shown in.
CONCEPT_GLYPHS = {
    "test": ("ring", "cross", "hourglass", "crescent"),
    "train": ("plus", "frame", "diamond", "tee"),
}
GLYPH_COLOURS = {
    "ring": "yellow", "cross": "red", "hourglass": "blue", "crescent": "white",
    "plus": "green", "frame": "red", "diamond": "yellow", "tee": "blue",
}
GLYPHS = tuple(g for split in ("test", "train") for g in CONCEPT_GLYPHS[split])

#: Novel rendering styles (style concepts), disjoint between the splits.
CONCEPT_STYLES = {
    "test": ("night", "sunset", "stripes", "glow"),
    "train": ("sepia", "palette-shift", "crimson", "shadow"),
}
#: Every style the renderer knows: the concept styles, and earlier ones kept renderable for comparison.
STYLES = tuple(s for split in ("test", "train") for s in CONCEPT_STYLES[split]) + (
    "grey-background", "inverted", "outline", "thick", "checker", "dotted", "dusk")

STYLE_DESCRIPTIONS = {
    "inverted": "inverted colours: white background, every colour replaced by its complement",
    "stripes": "objects filled with horizontal dark stripes (every other line at 16 px)",
    "outline": "objects drawn as a one-pixel outline only, hollow inside",
    "thick": "objects enlarged by one pixel with a dimmed one-pixel rim (thickened, soft-edged strokes)",
    "checker": "objects filled with a 2×2-pixel checkerboard of the colour and black",
    "dotted": "objects drawn as a lattice of single-pixel dots",
    "grey-background": "mid-grey background instead of black",
    "palette-shift": "colours mapped to off-palette hues "
                     "(red→orange, green→teal, blue→purple, yellow→pink, white→grey)",
    "night": "a deep navy-blue background instead of black",
    "sunset": "a vertical background gradient from dark purple at the top to orange at the bottom",
    "glow": "objects surrounded by a soft halo of their own colour (about two pixels wide at 16 px)",
    "sepia": "the whole picture toned in browns: brightness mapped onto a dark-brown-to-cream ramp",
    "shadow": "every object casts a grey drop shadow two pixels down and to the right",
    "crimson": "a dark crimson background instead of black",
    "dusk": "a horizontal background gradient from dark teal on the left to magenta on the right",
}
GLYPH_DESCRIPTIONS = {
    "ring": "an annulus (a circle with a hole)",
    "cross": "a diagonal cross (X)",
    "hourglass": "two triangles meeting at their tips (a vertical bow-tie)",
    "crescent": "a crescent moon",
    "plus": "an upright plus sign",
    "frame": "a hollow square",
    "diamond": "a square rotated by 45 degrees",
    "tee": "a T shape",
}

_PALETTE_SHIFT = {
    "red": (1.00, 0.55, 0.05),
    "green": (0.05, 0.60, 0.60),
    "blue": (0.60, 0.20, 0.90),
    "yellow": (1.00, 0.55, 0.75),
    "white": (0.50, 0.50, 0.50),
}

_NIGHT = (0.04, 0.07, 0.32)
_SUNSET = ((0.30, 0.04, 0.32), (0.95, 0.50, 0.08))  # top, bottom
_SEPIA = ((0.20, 0.11, 0.04), (1.00, 0.90, 0.68))  # black → dark brown, white → cream
_SHADOW = 0.35
_CRIMSON = (0.40, 0.03, 0.08)
_DUSK = ((0.04, 0.30, 0.34), (0.55, 0.12, 0.45))  # left, right

_SUPERSAMPLE = 4
_PLURALS = {"cross": "crosses", "hourglass": "hourglasses", "plus": "pluses"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


# -- geometry ---------------------------------------------------------------------------------------------------
def _inside(shape: str, u, v):
    """Boolean mask of ``shape`` in object coordinates (u right, v down, radius 1)."""
    rho = np.sqrt(u * u + v * v)
    a, b = np.abs(u), np.abs(v)
    if shape == "circle":
        return rho <= 1.0
    if shape == "square":
        return (a <= 0.85) & (b <= 0.85)
    if shape == "triangle":  # apex up, base down
        return (v <= 0.9) & (v >= -1.1) & (a <= (v + 1.1) / 2.0 * 1.05)
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.5)
    if shape == "cross":
        return (np.maximum(a, b) <= 0.95) & ((np.abs(u - v) <= 0.42) | (np.abs(u + v) <= 0.42))
    if shape == "hourglass":
        return (b <= 0.95) & (a <= b * 0.95 + 0.08)
    if shape == "crescent":
        return (rho <= 1.0) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 > 0.75 ** 2)
    if shape == "plus":
        return ((a <= 0.3) & (b <= 1.0)) | ((b <= 0.3) & (a <= 1.0))
    if shape == "frame":
        return (np.maximum(a, b) <= 0.9) & (np.maximum(a, b) >= 0.48)
    if shape == "diamond":
        return a + b <= 1.1
    if shape == "tee":
        return ((np.abs(v + 0.7) <= 0.3) & (a <= 1.0)) | ((a <= 0.3) & (v >= -1.0) & (v <= 1.0))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES + GLYPHS)}")


def _morph(mask, pixels: int, grow: bool):
    """Dilate (``grow``) or erode a supersampled boolean mask by a square of ``pixels`` sub-pixels."""
    out = mask.copy()
    h, w = mask.shape
    for k in range(1, pixels + 1):
        for axis in (0, 1):
            for sign in (1, -1):
                shifted = np.zeros_like(mask)
                src = [slice(None), slice(None)]
                dst = [slice(None), slice(None)]
                n = h if axis == 0 else w
                if sign > 0:
                    src[axis], dst[axis] = slice(0, n - k), slice(k, n)
                else:
                    src[axis], dst[axis] = slice(k, n), slice(0, n - k)
                shifted[tuple(dst)] = mask[tuple(src)]
                out = (out | shifted) if grow else (out & shifted)
    return out


@lru_cache(maxsize=4096)
def _object_masks(shape: str, size: str, position: str, resolution: int):
    """(fill, outline, thick, thick_border) anti-aliased float32 masks H×W for one object (cached, read-only)."""
    s = _SUPERSAMPLE
    n = resolution * s
    coords = (np.arange(n, dtype=np.float64) + 0.5) / n
    cx, cy = POSITIONS[position]
    r = SIZES[size]
    u = (coords[None, :] - cx) / r
    v = (coords[:, None] - cy) / r
    hi = _inside(shape, u, v)
    px = max(1, resolution // 16) * s  # one output pixel at 16 px, scaled with the resolution
    eroded = _morph(hi, px, grow=False)
    outline = hi & ~eroded
    thick = _morph(hi, px, grow=True)
    thick_border = thick & ~_morph(thick, px, grow=False)

    def down(m):
        a = m.reshape(resolution, s, resolution, s).mean(axis=(1, 3)).astype(np.float32)
        a.setflags(write=False)
        return a

    return down(hi), down(outline), down(thick), down(thick_border)


@lru_cache(maxsize=64)
def _pattern(kind: str, resolution: int):
    """Fill modulation patterns H×W in [0, 1] (1 = full colour)."""
    period = max(1, resolution // 16)
    rows = (np.arange(resolution) // period)[:, None]
    cols = (np.arange(resolution) // period)[None, :]
    if kind == "stripes":
        p = np.where(rows % 2 == 0, 1.0, 0.2) * np.ones((1, resolution))
    elif kind == "checker":
        p = np.where(((rows // 2) + (cols // 2)) % 2 == 0, 1.0, 0.0)
    elif kind == "dotted":
        p = np.where((rows % 2 == 0) & (cols % 2 == 0), 1.0, 0.0)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    p = p.astype(np.float32)
    p.setflags(write=False)
    return p


def _background(style: str | None, resolution: int) -> np.ndarray:
    img = np.zeros((resolution, resolution, 3), dtype=np.float32)
    if style == "grey-background":
        img[:] = 0.5
    elif style == "night":
        img[:] = _NIGHT
    elif style == "crimson":
        img[:] = _CRIMSON
    elif style in ("sunset", "dusk"):  # sunset: top → bottom; dusk: left → right
        t = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
        t = t[:, None, None] if style == "sunset" else t[None, :, None]
        start, end = (np.asarray(c, dtype=np.float32) for c in (_SUNSET if style == "sunset" else _DUSK))
        img[:] = start * (1.0 - t) + end * t
    return img


def _shift(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` moved ``pixels`` down and to the right (zeros shifted in)."""
    out = np.zeros_like(mask)
    out[pixels:, pixels:] = mask[: mask.shape[0] - pixels, : mask.shape[1] - pixels]
    return out


def _soften(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The glow's halo: ``mask`` blurred by a separable triangular kernel of radius ``pixels``, brightened ×1.6 and
    clipped to [0, 1] (so the halo stays near full strength just outside the object)."""
    k = np.concatenate([np.arange(1, pixels + 2), np.arange(pixels, 0, -1)]).astype(np.float32)
    k /= k.sum()
    pad = np.pad(mask, pixels)
    rows = np.stack([np.convolve(r, k, mode="valid") for r in pad])
    out = np.stack([np.convolve(c, k, mode="valid") for c in rows.T]).T
    return np.clip(out * 1.6, 0.0, 1.0)


def _render_np(spec: dict, resolution: int, style: str | None = None) -> np.ndarray:
    """H×W×3 float32 in [0, 1]."""
    style = style if style is not None else spec.get("style")
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    img = _background(style, int(resolution))
    px = max(1, int(resolution) // 16)  # one output pixel at 16 px
    for obj in spec["objects"]:
        fill, outline, thick, thick_border = _object_masks(obj["shape"], obj["size"], obj["position"], int(resolution))
        name = obj["colour"]
        colour = np.asarray(_PALETTE_SHIFT[name] if style == "palette-shift" else COLOURS[name], dtype=np.float32)
        if style == "outline":
            img = img * (1.0 - outline[..., None]) + colour * outline[..., None]
        elif style == "thick":
            img = img * (1.0 - thick[..., None]) + colour * thick[..., None]
            img = img * (1.0 - 0.7 * thick_border[..., None])
        elif style in ("stripes", "checker", "dotted"):
            p = _pattern(style, int(resolution))[..., None]
            layer = colour * p  # pattern gaps are black: these styles keep the black background
            img = img * (1.0 - fill[..., None]) + layer * fill[..., None]
        else:
            if style == "shadow":
                sh = _shift(fill, 2 * px)[..., None]
                img = img * (1.0 - sh) + _SHADOW * sh
            elif style == "glow":
                halo = (0.55 * _soften(fill, 2 * px))[..., None]
                img = np.maximum(img, colour * halo)
            img = img * (1.0 - fill[..., None]) + colour * fill[..., None]
    if style == "inverted":
        img = 1.0 - img
    elif style == "sepia":
        lum = (0.30 * img[..., 0] + 0.59 * img[..., 1] + 0.11 * img[..., 2])[..., None]
        dark, light = (np.asarray(c, dtype=np.float32) for c in _SEPIA)
        img = dark * (1.0 - lum) + light * lum
    return img.astype(np.float32, copy=False)


def render_scene(spec: dict, resolution: int = 16, style: str | None = None):
    """Render a scene spec to a float32 tensor ``3×H×W`` in ``[-1, 1]``.

    ``style`` (one of :data:`STYLES`) overrides ``spec.get("style")``; object shapes may be base shapes or glyphs.
    """
    import torch

    img = _render_np(spec, int(resolution), style)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1) * 2.0 - 1.0))


def render_scenes(specs: Sequence[dict], resolution: int = 16, style: str | None = None):
    """Render several specs to ``N×3×H×W`` in ``[-1, 1]``."""
    import torch

    out = np.empty((len(specs), 3, int(resolution), int(resolution)), dtype=np.float32)
    for k, spec in enumerate(specs):
        out[k] = _render_np(spec, int(resolution), style).transpose(2, 0, 1)
    return torch.from_numpy(out * 2.0 - 1.0)


# -- scene specs ------------------------------------------------------------------------------------------------
def random_scene(rng, max_objects: int = 3, shapes: Sequence[str] = SHAPES,
                 colours: Sequence[str] | None = None) -> dict:
    """A random scene spec drawn with the numpy ``rng`` (see the module docstring for the distribution)."""
    colours = tuple(colours or COLOURS)
    count = int(rng.integers(1, int(max_objects) + 1))
    if count == 1:
        positions = [list(POSITIONS)[int(rng.integers(len(POSITIONS)))]]
    else:
        if count > len(SIDE_POSITIONS):
            raise ValueError(f"at most {len(SIDE_POSITIONS)} objects per scene, got {count}")
        positions = [SIDE_POSITIONS[int(k)] for k in rng.permutation(len(SIDE_POSITIONS))[:count]]
    objects = []
    for k, pos in enumerate(positions):
        if k > 0 and rng.random() < 0.25:
            prev = objects[int(rng.integers(len(objects)))]
            shape, colour = prev["shape"], prev["colour"]
        else:
            shape, colour = shapes[int(rng.integers(len(shapes)))], colours[int(rng.integers(len(colours)))]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        objects.append({"shape": shape, "colour": colour, "size": size, "position": pos})
    order = list(POSITIONS)
    objects.sort(key=lambda o: order.index(o["position"]))
    return {"objects": objects}


def scene_spec(index: int, seed: int = 0, max_objects: int = 3) -> dict:
    """The spec of scene ``index`` of ``Shapes(seed=seed, max_objects=max_objects)``."""
    return random_scene(numpy_rng(seed, "shapes", int(index)), max_objects)


# -- captions ---------------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _noun(obj: dict, token: str | None, plural: bool = False) -> str:
    shape = obj["shape"]
    if shape not in SHAPES and token:
        base = f"{token} object"
        return base + "s" if plural else base
    word = f"{obj['colour']} {shape}"
    if plural:
        word = f"{obj['colour']} {_PLURALS.get(shape, shape + 's')}"
    return word


def _one(obj: dict, token: str | None, position: bool = True, size: bool = False) -> str:
    noun = _noun(obj, token)
    if size:
        noun = f"{obj['size']} {noun}"
    phrase = f"{_article(noun)} {noun}"
    return f"{phrase} {POSITION_PHRASES[obj['position']]}" if position else phrase


def _groups(objects: Sequence[dict], token: str | None):
    groups: dict[tuple, list[dict]] = {}
    for o in objects:
        key = (o["shape"], o["colour"]) if (o["shape"] in SHAPES or not token) else (o["shape"],)
        groups.setdefault(key, []).append(o)
    return list(groups.values())


def _group_phrase(group: list[dict], token: str | None, position: bool) -> str:
    if len(group) == 1:
        return _one(group[0], token, position)
    phrase = f"{_NUMBER_WORDS.get(len(group), str(len(group)))} {_noun(group[0], token, plural=True)}"
    if position:
        phrase += " " + _join([POSITION_PHRASES[o["position"]] for o in group])
    return phrase


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _variant(spec: dict, variant: int, token: str | None) -> str:
    objs = spec["objects"]
    n = len(objs)
    variant %= N_CAPTION_VARIANTS
    if variant == 0:  # "a red circle on the left and a blue square at the top"
        text = _join([_one(o, token) for o in objs])
    elif variant == 1:  # "two red circles and a blue square"
        text = _join([_group_phrase(g, token, False) for g in _groups(objs, token)])
    elif variant == 2:  # "two red circles on the left and at the top and a blue square at the bottom"
        text = " and ".join(_group_phrase(g, token, True) for g in _groups(objs, token))
    elif variant == 3:  # "three objects: two red circles and a blue square"
        head = "one object" if n == 1 else f"{_NUMBER_WORDS.get(n, str(n))} objects"
        text = f"{head}: " + _join([_group_phrase(g, token, False) for g in _groups(objs, token)])
    elif variant == 4:  # "a large red circle on the left and a small blue square at the top"
        text = _join([_one(o, token, size=True) for o in objs])
    elif variant == 5:  # "on the left a red circle and at the top a blue square"
        text = _join([f"{POSITION_PHRASES[o['position']]} {_one(o, token, position=False)}" for o in objs])
    elif variant == 6:  # "a picture of two red circles and a blue square"
        text = "a picture of " + _join([_group_phrase(g, token, False) for g in _groups(objs, token)])
    else:  # reversed order of variant 0
        text = _join([_one(o, token) for o in reversed(objs)])
    style = spec.get("style")
    if style is not None:
        name = token or style
        if variant == 6:
            text = f"a {name} style picture of " + text[len("a picture of "):]
        else:
            text = f"{text} in {name} style"
    return text


N_CAPTION_VARIANTS = 8


def caption_scene(spec: dict, rng_or_index: Any = 0, token: str | None = None) -> str:
    """One caption of a scene spec.

    ``rng_or_index``: an ``int`` picks paraphrase ``index % N_CAPTION_VARIANTS``; a ``numpy.random.Generator``
    picks one at random. ``token`` (e.g. ``"<v*>"``) names glyph objects ("a <v*> object on the left") and the
    spec's ``"style"`` ("… in <v*> style"); without a token they are named by their glyph/style names.
    """
    if isinstance(rng_or_index, (int, np.integer)):
        variant = int(rng_or_index)
    else:
        variant = int(rng_or_index.integers(N_CAPTION_VARIANTS))
    return _variant(spec, variant, token)


def scene_captions(spec: dict, n: int, rng, token: str | None = None) -> list[str]:
    """``n`` captions of ``spec``, distinct where the scene allows, in an order drawn with ``rng``."""
    out: list[str] = []
    for k in rng.permutation(N_CAPTION_VARIANTS):
        c = _variant(spec, int(k), token)
        if c not in out:
            out.append(c)
    base = list(out)
    while len(out) < n:
        out.append(base[len(out) % len(base)])
    return out[:n]


def caption_vocabulary(token: str | None = "<v*>") -> list[str]:
    """Every word (and punctuation mark) that :class:`Shapes` captions and concept captions/prompts can contain,
    sorted — for building a word-level tokenizer that also covers the concept prompts ("style", "object", …).
    ``token`` is included when given."""
    return list(_vocabulary(token))


@lru_cache(maxsize=8)
def _vocabulary(token: str | None) -> tuple[str, ...]:
    import re

    words: set[str] = set()
    colours, sizes = list(COLOURS), list(SIZES)
    for shape in SHAPES + GLYPHS:
        mixed = [{"shape": shape, "colour": colours[k % len(colours)], "size": sizes[k % 2], "position": pos}
                 for k, pos in enumerate(SIDE_POSITIONS)]
        same = [dict(o, colour=colours[0]) for o in mixed]  # grouped: "two red circles"
        for count in range(1, len(mixed) + 1):
            for objs in (mixed[:count], same[:count], mixed[:1] + same[1:count]):
                specs = ({"objects": objs}, {"objects": objs, "style": STYLES[0]})
                for spec in specs:
                    for tok in (None, token) if token else (None,):
                        for v in range(N_CAPTION_VARIANTS):
                            words.update(re.findall(r"<[^>\s]*>|\w+|[^\w\s]", _variant(spec, v, tok)))
    words.update(POSITION_PHRASES["centre"].split())
    words.update(colours)
    words.update(w for s in STYLES for w in re.findall(r"\w+|[^\w\s]", s))
    if token:
        words.add(token)
    return tuple(sorted(words))


# -- the dataset ------------------------------------------------------------------------------------------------
class Shapes(InMemoryDataset):
    """Procedural captioned scenes (see the module docstring).

    ``n`` scenes with indices ``start … start + n − 1``, each deterministic in (``seed``, index): ``start``
    gives held-out scenes drawn from the same distribution as training but not the same draws (single-object
    scenes come from only 150 combinations, so some repeat by design). Ids ``shapes-00042`` (``shapes-s7-00042``
    for ``seed=7``). ``specs``: the JSON-able scene spec of each item, to check generated images against.
    """

    name = "shapes"
    version = "1"

    def __init__(self, n: int = 2000, resolution: int = 16, seed: int = 0, max_objects: int = 3,
                 captions_per_image: int = 5, start: int = 0):
        from genattr.harness.errors import UserError

        if int(n) < 1:
            raise UserError(f"shapes: n must be positive, got {n}")
        if not 1 <= int(max_objects) <= len(SIDE_POSITIONS):
            raise UserError(f"shapes: max_objects must be in 1..{len(SIDE_POSITIONS)}, got {max_objects}")
        if int(resolution) < 8:
            raise UserError(f"shapes: resolution must be at least 8, got {resolution}")
        if int(captions_per_image) < 1:
            raise UserError(f"shapes: captions_per_image must be positive, got {captions_per_image}")
        if int(start) < 0:
            raise UserError(f"shapes: start must be non-negative, got {start}")
        prefix = "shapes-" if int(seed) == 0 else f"shapes-s{int(seed)}-"
        ids, specs, captions = [], [], []
        for index in range(int(start), int(start) + int(n)):
            rng = numpy_rng(seed, "shapes", index)
            spec = random_scene(rng, max_objects)
            specs.append(spec)
            captions.append(tuple(scene_captions(spec, int(captions_per_image), rng)))
            ids.append(f"{prefix}{index:05d}")
        images = render_scenes(specs, int(resolution))
        super().__init__(self.name, self.version, ids, images, captions,
                         meta={"resolution": int(resolution), "seed": int(seed), "max_objects": int(max_objects),
                               "start": int(start), "captions_per_image": int(captions_per_image)})
        self.specs = specs


# -- concepts ---------------------------------------------------------------------------------------------------
@dataclass
class Concept:
    """A concept of the Customized Model benchmark.

    ``id`` (unique across both splits), ``kind`` ("object" or "style"), ``token`` naming it in captions and
    prompts, ``exemplars`` (the images it is customized on; ids unique across all concepts of both splits, captions
    containing the token), ``query_prompts`` (prompts with the token, for synthesizing queries), ``description``;
    ``split``, ``name`` (the glyph or style), ``colour`` (object concepts: the glyph's colour), ``exemplar_specs``
    and ``query_specs`` (the scene specs behind the exemplars and the prompts, with the glyph/style filled in, so a
    generated query can be compared with what it should show).
    """

    id: str
    kind: str
    token: str = "<v*>"
    exemplars: Any = None
    query_prompts: list[str] = field(default_factory=list)
    description: str = ""
    split: str = "test"
    name: str = ""
    colour: str | None = None
    exemplar_specs: list[dict] = field(default_factory=list)
    query_specs: list[dict] = field(default_factory=list)


def _glyph_exemplar_spec(glyph: str) -> dict:
    return {"objects": [{"shape": glyph, "colour": GLYPH_COLOURS[glyph], "size": "large", "position": "centre"}]}


def _object_query_specs(glyph: str, n: int, rng) -> list[dict]:
    """Scenes containing the glyph: alone at each position and sizes, or beside an ordinary object."""
    specs = []
    colour = GLYPH_COLOURS[glyph]
    positions = list(POSITIONS)
    for k in range(n):
        size = "large"  # glyphs are only recognisable at 16 px when large
        if k < len(positions):
            objs = [{"shape": glyph, "colour": colour, "size": size, "position": positions[k]}]
        else:
            pos = [SIDE_POSITIONS[int(i)] for i in rng.permutation(len(SIDE_POSITIONS))[:2]]
            other = {"shape": SHAPES[int(rng.integers(len(SHAPES)))],
                     "colour": list(COLOURS)[int(rng.integers(len(COLOURS)))],
                     "size": list(SIZES)[int(rng.integers(len(SIZES)))], "position": pos[1]}
            objs = [{"shape": glyph, "colour": colour, "size": size, "position": pos[0]}, other]
            objs.sort(key=lambda o: positions.index(o["position"]))
        specs.append({"objects": objs})
    return specs


_POSITIONED_VARIANTS = (0, 2, 4, 5)


def _query_prompts(specs: Sequence[dict], rng, token: str, positioned: bool) -> list[str]:
    """One prompt per spec, distinct from the earlier ones where a paraphrase allows it."""
    variants = _POSITIONED_VARIANTS if positioned else tuple(range(N_CAPTION_VARIANTS))
    out: list[str] = []
    for spec in specs:
        order = [variants[int(k)] for k in rng.permutation(len(variants))]
        prompts = [_variant(spec, v, token) for v in order]
        fresh = [p for p in prompts if p not in out]
        out.append(fresh[0] if fresh else prompts[0])
    return out


def make_concepts(split: str = "test", n_object: int = 3, n_style: int = 3, exemplars_per_style=(4, 12),
                  resolution: int = 16, seed: int = 0, token: str = "<v*>", n_queries: int = 8,
                  captions_per_image: int = 5) -> list[Concept]:
    """The concepts of one split: ``n_object`` glyph concepts then ``n_style`` style concepts.

    ``split``: "test" or "train" (disjoint glyphs and styles, see :data:`CONCEPT_GLYPHS` / :data:`CONCEPT_STYLES`;
    at most four of each per split). ``exemplars_per_style``: an int or an inclusive range ``(lo, hi)``; each style
    concept draws its count from it. Object concepts have one exemplar: the glyph, large, in the centre, in its
    colour. Style exemplars are ordinary scenes (as in :class:`Shapes`, but drawn from the concept's own seed
    stream) rendered in the style. ``n_queries`` prompts per concept, deterministic in (seed, split, concept).
    Exemplar ids: ``concept-{split}-{kind}-{name}-{k:02d}``.
    """
    from genattr.harness.errors import UserError

    if split not in CONCEPT_GLYPHS:
        raise UserError(f"concept split must be 'train' or 'test', got {split!r}")
    glyphs, styles = CONCEPT_GLYPHS[split], CONCEPT_STYLES[split]
    if not 0 <= int(n_object) <= len(glyphs):
        raise UserError(f"n_object must be in 0..{len(glyphs)} for split {split!r}, got {n_object}")
    if not 0 <= int(n_style) <= len(styles):
        raise UserError(f"n_style must be in 0..{len(styles)} for split {split!r}, got {n_style}")
    if isinstance(exemplars_per_style, (int, np.integer)):
        lo = hi = int(exemplars_per_style)
    else:
        lo, hi = (int(v) for v in exemplars_per_style)
    if not 1 <= lo <= hi:
        raise UserError(f"exemplars_per_style must be a positive int or a range lo ≤ hi, got {exemplars_per_style}")

    concepts = []
    for glyph in glyphs[: int(n_object)]:
        cid = f"{split}-object-{glyph}"
        rng = numpy_rng(seed, "concept", cid)
        spec = _glyph_exemplar_spec(glyph)
        caps = [tuple(scene_captions(spec, captions_per_image, rng, token))]
        exemplars = InMemoryDataset(f"concept-{cid}", "1", [f"concept-{cid}-00"], render_scenes([spec], resolution),
                                    caps, meta={"concept": cid})
        qspecs = _object_query_specs(glyph, int(n_queries), rng)
        prompts = _query_prompts(qspecs, rng, token, positioned=True)
        concepts.append(Concept(
            id=cid, kind="object", token=token, exemplars=exemplars, query_prompts=prompts,
            description=f"object glyph '{glyph}': {GLYPH_DESCRIPTIONS[glyph]}, {GLYPH_COLOURS[glyph]}",
            split=split, name=glyph, colour=GLYPH_COLOURS[glyph], exemplar_specs=[spec], query_specs=qspecs))
    for style in styles[: int(n_style)]:
        cid = f"{split}-style-{style}"
        rng = numpy_rng(seed, "concept", cid)
        count = int(rng.integers(lo, hi + 1))
        specs = [dict(random_scene(rng), style=style) for _ in range(count)]
        caps = [tuple(scene_captions(s, captions_per_image, rng, token)) for s in specs]
        ids = [f"concept-{cid}-{k:02d}" for k in range(count)]
        exemplars = InMemoryDataset(f"concept-{cid}", "1", ids, render_scenes(specs, resolution), caps,
                                    meta={"concept": cid})
        qspecs = [dict(random_scene(rng), style=style) for _ in range(int(n_queries))]
        prompts = _query_prompts(qspecs, rng, token, positioned=False)
        concepts.append(Concept(
            id=cid, kind="style", token=token, exemplars=exemplars, query_prompts=prompts,
            description=f"rendering style '{style}': {STYLE_DESCRIPTIONS[style]}",
            split=split, name=style, exemplar_specs=specs, query_specs=qspecs))
    return concepts


def render_concept_scene(concept_or_style, spec: dict, resolution: int = 16):
    """Render ``spec`` as the concept would show it: ``3×H×W`` in ``[-1, 1]``.

    ``concept_or_style``: a :class:`Concept`, a style name or a glyph name. For a style, the scene is rendered in
    that style. For a glyph, every object whose shape is not a base shape (e.g. ``"<v*>"`` or ``"concept"``) is
    drawn as the glyph in its colour.
    """
    if isinstance(concept_or_style, Concept):
        kind, name = concept_or_style.kind, concept_or_style.name
    elif concept_or_style in STYLES:
        kind, name = "style", concept_or_style
    elif concept_or_style in GLYPHS:
        kind, name = "object", concept_or_style
    else:
        raise ValueError(f"unknown concept {concept_or_style!r}; "
                         f"styles: {', '.join(STYLES)}; glyphs: {', '.join(GLYPHS)}")
    if kind == "style":
        return render_scene(spec, resolution, style=name)
    objs = [dict(o, shape=name, colour=GLYPH_COLOURS[name]) if o["shape"] not in SHAPES else o for o in spec["objects"]]
    return render_scene({"objects": objs}, resolution)
