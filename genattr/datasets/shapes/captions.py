"""Captions of ``shapes`` scenes.

Captions state count, colour, shape and position in several paraphrases ("a red circle on the left and a blue
square at the top", "two red circles and a blue square", "three objects: …"); :func:`caption_scene` gives one,
:func:`scene_captions` several distinct ones, :func:`caption_vocabulary` every word they can contain. A ``token``
(e.g. ``"<v*>"``) names glyph objects and the scene's style in concept captions and prompts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .render import BACKGROUNDS, COLOURS, GLYPHS, SHAPES, SIDE_POSITIONS, SIZES, STYLES

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
_PLURALS = {"cross": "crosses", "hourglass": "hourglasses", "plus": "pluses"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


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
    background = spec.get("background", "plain")
    if background != "plain":
        text = f"{text} on {_article(background)} {background} background"
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
    words.update(["on", "an", "a", "background"] + [b for b in BACKGROUNDS if b != "plain"])
    words.update(colours)
    words.update(w for s in STYLES for w in re.findall(r"\w+|[^\w\s]", s))
    if token:
        words.add(token)
    return tuple(sorted(words))
