"""The concepts of the built-in Customized Model benchmark: novel object glyphs and novel rendering styles.

:func:`make_concepts` returns the concepts of one split. An *object* concept is a novel glyph (not one of
:data:`~genattr.datasets.shapes.render.SHAPES`) in a fixed colour, shown once, large, in the centre (one exemplar).
A *style* concept is a novel rendering style applied to ordinary scenes (4–12 exemplars of different scenes).
Captions and query prompts name the concept by its token (``<v*>``): "a <v*> object on the left", "two red circles
in <v*> style". The ``train`` and ``test`` splits use disjoint glyphs and styles
(:data:`~genattr.datasets.shapes.render.CONCEPT_GLYPHS`, :data:`~genattr.datasets.shapes.render.CONCEPT_STYLES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from genattr.harness.data import InMemoryDataset
from genattr.harness.seeding import numpy_rng

from .captions import N_CAPTION_VARIANTS, _variant, scene_captions
from .render import (
    COLOURS,
    CONCEPT_GLYPHS,
    CONCEPT_STYLES,
    GLYPH_COLOURS,
    GLYPHS,
    POSITIONS,
    SHAPES,
    SIDE_POSITIONS,
    SIZES,
    STYLES,
    random_scene,
    render_scene,
    render_scenes,
)

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

    def render(self, spec: dict, resolution: int):
        """``spec`` as this concept shows it (``3×H×W`` in [-1, 1]); see :func:`render_concept_scene`."""
        return render_concept_scene(self, spec, resolution)

    @staticmethod
    def render_plain(spec: dict, resolution: int):
        """``spec`` as the plain base data shows it: no style, novel glyphs drawn as circles."""
        objs = [dict(o, shape="circle") if o["shape"] not in SHAPES else o for o in spec["objects"]]
        return render_scene({"objects": objs}, resolution)


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
