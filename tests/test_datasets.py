"""Built-in datasets: digits, shapes, the customized-model concepts, fingerprints and registration."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from genattr.datasets.digits import NUMBER_WORDS, Digits, digit_prompts
from genattr.datasets.shapes import (
    CONCEPT_GLYPHS,
    CONCEPT_STYLES,
    COLOURS,
    GLYPHS,
    SHAPES,
    STYLES,
    Concept,
    Shapes,
    caption_scene,
    make_concepts,
    render_concept_scene,
    render_scene,
    scene_captions,
    scene_spec,
)
from genattr.harness.api import Dataset
from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return Digits()


@pytest.fixture(scope="module")
def shapes():
    return Shapes(n=300)


# -- digits -----------------------------------------------------------------------------------------------------
def test_digits_shape_range_ids_and_labels(digits):
    assert isinstance(digits, Dataset)
    assert len(digits) == 1797 and digits.channels == 1 and digits.resolution == 16
    x = digits.images()
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() > 0.9
    assert digits.ids[42] == "digits-0042" and digits.item(42).id == "digits-0042"
    assert sorted(set(digits.labels)) == list(range(10))
    from sklearn.datasets import load_digits

    assert digits.labels == [int(v) for v in load_digits().target]


def test_digits_resize_matches_originals():
    d8 = Digits(resolution=8, limit=20)
    from sklearn.datasets import load_digits

    raw = load_digits().images[:20] / 16.0 * 2 - 1
    assert np.allclose(d8.images()[:, 0].numpy(), raw, atol=1e-6)
    d32 = Digits(resolution=32, limit=20)
    assert d32.images().shape == (20, 1, 32, 32)
    # downsampling the 32 px version back recovers roughly the originals (bilinear, not nearest)
    back = torch.nn.functional.avg_pool2d(d32.images(), 4)[:, 0].numpy()
    assert np.abs(back - raw).mean() < 0.15
    assert len(torch.unique(d32.images())) > 17  # interpolated, not just the 17 original grey levels


def test_digits_captions_name_the_digit(digits):
    for i in range(0, 1797, 97):
        caps = digits.captions(i)
        lab = digits.labels[i]
        assert len(caps) == 5 and len(set(caps)) == 5
        for c in caps:
            assert str(lab) in c.split() or NUMBER_WORDS[lab] in c.split()
            other = [w for d, w in enumerate(NUMBER_WORDS) if d != lab]
            assert not any(w in c.split() for w in other)
    assert len(digit_prompts(3)) >= 5 and all("3" in p or "three" in p for p in digit_prompts(3))


def test_digits_captions_deterministic_in_seed():
    a, b, c = Digits(limit=50, seed=0), Digits(limit=50, seed=0), Digits(limit=50, seed=1)
    assert a.all_captions == b.all_captions and a.fingerprint == b.fingerprint
    assert a.all_captions != c.all_captions and a.fingerprint != c.fingerprint
    assert torch.equal(a.images(), c.images())  # the seed only picks paraphrases


def test_digits_limit_and_options():
    d = Digits(limit=10, captions_per_image=2)
    assert len(d) == 10 and d.ids[-1] == "digits-0009" and all(len(c) == 2 for c in d.all_captions)
    with pytest.raises(UserError):
        Digits(captions_per_image=0)
    with pytest.raises(UserError):
        Digits(limit=0)


# -- shapes -----------------------------------------------------------------------------------------------------
def test_shapes_basic(shapes):
    assert isinstance(shapes, Dataset)
    x = shapes.images()
    assert x.shape == (300, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert shapes.ids[:2] == ["shapes-00000", "shapes-00001"]
    assert len(shapes.specs) == 300
    json.dumps(shapes.specs)  # JSON-able
    counts = [len(s["objects"]) for s in shapes.specs]
    assert set(counts) == {1, 2, 3}
    for s in shapes.specs:
        for o in s["objects"]:
            assert o["shape"] in SHAPES and o["colour"] in COLOURS
        pos = [o["position"] for o in s["objects"]]
        assert len(set(pos)) == len(pos)
        if len(pos) > 1:
            assert "centre" not in pos


def test_shapes_deterministic_and_start(shapes):
    again = Shapes(n=300)
    assert again.fingerprint == shapes.fingerprint and again.specs == shapes.specs
    other_seed = Shapes(n=300, seed=1)
    assert other_seed.fingerprint != shapes.fingerprint and other_seed.ids[0] == "shapes-s1-00000"
    # start offsets the index: items are the same scenes as in a longer dataset, with the same ids
    tail = Shapes(n=100, start=200)
    assert tail.ids == shapes.ids[200:]
    assert torch.equal(tail.images(), shapes.images(range(200, 300)))
    assert tail.specs == shapes.specs[200:] and tail.all_captions == shapes.all_captions[200:]
    held = Shapes(n=300, start=300)
    assert not set(held.ids) & set(shapes.ids)
    multi = [json.dumps(s, sort_keys=True) for s in held.specs if len(s["objects"]) > 1]
    train = {json.dumps(s, sort_keys=True) for s in shapes.specs}
    assert sum(m in train for m in multi) < 0.1 * len(multi)  # multi-object scenes rarely repeat
    assert scene_spec(250) == shapes.specs[250]


def test_shapes_render_matches_spec():
    spec = {"objects": [{"shape": "circle", "colour": "red", "size": "large", "position": "left"},
                        {"shape": "square", "colour": "blue", "size": "large", "position": "right"}]}
    x = render_scene(spec, 16)
    assert x.shape == (3, 16, 16)
    img = (x.numpy() + 1) / 2
    # left half: red, right half: blue, corners black
    assert img[0, 8, 3] > 0.9 and img[2, 8, 3] < 0.2
    assert img[2, 8, 12] > 0.9 and img[0, 8, 12] < 0.3
    assert img[:, 0, 0].max() == 0 and img[:, 15, 15].max() == 0
    # circle and square of the same size differ (corners of the bounding box)
    sq = render_scene({"objects": [dict(spec["objects"][0], shape="square")]}, 16)
    ci = render_scene({"objects": [spec["objects"][0]]}, 16)
    assert (sq - ci).abs().sum() > 3
    x32 = render_scene(spec, 32)
    assert x32.shape == (3, 32, 32)
    assert torch.allclose(torch.nn.functional.avg_pool2d(x32[None], 2)[0], x, atol=0.25)


def test_shapes_objects_large_enough(shapes):
    """Each object covers a recognisable area at 16 px: small ≥ 10 px, large ≥ 20 px."""
    for size, least in (("small", 10), ("large", 20)):
        for shape in SHAPES:
            x = render_scene({"objects": [{"shape": shape, "colour": "white", "size": size, "position": "centre"}]})
            assert ((x[0] + 1) / 2).sum() >= least, (shape, size)


def test_shapes_captions_state_count_colour_shape_position(shapes):
    positions = {"left", "right", "top", "bottom", "centre"}
    for i, spec in enumerate(shapes.specs[:100]):
        caps = shapes.captions(i)
        assert len(caps) == 5 and len(set(caps)) == 5
        for c in caps:
            for o in spec["objects"]:
                assert o["colour"] in c and o["shape"] in c
            for col in COLOURS:
                if col not in {o["colour"] for o in spec["objects"]}:
                    assert col not in c.split()
        words = set(" ".join(caps).split())
        assert {o["position"] for o in spec["objects"]} <= words
        assert not (positions - {o["position"] for o in spec["objects"]}) & words


def test_caption_grouping():
    spec = {"objects": [{"shape": "circle", "colour": "red", "size": "small", "position": "left"},
                        {"shape": "square", "colour": "blue", "size": "large", "position": "right"},
                        {"shape": "circle", "colour": "red", "size": "large", "position": "top"}]}
    caps = scene_captions(spec, 8, np.random.default_rng(0))
    assert "two red circles and a blue square" in caps
    assert "a red circle on the left, a blue square on the right and a red circle at the top" in caps
    assert caption_scene(spec, 3) == "three objects: two red circles and a blue square"
    assert caption_scene(spec, 11) == caption_scene(spec, 3)
    assert caption_scene(spec, np.random.default_rng(1)) in caps


def test_shapes_build_is_fast():
    t = time.perf_counter()
    Shapes(n=2000, seed=3)
    assert time.perf_counter() - t < 10  # about 1.5 s on 2 shared cores


# -- concepts ---------------------------------------------------------------------------------------------------
def test_concept_splits_disjoint_and_complete():
    assert not set(CONCEPT_GLYPHS["train"]) & set(CONCEPT_GLYPHS["test"])
    assert not set(CONCEPT_STYLES["train"]) & set(CONCEPT_STYLES["test"])
    assert not set(GLYPHS) & set(SHAPES)
    test = make_concepts("test", n_object=4, n_style=4)
    train = make_concepts("train", n_object=4, n_style=4)
    assert all(isinstance(c, Concept) for c in test + train)
    assert not {c.name for c in test} & {c.name for c in train}
    ids = [i for c in test + train for i in c.exemplars.ids]
    assert len(ids) == len(set(ids))
    assert len({c.id for c in test + train}) == len(test + train)
    assert not set(ids) & set(Shapes(n=10).ids)


def test_concept_contents():
    cs = make_concepts("test", exemplars_per_style=(4, 12))
    assert [c.kind for c in cs] == ["object"] * 3 + ["style"] * 3
    for c in cs:
        assert c.token == "<v*>"
        assert isinstance(c.exemplars, InMemoryDataset)
        assert c.exemplars.images().shape[1:] == (3, 16, 16)
        assert all(c.token in cap for caps in c.exemplars.all_captions for cap in caps)
        assert len(c.query_prompts) == 8 and all(c.token in p for p in c.query_prompts)
        assert len(set(c.query_prompts)) == len(c.query_prompts)
        assert len(c.query_specs) == len(c.query_prompts) and c.description
        if c.kind == "object":
            assert len(c.exemplars) == 1
            assert c.exemplar_specs[0]["objects"][0]["shape"] == c.name
        else:
            assert 4 <= len(c.exemplars) <= 12
            assert len({json.dumps(s, sort_keys=True) for s in c.exemplar_specs}) == len(c.exemplars)
            assert all(s["style"] == c.name for s in c.exemplar_specs)
    again = make_concepts("test", exemplars_per_style=(4, 12))
    assert [c.exemplars.fingerprint for c in cs] == [c.exemplars.fingerprint for c in again]
    assert [c.query_prompts for c in cs] == [c.query_prompts for c in again]
    other = make_concepts("test", seed=1)
    assert [c.exemplars.fingerprint for c in cs] != [c.exemplars.fingerprint for c in other]
    fixed = make_concepts("test", n_object=0, n_style=2, exemplars_per_style=6, resolution=32)
    assert [len(c.exemplars) for c in fixed] == [6, 6] and fixed[0].exemplars.resolution == 32
    with pytest.raises(UserError):
        make_concepts("val")
    with pytest.raises(UserError):
        make_concepts("test", n_object=5)


def test_styles_change_pixels_glyphs_differ():
    spec = {"objects": [{"shape": sh, "colour": c, "size": "large", "position": p}
                        for sh, c, p in (("circle", "red", "left"), ("square", "blue", "right"),
                                         ("triangle", "white", "top"))]}
    plain = render_scene(spec)
    for style in STYLES:
        styled = render_scene(spec, style=style)
        assert styled.shape == plain.shape and styled.min() >= -1 and styled.max() <= 1
        assert (styled - plain).abs().mean() > 0.02, style
        assert torch.equal(styled, render_scene(dict(spec, style=style)))
    base = {"size": "large", "position": "centre", "colour": "white"}
    imgs = {g: render_scene({"objects": [dict(base, shape=g)]}) for g in GLYPHS + SHAPES}
    names = list(imgs)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert (imgs[names[a]] - imgs[names[b]]).abs().mean() > 0.03, (names[a], names[b])
    inverted = (render_scene(spec, style="inverted") + 1) / 2
    assert torch.allclose(inverted, 1 - (plain + 1) / 2, atol=1e-6)


def test_low_frequency_styles_do_what_they_say():
    from genattr.datasets.shapes import _NIGHT, _SEPIA, _SHADOW, _SUNSET

    spec = {"objects": [{"shape": "square", "colour": "red", "size": "large", "position": "left"}]}
    plain = (render_scene(spec) + 1) / 2
    corner = (slice(None), slice(0, 2), slice(-2, None))  # top right: background in every style
    night = (render_scene(spec, style="night") + 1) / 2
    assert torch.allclose(night[corner], torch.tensor(_NIGHT)[:, None, None].expand(3, 2, 2), atol=1e-6)
    sunset = (render_scene(spec, style="sunset") + 1) / 2
    col = sunset[:, :, -1]  # right-most column: background only, top → bottom
    assert torch.all(col[0, 1:] >= col[0, :-1]) and torch.allclose(col[:, 0], torch.tensor(_SUNSET[0]), atol=0.05)
    assert torch.allclose(col[:, -1], torch.tensor(_SUNSET[1]), atol=0.05)
    sepia = (render_scene(spec, style="sepia") + 1) / 2
    assert torch.allclose(sepia[corner], torch.tensor(_SEPIA[0])[:, None, None].expand(3, 2, 2), atol=1e-6)
    # shadow: grey where the object's fill lands two pixels down-right and the object itself is absent
    shadow = (render_scene(spec, style="shadow") + 1) / 2
    fill, touched = plain.amax(dim=0) > 0.94, plain.amax(dim=0) > 1e-6  # fully covered / any coverage
    moved = torch.zeros_like(fill)
    moved[2:, 2:] = fill[:-2, :-2]
    only = moved & ~touched
    assert only.sum() > 4 and torch.allclose(shadow[:, only], torch.full_like(shadow[:, only], _SHADOW), atol=0.05)
    assert torch.equal(shadow[:, fill], plain[:, fill])
    # glow: red light next to the object, none far away, the object unchanged
    glow = (render_scene(spec, style="glow") + 1) / 2
    ring = (torch.nn.functional.max_pool2d(touched[None, None].float(), 3, 1, 1)[0, 0] > 0) & ~touched
    assert glow[0][ring].mean() > 0.1 and glow[1:][:, ring].abs().max() < 0.1
    assert glow[:, :, -3:].abs().max() < 1e-6
    assert torch.allclose(glow[:, fill], plain[:, fill], atol=0.02)


def test_render_concept_scene():
    cs = make_concepts("test")
    obj, sty = cs[0], cs[3]
    q = obj.query_specs[0]
    assert torch.equal(render_concept_scene(obj, q), render_scene(q))
    placeholder = {"objects": [dict(q["objects"][0], shape="<v*>", colour="red")]}
    assert torch.equal(render_concept_scene(obj, placeholder), render_scene(q))
    plain = scene_spec(0)
    assert torch.equal(render_concept_scene(sty, plain), render_scene(plain, style=sty.name))
    assert torch.equal(render_concept_scene(sty.name, plain), render_scene(plain, style=sty.name))
    assert torch.equal(sty.exemplars.images([0])[0], render_scene(sty.exemplar_specs[0]))


# -- fingerprints and subsets -----------------------------------------------------------------------------------
def test_fingerprint_changes_with_content_only():
    a = Shapes(n=40)
    b = Shapes(n=40)
    assert a.fingerprint == b.fingerprint
    imgs = a.images().clone()
    imgs[3, 0, 5, 5] += 0.01
    changed_pixel = InMemoryDataset("shapes", "1", a.ids, imgs, a.all_captions)
    assert changed_pixel.fingerprint != a.fingerprint
    caps = list(a.all_captions)
    caps[7] = caps[7][:-1] + ("something else",)
    assert InMemoryDataset("shapes", "1", a.ids, a.images(), caps).fingerprint != a.fingerprint
    ids = list(a.ids)
    ids[0] = "shapes-99999"
    assert InMemoryDataset("shapes", "1", ids, a.images(), a.all_captions).fingerprint != a.fingerprint
    same = InMemoryDataset("other-name", "1", a.ids, a.images().clone(), a.all_captions)
    assert same.fingerprint == a.fingerprint  # content only
    assert Shapes(n=40, resolution=32).fingerprint != a.fingerprint
    assert Shapes(n=40, captions_per_image=3).fingerprint != a.fingerprint


def test_subset_keeps_ids(shapes, digits):
    for ds in (shapes, digits):
        pick = [ds.ids[k] for k in (9, 2, 40)]
        sub = ds.subset(pick)
        assert sub.ids == pick
        for k, i in enumerate(pick):
            assert torch.equal(sub.item(k).image, ds.item(ds.index_of(i)).image)
            assert sub.item(k).captions == ds.captions(ds.index_of(i))
        assert sub.fingerprint != ds.fingerprint
        assert ds.subset(pick).fingerprint == sub.fingerprint


# -- registration -----------------------------------------------------------------------------------------------
def test_registered_and_lazy():
    import genattr
    from genattr.harness.manager import registry

    reg = registry("datasets")
    for name in ("digits", "shapes", "mscoco", "abc"):
        e = reg.get(name)
        assert e.version and e.description
    d = genattr.get_dataset("shapes", n=5)
    assert len(d) == 5 and d.name == "shapes" and d.version == reg.get("shapes").version
    assert genattr.get_dataset("digits", limit=3).version == reg.get("digits").version
    code = "import sys, genattr.datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_caption_vocabulary_covers_every_caption_and_prompt(shapes):
    import re

    from genattr.datasets.shapes import caption_vocabulary

    vocab = set(caption_vocabulary("<v*>"))
    assert "<v*>" in vocab and "style" in vocab and "circles" in vocab
    texts = [c for caps in shapes.all_captions for c in caps]
    for split in ("train", "test"):
        for c in make_concepts(split, n_object=4, n_style=4):
            texts += c.query_prompts + [x for caps in c.exemplars.all_captions for x in caps]
    words = {w for t in texts for w in re.findall(r"<[^>\s]*>|\w+|[^\w\s]", t)}
    assert words <= vocab, words - vocab
    assert "<v*>" not in caption_vocabulary(None)


def test_shapes_holdout_combinations_never_in_training():
    """Held-out (colour, shape) pairs never occur in training scenes; every held-out scene has one, and its captions
    use only words the training captions use."""
    import re

    from genattr.datasets.shapes import Shapes

    pairs = {("red", "triangle"), ("blue", "circle")}
    ds = Shapes(n=300, resolution=16, holdout=["red triangle", "blue circle"])
    seen = {(o["colour"], o["shape"]) for s in ds.specs for o in s["objects"]}
    assert not (seen & pairs) and len(seen) == 13
    held = ds.heldout_specs(300, 40)
    assert all(any((o["colour"], o["shape"]) in pairs for o in spec["objects"]) for _, spec, _ in held)
    words = {w for i in range(len(ds)) for c in ds.captions(i) for w in re.findall(r"\w+", c)}
    assert {w for _, _, caps in held for c in caps for w in re.findall(r"\w+", c)} <= words | {"circles", "triangles"}
    assert ds.heldout(300, 5)[0][0].startswith("shapes-heldout-")
    assert ds.heldout_images(300, 4).shape == (4, 3, 16, 16)
    assert ds.fingerprint != Shapes(n=300, resolution=16).fingerprint
    assert ds.take(10).meta["holdout"] == ["blue circle", "red triangle"]
    multi = Shapes(n=300, resolution=16, holdout=["red triangle", "blue circle"], heldout_min_objects=2)
    assert multi.fingerprint == ds.fingerprint  # the training scenes are the same
    assert all(len(spec["objects"]) >= 2 for _, spec, _ in multi.heldout_specs(300, 30))


def test_shapes_backgrounds_rendered_and_captioned():
    from genattr.datasets.shapes import BACKGROUNDS, Shapes, render_scene

    ds = Shapes(n=60, resolution=16, backgrounds=list(BACKGROUNDS))
    got = {s["background"] for s in ds.specs}
    assert got == set(BACKGROUNDS)
    for i, spec in enumerate(ds.specs):
        plain = spec["background"] == "plain"
        assert all(("background" in c) != plain for c in ds.captions(i))
    obj = {"shape": "circle", "colour": "red", "size": "small", "position": "left"}
    corner = [float(render_scene({"objects": [obj], "background": b}, 32)[:, 0:8, 24:32].mean()) for b in BACKGROUNDS]
    assert len(set(round(c, 4) for c in corner)) == len(BACKGROUNDS)  # each texture differs where no object is


def test_shapes_defaults_unchanged_by_new_options():
    """Without holdout / backgrounds the draws and fingerprint are those of earlier versions (cached artefacts and
    committed results stay valid)."""
    from genattr.datasets.shapes import Shapes

    a = Shapes(n=20, resolution=16)
    assert "background" not in a.specs[0] and "holdout" not in a.meta
    assert a.fingerprint == Shapes(n=20, resolution=16, holdout=[], backgrounds=None, jitter=0).fingerprint
    assert all("offset" not in o for spec in a.specs for o in spec["objects"])


def test_shapes_jitter_makes_every_layout_unique_and_keeps_captions_true():
    """Jitter moves, scales and shades each object within bounds that keep its caption true; without it the
    discrete scene space repeats layouts exactly, with it no two scenes are the same image."""
    from genattr.datasets.shapes import MAX_JITTER, SIZES, Shapes

    kw = dict(n=600, resolution=16, backgrounds=["plain", "grey"], holdout=["red triangle"])
    plain, jittered = Shapes(**kw), Shapes(**kw, jitter=MAX_JITTER)
    assert jittered.fingerprint != plain.fingerprint and jittered.meta["jitter"] == MAX_JITTER

    def exact_duplicates(ds) -> int:
        x = ds.images(list(range(len(ds)))).flatten(1)
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        return int((d.min(dim=1).values < 1e-6).sum())

    assert exact_duplicates(plain) > 0 and exact_duplicates(jittered) == 0
    radius = {"small": [], "large": []}
    for i, spec in enumerate(jittered.specs):
        for o in spec["objects"]:
            assert all(abs(v) <= MAX_JITTER for v in o["offset"])
            assert 1 - 2 * MAX_JITTER <= o["shade"] <= 1
            radius[o["size"]].append(SIZES[o["size"]] * o["scale"])
        assert not any(o["colour"] == "red" and o["shape"] == "triangle" for o in spec["objects"])
    assert max(radius["small"]) < min(radius["large"])
    held = jittered.heldout_specs(600, 20)
    assert all("offset" in o for _, spec, _ in held for o in spec["objects"])
    a, b = Shapes(n=5, jitter=0.03).images([0, 1, 2, 3, 4]), Shapes(n=5, jitter=0.03).images([0, 1, 2, 3, 4])
    assert torch.equal(a, b)  # deterministic in (seed, index)


@pytest.mark.parametrize("kw, words", [({"holdout": ["pink circle"]}, "holdout entries"),
                                       ({"holdout": ["red"]}, "holdout entries"),
                                       ({"backgrounds": ["wood"]}, "backgrounds must"),
                                       ({"backgrounds": []}, "backgrounds must"),
                                       ({"heldout_min_objects": 4}, "heldout_min_objects"),
                                       ({"jitter": 0.2}, "jitter must"), ({"jitter": True}, "jitter must"),
                                       ({"jitter": "0.05"}, "jitter must")])
def test_shapes_bad_new_options_one_line(kw, words):
    from genattr.datasets.shapes import Shapes
    from genattr.harness.errors import UserError

    with pytest.raises(UserError, match=words) as e:
        Shapes(n=5, **kw)
    assert "\n" not in str(e.value)
