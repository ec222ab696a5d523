"""Quality of the tiny text-to-image model at ``small`` scale (issue 3, item 4). Slow: minutes; not run in CI.

Run: ``nice -n 10 python -m pytest tests/perf/test_model_quality.py -m slow -q -s``.

* digits: train the ``small`` digits recipe, generate for "digit d" prompts (the dataset's own paraphrases), classify
  the samples with a logistic regression trained on the real digits at the same resolution: ≥ 80 % must be d.
* shapes: train the ``small`` shapes recipe, generate single-object prompts ("a red circle on the left"), classify
  colour and shape with logistic regressions trained on rendered single-object scenes: ≥ 80 % must agree with the
  prompt on both.

Each test prints its training time and accuracy. The helpers are plain functions so a script can call them.
"""

from __future__ import annotations

import time

import pytest

BAR = 0.80


def train_small(dataset_name: str, overrides: dict | None = None, device: str = "cpu", progress: bool = False):
    """(dataset, trained model, training report) for the ``small`` recipe of ``dataset_name``."""
    from genattr.plugins.models.recipes import recipe
    from genattr.plugins.models.tiny_t2i import TinyT2I

    r = recipe(dataset_name, "small")
    for part, values in (overrides or {}).items():
        r[part].update(values)
    if dataset_name == "digits":
        from genattr.datasets.digits import Digits

        ds = Digits(**r["dataset"])
    else:
        from genattr.datasets.shapes import Shapes

        ds = Shapes(**r["dataset"])
    model = TinyT2I.for_dataset(ds, **r["model"])
    if device != "cpu":
        model.to(device)
    report = model.train(ds, {**r["train"], "progress": progress})
    return ds, model, report


def digits_accuracy(model, per_digit: int = 20, steps: int = 50, seed: int = 0, guidance_scale=None) -> dict:
    """Fraction of samples for "digit d" prompts that a classifier trained on the real digits labels d."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from genattr.datasets.digits import TEMPLATES, Digits, digit_caption

    real = Digits(resolution=model.resolution, captions_per_image=1)
    x = real.images().flatten(1).numpy()
    y = np.asarray(real.labels)
    clf = LogisticRegression(max_iter=3000, C=1.0).fit(x, y)
    prompts, labels, seeds = [], [], []
    for d in range(10):
        for k in range(per_digit):
            prompts.append(digit_caption(d, k % len(TEMPLATES)))
            labels.append(d)
            seeds.append(seed * 100_000 + d * 1000 + k)
    t0 = time.perf_counter()
    images = model.generate(prompts, seeds, steps=steps, guidance_scale=guidance_scale)
    gen_s = time.perf_counter() - t0
    pred = clf.predict(images.flatten(1).numpy())
    acc = float((pred == np.asarray(labels)).mean())
    per = {d: float((pred[np.asarray(labels) == d] == d).mean()) for d in range(10)}
    return {"accuracy": acc, "per_digit": per, "samples": len(prompts), "generate_seconds": gen_s}


def shapes_accuracy(model, per_combo: int = 2, steps: int = 50, seed: int = 0, guidance_scale=None) -> dict:
    """Fraction of single-object samples whose colour and shape (by classifiers trained on rendered single-object
    scenes at every size and position) agree with the prompt."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from genattr.datasets.shapes import COLOURS, POSITIONS, SHAPES, SIZES, caption_scene, render_scenes

    specs = [{"objects": [{"shape": s, "colour": c, "size": z, "position": p}]}
             for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS]
    imgs = render_scenes(specs, model.resolution)
    # light pixel noise so the classifiers do not depend on exact anti-aliasing
    g = np.random.default_rng(0)
    x = np.concatenate([imgs.flatten(1).numpy() + g.normal(0, 0.1, (len(specs), imgs[0].numel()))
                        for _ in range(8)])
    shapes = np.tile([sp["objects"][0]["shape"] for sp in specs], 8)
    colours = np.tile([sp["objects"][0]["colour"] for sp in specs], 8)
    shape_clf = LogisticRegression(max_iter=3000).fit(x, shapes)
    colour_clf = LogisticRegression(max_iter=3000).fit(x, colours)
    prompts, want_s, want_c, seeds = [], [], [], []
    k = 0
    for s in SHAPES:
        for c in COLOURS:
            for p in POSITIONS:
                for r in range(per_combo):
                    spec = {"objects": [{"shape": s, "colour": c, "size": "large", "position": p}]}
                    prompts.append(caption_scene(spec, 0))
                    want_s.append(s)
                    want_c.append(c)
                    seeds.append(seed * 100_000 + k)
                    k += 1
    t0 = time.perf_counter()
    images = model.generate(prompts, seeds, steps=steps, guidance_scale=guidance_scale)
    gen_s = time.perf_counter() - t0
    flat = images.flatten(1).numpy()
    ps, pc = shape_clf.predict(flat), colour_clf.predict(flat)
    ok_s, ok_c = ps == np.asarray(want_s), pc == np.asarray(want_c)
    return {"accuracy": float((ok_s & ok_c).mean()), "shape_accuracy": float(ok_s.mean()),
            "colour_accuracy": float(ok_c.mean()), "samples": len(prompts), "generate_seconds": gen_s,
            "example_prompt": prompts[0]}


@pytest.mark.slow
def test_digits_small_quality():
    ds, model, report = train_small("digits")
    q = digits_accuracy(model)
    print(f"\ndigits small: trained {report['steps']} steps × {report['batch_size']} in {report['seconds']:.0f} s "
          f"({report['images_per_second']:.0f} img/s), final loss {report['losses'][-1]:.4f}; "
          f"accuracy {q['accuracy']:.3f} over {q['samples']} samples; per digit {q['per_digit']}")
    assert q["accuracy"] >= BAR


@pytest.mark.slow
def test_shapes_small_quality():
    ds, model, report = train_small("shapes")
    q = shapes_accuracy(model)
    print(f"\nshapes small: trained {report['steps']} steps × {report['batch_size']} in {report['seconds']:.0f} s "
          f"({report['images_per_second']:.0f} img/s), final loss {report['losses'][-1]:.4f}; "
          f"colour+shape accuracy {q['accuracy']:.3f} (shape {q['shape_accuracy']:.3f}, colour "
          f"{q['colour_accuracy']:.3f}) over {q['samples']} samples")
    assert q["accuracy"] >= BAR
