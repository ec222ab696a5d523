"""The ``shapes`` dataset: procedural captioned scenes (the offline stand-in for MSCOCO), and the concepts of the
built-in Customized Model benchmark (novel object glyphs and novel rendering styles).

* :mod:`.render` — the scene vocabulary, scene specs (:func:`random_scene`, :func:`scene_spec`) and the renderer
  (:func:`render_scene`, :func:`render_scenes`); its docstring describes the scene distribution;
* :mod:`.captions` — the paraphrased captions (:func:`caption_scene`, :func:`scene_captions`,
  :func:`caption_vocabulary`);
* :mod:`.concepts` — the Customized Model concepts (:class:`Concept`, :func:`make_concepts`,
  :func:`render_concept_scene`);
* here — the :class:`Shapes` dataset, and every name above, re-exported.
"""

from __future__ import annotations

from typing import Sequence

from genattr.harness.data import InMemoryDataset
from genattr.harness.seeding import numpy_rng

from .captions import (
    N_CAPTION_VARIANTS,
    POSITION_PHRASES,
    caption_scene,
    caption_vocabulary,
    scene_captions,
)
from .concepts import (
    GLYPH_DESCRIPTIONS,
    STYLE_DESCRIPTIONS,
    Concept,
    make_concepts,
    render_concept_scene,
)
from .render import _NIGHT, _SEPIA, _SHADOW, _SUNSET  # noqa: F401 - the tests check the style colours
from .render import (
    BACKGROUNDS,
    COLOURS,
    CONCEPT_GLYPHS,
    CONCEPT_STYLES,
    GLYPH_COLOURS,
    GLYPHS,
    MAX_JITTER,
    POSITIONS,
    SHAPES,
    SIDE_POSITIONS,
    SIZES,
    STYLES,
    random_scene,
    render_scene,
    render_scenes,
    scene_spec,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "CONCEPT_GLYPHS", "CONCEPT_STYLES", "GLYPH_COLOURS", "GLYPH_DESCRIPTIONS", "GLYPHS",
    "MAX_JITTER", "N_CAPTION_VARIANTS", "POSITION_PHRASES", "POSITIONS", "SHAPES", "SIDE_POSITIONS", "SIZES", "STYLE_DESCRIPTIONS",
    "STYLES", "Concept", "Shapes", "caption_scene", "caption_vocabulary", "make_concepts", "random_scene",
    "render_concept_scene", "render_scene", "render_scenes", "scene_captions", "scene_spec",
]


