"""Real-data loaders on tiny fake trees: MSCOCO 2017 and the public AbC layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genattr.datasets.abc import SPLITS, AbCEntry, AbCPool, load_abc_split, load_images
from genattr.datasets.mscoco import MSCOCO
from genattr.harness.errors import UserError


def _write_image(path: Path, w: int, h: int, colour, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = colour
    a[: h // 4] = 255 - np.asarray(colour, np.uint8)  # a band at the top, so the crop position matters
    Image.fromarray(a).save(path, format=fmt)


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    images = [
        {"id": 139, "file_name": "000000000139.jpg", "width": 40, "height": 30},
        {"id": 9, "file_name": "000000000009.png", "width": 30, "height": 40},
        {"id": 25, "file_name": "000000000025.jpg", "width": 32, "height": 32},
        {"id": 77, "file_name": "000000000077.jpg", "width": 32, "height": 32},  # no captions: skipped
    ]
    colours = {139: (200, 30, 30), 9: (30, 200, 30), 25: (30, 30, 200), 77: (0, 0, 0)}
    for im in images:
        _write_image(root / "train2017" / im["file_name"], im["width"], im["height"], colours[im["id"]])
    anns = []
    aid = 1000
    for img_id, n in ((139, 6), (9, 5), (25, 5)):
        for k in range(n):
            aid -= 1
            anns.append({"image_id": img_id, "id": aid, "caption": f"  image {img_id} caption {k}\n"})
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def test_mscoco_loads_fake_tree(coco):
    ds = MSCOCO(coco, resolution=16)
    assert ds.ids == ["9", "25", "139"]  # ordered by image id, uncaptioned image skipped
    assert ds.images().shape == (3, 3, 16, 16) and ds.channels == 3
    assert ds.images().min() >= -1 and ds.images().max() <= 1
    caps = ds.captions(2)
    assert len(caps) == 5 and all(c.startswith("image 139 caption") for c in caps)
    assert caps[0] == "image 139 caption 5"  # sorted by annotation id, whitespace normalised
    # colours survive: image 9 is green in its lower part
    green = (ds.images([0])[0, :, 12, 8] + 1) * 127.5
    assert green[1] > 150 and green[0] < 80
    # centre crop of a 40×30 image to 16: the top band (rows 0..6 of 30) maps to the top rows
    red = (ds.images([2])[0] + 1) * 127.5
    assert red[0, 15, 8] > 150 and red[0, 0, 8] < 100
    assert ds.latents is None and ds.file_names[0] == "000000000009.png"
    assert MSCOCO(coco, resolution=16).fingerprint == ds.fingerprint
    assert MSCOCO(coco, resolution=8).fingerprint != ds.fingerprint
    lim = MSCOCO(coco, resolution=16, limit=2)
    assert lim.ids == ["9", "25"] and torch.equal(lim.images(), ds.images([0, 1]))
    assert ds.subset(["139"]).ids == ["139"]


def test_mscoco_latents(coco, tmp_path):
    from safetensors.torch import save_file

    lat = {i: torch.full((4, 2, 2), float(k)) for k, i in enumerate(["139", "9", "25"])}
    save_file(lat, str(tmp_path / "lat.safetensors"))
    ds = MSCOCO(coco, resolution=16, latents=tmp_path / "lat.safetensors")
    assert ds.latents.shape == (3, 4, 2, 2)
    assert ds.latents[:, 0, 0, 0].tolist() == [1.0, 2.0, 0.0]  # aligned with ids 9, 25, 139
    save_file({"9": torch.zeros(4, 2, 2)}, str(tmp_path / "part.safetensors"))
    with pytest.raises(UserError, match="lacks 2"):
        MSCOCO(coco, resolution=16, latents=tmp_path / "part.safetensors")


def test_mscoco_errors_are_one_line(coco, tmp_path):
    cases = [
        (dict(root=tmp_path / "nowhere"), "root directory not found"),
        (dict(root=coco, split="val2017"), "captions file not found"),
        (dict(root=coco, latents=tmp_path / "none.safetensors"), "latents file not found"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(UserError, match=msg) as e:
            MSCOCO(resolution=8, **kwargs)
        assert "\n" not in str(e.value)
    (coco / "train2017" / "000000000025.jpg").unlink()
    with pytest.raises(UserError, match="missing, e.g. .*000000000025.jpg"):
        MSCOCO(coco, resolution=8)
    (coco / "annotations" / "captions_train2017.json").write_text("{\"images\": []}")
    with pytest.raises(UserError, match="not a COCO captions file"):
        MSCOCO(coco, resolution=8)
    ann = tmp_path / "own.json"
    ann.write_text(json.dumps({"images": [{"id": 9, "file_name": "000000000009.png"}],
                               "annotations": [{"image_id": 9, "id": 1, "caption": "x"}]}))
    assert MSCOCO(coco, annotations=ann, resolution=8).ids == ["9"]
    import shutil

    shutil.rmtree(coco / "train2017")
    with pytest.raises(UserError, match="image directory not found"):
        MSCOCO(coco, annotations=ann, resolution=8)


# -- AbC --------------------------------------------------------------------------------------------------------
@pytest.fixture
def abc_root(tmp_path):
    root = tmp_path / "abc"
    d = root / "dataset"
    for k in range(5):
        _write_image(d / "laion_subset" / f"{k:06d}.jpg", 24, 20, (40 * k, 100, 200 - 40 * k))
    _write_image(d / "laion_subset" / "sub" / "000009.png", 20, 20, (9, 9, 9))
    (d / "laion_subset" / "000001.txt").write_text("a photo of a cat\n\nsecond caption\n")
    (d / "laion_subset" / "captions.json").write_text(json.dumps({"000002": "a dog", "000003.jpg": ["x", "y"]}))
    (d / "json").mkdir(parents=True)
    for split in SPLITS:
        entries = []
        n_ex = 1 if "imagenet" in split else 4
        types = ("media", "gpt") if "imagenet" in split else ("gpt", "object")
        for m in range(2):
            ex = [f"dataset/exemplar/{split}/{m}/{j}.jpg" for j in range(n_ex)]
            synth = {t: [f"dataset/synth/{split}/{m}/{t}/{q}.png" for q in range(3)] for t in types}
            for p in ex + [p for ps in synth.values() for p in ps]:
                _write_image(root / p, 16, 16, (10 * m, 50, 90))
            entries.append({"exemplar": ex, "synth": synth, "class_id": f"{split[:3]}_{m}",
                            "category": "goldfish" if "imagenet" in split else None})
        (d / "json" / f"test_{split}.json").write_text(json.dumps(entries))
    return root


def test_abc_split_entries(abc_root):
    for split in SPLITS:
        es = load_abc_split(abc_root, split)
        assert len(es) == 2 and all(isinstance(e, AbCEntry) for e in es)
        e = es[1]
        assert e.index == 1 and e.split == split and e.class_id == f"{split[:3]}_1"
        assert (e.category == "goldfish") == ("imagenet" in split)
        assert e.kind == ("object" if "imagenet" in split else "style")
        assert len(e.exemplar_paths) == (1 if "imagenet" in split else 4)
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in e.exemplar_paths)
        assert e.exemplar_ids[0] == f"dataset/exemplar/{split}/1/0.jpg"
        assert sum(len(v) for v in e.synth.values()) == 6 and len(e.synth_paths) == 6
        assert e.missing_files() == [] and e.id == f"{split}/0001-{e.class_id}"
        x = load_images(e.exemplar_paths, 8)
        assert x.shape == (len(e.exemplar_paths), 3, 8, 8)
        assert abs(float(x[0, 1, 5, 4]) - (50 / 127.5 - 1)) < 0.1  # JPEG: approximate
    Path(load_abc_split(abc_root, "bamfg")[0].synth_paths[0]).unlink()
    assert len(load_abc_split(abc_root, "bamfg")[0].missing_files()) == 1


def test_abc_pool(abc_root):
    pool = AbCPool(abc_root, resolution=8)
    assert pool.ids == ["000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg", "sub/000009.png"]
    assert pool.images().shape == (6, 3, 8, 8)
    assert pool.captions(1) == ("a photo of a cat", "second caption")  # sidecar .txt
    assert pool.captions(2) == ("a dog",) and pool.captions(3) == ("x", "y")  # captions.json
    assert pool.captions(0) == ("",)
    assert AbCPool(abc_root, resolution=8, limit=2).ids == pool.ids[:2]
    assert AbCPool(abc_root, resolution=8).fingerprint == pool.fingerprint
    (abc_root / "dataset" / "laion_subset" / "000001.txt").write_text("another caption\n")
    assert AbCPool(abc_root, resolution=8).fingerprint != pool.fingerprint


def test_abc_errors_are_one_line(abc_root, tmp_path):
    cases = [
        (lambda: load_abc_split(tmp_path / "none", "bamfg"), "root directory not found"),
        (lambda: load_abc_split(tmp_path, "bamfg"), "no 'dataset' folder"),
        (lambda: load_abc_split(abc_root, "imagenet"), "unknown split"),
        (lambda: AbCPool(tmp_path / "none"), "root directory not found"),
    ]
    (abc_root / "dataset" / "json" / "test_artchive.json").unlink()
    cases.append((lambda: load_abc_split(abc_root, "artchive"), "split file not found"))
    (abc_root / "dataset" / "json" / "test_bamfg.json").write_text(json.dumps([{"synth": {}}]))
    cases.append((lambda: load_abc_split(abc_root, "bamfg"), "entry 0 .* malformed"))
    (abc_root / "dataset" / "json" / "test_observed_imagenet.json").write_text("{not json")
    cases.append((lambda: load_abc_split(abc_root, "observed_imagenet"), "not valid JSON"))
    for fn, msg in cases:
        with pytest.raises(UserError, match=msg) as e:
            fn()
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="image file not found"):
        load_images([abc_root / "nothing.png"], 8)
    import shutil

    shutil.rmtree(abc_root / "dataset" / "laion_subset")
    with pytest.raises(UserError, match="pool directory not found"):
        AbCPool(abc_root)


def test_registered_real_datasets(coco, abc_root):
    import genattr

    assert genattr.get_dataset("mscoco", root=str(coco), resolution=8).ids == ["9", "25", "139"]
    assert len(genattr.get_dataset("abc", root=str(abc_root), resolution=8)) == 6
