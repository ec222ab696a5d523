"""Rendering of ``shapes`` scenes: the scene vocabulary (shapes, colours, sizes, positions, glyphs, styles), scene
specs and the anti-aliased renderer.

Scenes
------
A scene is a JSON-able spec ``{"objects": [{"shape", "colour", "size", "position"}, …]}`` (optionally with a
``"style"``), drawn deterministically from ``(seed, index)``:

* 1 … ``max_objects`` objects; shapes :data:`SHAPES`, colours :data:`COLOURS`, sizes :data:`SIZES`;
* positions :data:`POSITIONS`: a single object may sit at any of the five, scenes with several objects use distinct
  positions among left/right/top/bottom (the centre would overlap them), so objects never hide each other;
* each further object repeats the shape and colour of an earlier one with probability 1/4, so captions such as
  "two red circles" are common.

A spec may name a ``"background"`` (:data:`BACKGROUNDS`: ``plain`` black — the default — or a dim ``grey``,
``striped``, ``dotted`` or ``gradient`` texture); captions then say so ("… on a striped background").
:func:`random_scene` can leave (colour, shape) pairs out (``exclude``), so a dataset can hold combinations out of
training.

Images are RGB on a black background unless the spec names another, rendered with 4×4 supersampling (anti-aliased edges) and scaled to
``[-1, 1]``. At 16 px a large object is about 6 px across and a small one about 4.5 px. Object shapes may also be
the concept glyphs (:data:`GLYPHS`), and a scene may be drawn in any of :data:`STYLES`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

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

#: The largest ``jitter`` of :func:`random_scene`: at 0.06 a small object (radius 0.15 × 1.06 = 0.159) stays
#: smaller than a large one (0.20 × 0.94 = 0.188), and a side object stays on its side.
MAX_JITTER = 0.06

#: Scene backgrounds (``spec["background"]``): dim textures that never hide an object; ``plain`` is black.
BACKGROUNDS = ("plain", "grey", "striped", "dotted", "gradient")

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
def _object_masks(shape: str, size: str, position: str, resolution: int, dx: float = 0.0, dy: float = 0.0,
                  scale: float = 1.0):
    """(fill, outline, thick, thick_border) anti-aliased float32 masks H×W for one object (cached, read-only);
    ``dx``, ``dy`` move its centre and ``scale`` its radius (a jittered object, :func:`random_scene`)."""
    s = _SUPERSAMPLE
    n = resolution * s
    coords = (np.arange(n, dtype=np.float64) + 0.5) / n
    cx, cy = POSITIONS[position]
    cx, cy = cx + dx, cy + dy
    r = SIZES[size] * scale
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


def _scene_background(name: str, resolution: int) -> np.ndarray:
    """The H×W×3 background of ``spec["background"]`` (:data:`BACKGROUNDS`)."""
    img = np.zeros((resolution, resolution, 3), dtype=np.float32)
    period = max(2, resolution // 8)
    rows = np.arange(resolution)[:, None]
    cols = np.arange(resolution)[None, :]
    if name == "grey":
        img[:] = 0.30
    elif name == "striped":  # horizontal dim stripes, half a period each
        img[:] = (np.where((rows // (period // 2)) % 2 == 0, 0.28, 0.0) * np.ones((1, resolution)))[..., None]
    elif name == "dotted":  # a dim dot every period
        dots = ((rows % period) < max(1, period // 4)) & ((cols % period) < max(1, period // 4))
        img[:] = np.where(dots, 0.40, 0.0)[..., None]
    elif name == "gradient":  # dark teal at the top to dark at the bottom
        t = 1.0 - (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
        img[:] = t[:, None, None] * np.asarray((0.05, 0.30, 0.32), dtype=np.float32)
    elif name != "plain":
        raise ValueError(f"unknown background {name!r}; known: {', '.join(BACKGROUNDS)}")
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
    if spec.get("background", "plain") != "plain" and style is None:
        img = _scene_background(spec["background"], int(resolution))
    px = max(1, int(resolution) // 16)  # one output pixel at 16 px
    for obj in spec["objects"]:
        dx, dy = obj.get("offset", (0.0, 0.0))
        place = (float(dx), float(dy), float(obj.get("scale", 1.0)))
        # a jittered object's masks are never asked for again: computed directly, not kept in the cache
        masks = _object_masks if place == (0.0, 0.0, 1.0) else _object_masks.__wrapped__
        fill, outline, thick, thick_border = masks(obj["shape"], obj["size"], obj["position"], int(resolution), *place)
        name = obj["colour"]
        colour = np.asarray(_PALETTE_SHIFT[name] if style == "palette-shift" else COLOURS[name], dtype=np.float32)
        colour = colour * np.float32(obj.get("shade", 1.0))
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
                 colours: Sequence[str] | None = None, exclude: Sequence[tuple[str, str]] = (),
                 backgrounds: Sequence[str] | None = None, min_objects: int = 1, jitter: float = 0.0) -> dict:
    """A random scene spec drawn with the numpy ``rng`` (see the module docstring for the distribution).

    ``exclude``: ``(colour, shape)`` pairs no object gets (redrawn until allowed); ``backgrounds``: draw the
    scene's background uniformly from these (None: no background key, the plain black of earlier versions — the
    same draws as before, so existing datasets are unchanged); ``min_objects``: the fewest objects (default 1).
    ``jitter`` (a fraction of the image side, at most :data:`MAX_JITTER`; 0: no draws, the discrete scenes of
    earlier versions): each object's centre moves by up to ±``jitter`` in x and y (``offset``), its radius scales by
    a factor in [1 − ``jitter``, 1 + ``jitter``] (``scale``) and its colour darkens by up to 2·``jitter``
    (``shade``), drawn after everything else — so no two scenes share a layout, as no two photographs do, while the
    caption stays true (a jittered large object stays larger than any small one, a left one stays left)."""
    colours = tuple(colours or COLOURS)
    excluded = {(str(c), str(s)) for c, s in exclude}
    count = int(rng.integers(int(min_objects), int(max_objects) + 1))
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
            while (colour, shape) in excluded:
                shape, colour = shapes[int(rng.integers(len(shapes)))], colours[int(rng.integers(len(colours)))]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        objects.append({"shape": shape, "colour": colour, "size": size, "position": pos})
    order = list(POSITIONS)
    objects.sort(key=lambda o: order.index(o["position"]))
    spec: dict = {"objects": objects}
    if backgrounds is not None:
        spec["background"] = str(backgrounds[int(rng.integers(len(backgrounds)))])
    if jitter:
        j = float(jitter)
        if not 0.0 < j <= MAX_JITTER:
            raise ValueError(f"jitter must be in [0, {MAX_JITTER}], got {jitter}")
        for obj in objects:
            dx, dy, sc, sh = rng.uniform(-1.0, 1.0, size=4)
            obj["offset"] = [round(float(dx) * j, 5), round(float(dy) * j, 5)]
            obj["scale"] = round(1.0 + float(sc) * j, 5)
            obj["shade"] = round(1.0 - (float(sh) + 1.0) * j, 5)
    return spec


def scene_spec(index: int, seed: int = 0, max_objects: int = 3) -> dict:
    """The spec of scene ``index`` of ``Shapes(seed=seed, max_objects=max_objects)``."""
    return random_scene(numpy_rng(seed, "shapes", int(index)), max_objects)