# -- the dataset ------------------------------------------------------------------------------------------------
class Shapes(InMemoryDataset):
    """Procedural captioned scenes (the scene distribution: :mod:`genattr.datasets.shapes.render`).

    ``n`` scenes with indices ``start … start + n − 1``, each deterministic in (``seed``, index): ``start``
    gives held-out scenes drawn from the same distribution as training but not the same draws (single-object
    scenes come from only 150 combinations, so some repeat by design). Ids ``shapes-00042`` (``shapes-s7-00042``
    for ``seed=7``). ``specs``: the JSON-able scene spec of each item, to check generated images against.
    """

    name = "shapes"
    version = "1"

    def __init__(self, n: int = 2000, resolution: int = 16, seed: int = 0, max_objects: int = 3,
                 captions_per_image: int = 5, start: int = 0, holdout: Sequence[str] = (),
                 backgrounds: Sequence[str] | None = None, heldout_min_objects: int = 1, jitter: float = 0.0):
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
        pairs = _holdout_pairs(holdout)
        if not 1 <= int(heldout_min_objects) <= int(max_objects):
            raise UserError(f"shapes: heldout_min_objects must be in 1..max_objects ({max_objects}), got "
                            f"{heldout_min_objects}")
        if backgrounds is not None:
            backgrounds = [str(b) for b in backgrounds]
            bad = [b for b in backgrounds if b not in BACKGROUNDS]
            if bad or not backgrounds:
                raise UserError(f"shapes: backgrounds must be a non-empty list of {', '.join(BACKGROUNDS)}; got "
                                f"{bad[0] if bad else '[]'!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= float(jitter) <= MAX_JITTER:
            raise UserError(f"shapes: jitter must be a number in [0, {MAX_JITTER}] (a fraction of the image side), "
                            f"got {jitter!r}")
        jitter = float(jitter)
        prefix = "shapes-" if int(seed) == 0 else f"shapes-s{int(seed)}-"
        ids, specs, captions = [], [], []
        for index in range(int(start), int(start) + int(n)):
            rng = numpy_rng(seed, "shapes", index)
            spec = random_scene(rng, max_objects, exclude=pairs, backgrounds=backgrounds, jitter=jitter)
            specs.append(spec)
            captions.append(tuple(scene_captions(spec, int(captions_per_image), rng)))
            ids.append(f"{prefix}{index:05d}")
        images = render_scenes(specs, int(resolution))
        meta = {"resolution": int(resolution), "seed": int(seed), "max_objects": int(max_objects),
                "start": int(start), "captions_per_image": int(captions_per_image)}
        if pairs:  # only when given: datasets of earlier versions keep their fingerprints
            meta["holdout"] = [f"{c} {s}" for c, s in pairs]
        if backgrounds is not None:
            meta["backgrounds"] = list(backgrounds)
        if int(heldout_min_objects) != 1:
            meta["heldout_min_objects"] = int(heldout_min_objects)
        if jitter:
            meta["jitter"] = jitter
        super().__init__(self.name, self.version, ids, images, captions, meta=meta)
        self.specs = specs

    #: The Customized Model benchmark's concept source (``concepts(split=..., ...)``, see :func:`make_concepts`).
    concepts = staticmethod(make_concepts)

    def _kwargs(self, **change) -> dict:
        m = self.meta
        return {"resolution": m["resolution"], "seed": m["seed"], "max_objects": m["max_objects"],
                "captions_per_image": m["captions_per_image"], "start": m["start"],
                "holdout": list(m.get("holdout", ())), "backgrounds": m.get("backgrounds"),
                "heldout_min_objects": m.get("heldout_min_objects", 1), "jitter": m.get("jitter", 0.0), **change}

    def take(self, n: int) -> "Shapes":
        """The first ``n`` scenes (a ``Shapes`` again, so ``specs`` stay available)."""
        if int(n) >= len(self):
            return self
        return Shapes(n=int(n), **self._kwargs())

    def heldout(self, n: int, count: int) -> list[tuple[str, tuple[str, ...]]]:
        """``count`` scenes after the first ``n``: ``[(id, captions)]``. Without ``holdout``: the same distribution,
        other draws. With ``holdout``: scenes of the held-out combinations — each has at least one object whose
        (colour, shape) pair never occurs in training (its first object is given one when the draw has none), so
        its captions combine words the training captions hold, never together; ``heldout_min_objects`` sets their
        fewest objects)."""
        held = self.heldout_specs(n, count)
        return [(i, c) for i, _, c in held]

    def heldout_specs(self, n: int, count: int) -> list[tuple[str, dict, tuple[str, ...]]]:
        """``[(id, spec, captions)]`` of :meth:`heldout` (the specs, to render or check generated images)."""
        m = self.meta
        pairs = _holdout_pairs(m.get("holdout", ()))
        if not pairs:
            held = Shapes(n=int(count), **self._kwargs(start=m["start"] + int(n)))
            return [(held.ids[i], held.specs[i], held.captions(i)) for i in range(len(held))]
        prefix = "shapes-" if int(m["seed"]) == 0 else f"shapes-s{int(m['seed'])}-"
        out = []
        for index in range(m["start"] + int(n), m["start"] + int(n) + int(count)):
            rng = numpy_rng(m["seed"], "shapes-heldout-combination", index)
            spec = random_scene(rng, m["max_objects"], backgrounds=m.get("backgrounds"),
                                min_objects=m.get("heldout_min_objects", 1), jitter=m.get("jitter", 0.0))
            if not any((o["colour"], o["shape"]) in pairs for o in spec["objects"]):
                colour, shape = pairs[int(rng.integers(len(pairs)))]
                spec["objects"][0] = dict(spec["objects"][0], colour=colour, shape=shape)
            caps = tuple(scene_captions(spec, int(m["captions_per_image"]), rng))
            out.append((f"{prefix}heldout-{index:05d}", spec, caps))
        return out

    def heldout_images(self, n: int, count: int):
        """``count × 3×H×W`` real images of :meth:`heldout`'s scenes (the regime check's held-out reals: with
        ``holdout``, renders of the held-out combinations the queries are generated from)."""
        return render_scenes([spec for _, spec, _ in self.heldout_specs(n, count)], int(self.meta["resolution"]))

    def render(self, spec: dict):
        """A spec rendered at this dataset's resolution (``3×H×W`` in ``[-1, 1]``)."""
        return render_scene(spec, int(self.meta["resolution"]))


def _holdout_pairs(holdout: Sequence[str]) -> list[tuple[str, str]]:
    """``["red triangle", …]`` → ``[("red", "triangle"), …]``; a one-line error for anything else."""
    from genattr.harness.errors import UserError

    if isinstance(holdout, str):
        holdout = [holdout]
    pairs = []
    for item in holdout or ():
        parts = str(item).split()
        if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
            raise UserError(f"shapes: holdout entries are 'colour shape' (colours {', '.join(COLOURS)}; shapes "
                            f"{', '.join(SHAPES)}), got {item!r}")
        pairs.append((parts[0], parts[1]))
    if len(set(pairs)) == len(COLOURS) * len(SHAPES):
        raise UserError("shapes: holdout names every (colour, shape) pair; leave some for training")
    return sorted(set(pairs))
