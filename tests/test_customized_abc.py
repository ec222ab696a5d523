"""The Customized Model benchmark on the public AbC layout: a tiny fake tree, a model-free method end to end, the
skipping of model-based cells for models without weights, and the tasks: a fake task file in the layout of the
unlearning paper's code (``tasks/all_tasks.json``) against the seeded sampling."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from genattr.benchmarks.customized_model import CustomizedModelBenchmark
from genattr.harness.api import RunEnv

RES = 16


def _png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def _pattern(rng, kind: int) -> np.ndarray:
    """A 16×16 RGB image: a distinct random texture per ``kind``."""
    base = np.random.default_rng(1000 + kind).integers(0, 256, size=(RES, RES, 3))
    return np.clip(base + rng.normal(0, 6, size=base.shape), 0, 255)


def make_abc_tree(root: Path, n_pool: int = 12) -> Path:
    """root/dataset/{json,exemplar,synth,laion_subset}: 2 ImageNet models (1 exemplar) and 2 BAM-FG models (3
    exemplars). A model's synthesized images are noisy copies of one of its exemplars."""
    rng = np.random.default_rng(0)
    ds = root / "dataset"
    for i in range(n_pool):
        _png(ds / "laion_subset" / f"{i:06d}.png", _pattern(rng, 100 + i))
        (ds / "laion_subset" / f"{i:06d}.txt").write_text(f"a photo number {i}\n")
    kind = 0
    for split, n_ex, category in (("observed_imagenet", 1, "goldfish"), ("bamfg", 3, None)):
        entries = []
        for m in range(2):
            ex_paths, kinds = [], []
            for e in range(n_ex):
                rel = f"dataset/exemplar/{split}/{m}/{e}.png"
                _png(root / rel, _pattern(rng, kind))
                ex_paths.append(rel)
                kinds.append(kind)
                kind += 1
            synth = {}
            for t in ("gpt", "media"):
                synth[t] = []
                for q in range(2):
                    rel = f"dataset/synth/{split}/{m}/{t}_{q}.png"
                    _png(root / rel, _pattern(rng, kinds[q % n_ex]))
                    synth[t].append(rel)
            entries.append({"exemplar": ex_paths, "synth": synth, "class_id": f"{split[:3]}{m}", "category": category})
        (ds / "json").mkdir(parents=True, exist_ok=True)
        (ds / "json" / f"test_{split}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def abc_root(tmp_path_factory):
    return make_abc_tree(tmp_path_factory.mktemp("abc"))


def _bench(root, **kw):
    cfg = dict(scale="paper", data_root=str(root), resolution=RES, models_per_split=2, queries_per_model=3,
               pool_size=None)
    return CustomizedModelBenchmark(**{**cfg, **kw})


def test_fake_abc_tree_pixel_end_to_end(abc_root, session_cache):
    import genattr

    bench = _bench(abc_root)
    cells = bench.cells(["pixel"])
    assert len(cells) == 4 * 3
    assert {c.group["split"] for c in cells} == {"object-centric", "artist-style"}
    env = RunEnv(cache=session_cache, scale="paper")
    prov = bench.setup(env)
    assert prov["source"] == "abc"
    assert prov["task_source"] == "sampled (seed_offset 0)" and prov["prompt_source"] == "template"
    assert prov["tasks"]["file"] is None and prov["tasks"]["prompts"]["queries"] == {"task-file": 0, "template": 12}
    assert prov["sizes"]["pool_base"] == 12 and prov["sizes"]["pool_all"] == 12 + 2 * 1 + 2 * 3
    assert sorted(prov["missing_weights"]) == sorted(c["id"] for c in prov["concepts"])
    method = genattr.get_method("pixel")
    rows = [bench.run_cell(c, method, env) for c in cells]
    for r in rows:
        assert set(bench.metrics) <= set(r)
        assert all(0.0 <= r[k] <= 1.0 for k in bench.metrics)
        assert r["extra"]["pool_size_own"] < r["extra"]["pool_size_all"]
    # queries are noisy copies of one of their exemplars: pixel similarity puts that exemplar first
    for c, r in zip(cells, rows):
        assert r["extra"]["ranks_own"][0] == 1, (c.id, r["extra"])
        assert r["recall@100"] == 1.0 and r["recall@100/all"] == 1.0  # pools smaller than 100
        assert r["ap"] >= r["ap/all"]
    objects = [r for c, r in zip(cells, rows) if c.group["split"] == "object-centric"]
    assert all(r["ap"] == 1.0 and r["recall@10"] == 1.0 for r in objects)  # one exemplar, ranked first


def test_model_based_cells_skip_models_without_weights(abc_root, tmp_path):
    wdir = tmp_path / "weights"
    (wdir / "bamfg").mkdir(parents=True)
    (wdir / "bamfg" / "bam1.safetensors").write_bytes(b"")  # presence is what cells() checks
    bench = _bench(abc_root, weights_dir=str(wdir))
    specs = {s["id"]: s for s in bench.concept_specs()}
    assert sum(s["has_weights"] for s in specs.values()) == 1
    cells = bench.cells(["pixel", "unlearning"])
    by = {m: [c for c in cells if c.method == m] for m in ("pixel", "unlearning")}
    assert len(by["pixel"]) == 12
    assert len(by["unlearning"]) == 3 and all("bam1" in c.params["concept"] for c in by["unlearning"])


def test_selection_is_seeded_and_stable(abc_root):
    a = _bench(abc_root, models_per_split=1).concept_specs()
    b = _bench(abc_root, models_per_split=1).concept_specs()
    assert a == b and len(a) == 2
    q = [s["queries"] for s in _bench(abc_root, queries_per_model=10).concept_specs()]
    assert q == [4, 4, 4, 4]  # only 4 synthesized images per model exist


# -- tasks: a task file (the unlearning paper's layout) or the seeded sampling ----------------------------------------

#: The sampled selection of the fake tree (models_per_split=2, queries_per_model=3, seed_offset=0) as it was before
#: task files existed: cell ids and queries of existing results must not move.
SAMPLED = {
    "observed_imagenet-0001-obs1": [f"observed_imagenet/1/{q}" for q in ("gpt_1", "media_0", "media_1")],
    "observed_imagenet-0000-obs0": [f"observed_imagenet/0/{q}" for q in ("gpt_0", "gpt_1", "media_1")],
    "bamfg-0001-bam1": ["bamfg/1/gpt_0", "bamfg/1/media_0", "bamfg/1/media_1"],
    "bamfg-0000-bam0": ["bamfg/0/gpt_1", "bamfg/0/media_0", "bamfg/0/media_1"],
}
TEMPLATES = {"observed_imagenet": "photo of a <new1> goldfish", "bamfg": "art in the style of <new1> art"}

#: A fake task file in the official layout: image paths relative to the official data root (our dataset/), the
#: models' tasks interleaved as in all_tasks.json.
TASKS = [
    {"synth_image_path": "synth/observed_imagenet/1/media_1.png", "prompt": "a watercolor painting of <new1> goldfish",
     "test_case": "test_observed_imagenet", "test_case_ind": 1, "model_path": "models/imagenet/obs1",
     "train_prompt": "<new1> goldfish", "category": "goldfish"},
    {"synth_image_path": "synth/bamfg/0/gpt_1.png", "prompt": "The magic of light in the style of <new1> art",
     "test_case": "test_bamfg", "test_case_ind": 0, "model_path": "models/bamfg/bam0",
     "train_prompt": "A picture in the style of <new1> art", "category": "art"},
    {"synth_image_path": "synth/observed_imagenet/1/gpt_1.png", "prompt": "A <new1> goldfish in a glass bowl",
     "test_case": "test_observed_imagenet", "test_case_ind": 1, "model_path": "models/imagenet/obs1",
     "train_prompt": "<new1> goldfish", "category": "goldfish"},
    {"synth_image_path": "synth/observed_imagenet/1/gpt_0.png", "prompt": "A <new1> goldfish under a lily pad",
     "test_case": "test_observed_imagenet", "test_case_ind": 1, "model_path": "models/imagenet/obs1",
     "train_prompt": "<new1> goldfish", "category": "goldfish"},
]


def _rel(root, path) -> str:
    """``observed_imagenet/1/gpt_1`` from an absolute query path under root/dataset/synth."""
    return Path(path).resolve().relative_to(Path(root).resolve() / "dataset" / "synth").with_suffix("").as_posix()


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    root = make_abc_tree(tmp_path_factory.mktemp("abc-official"))
    (root / "tasks").mkdir()
    (root / "tasks" / "all_tasks.json").write_text(json.dumps(TASKS, indent=1))
    return root


def test_sampled_selection_is_unchanged_without_a_task_file(abc_root):
    from genattr.benchmarks.customized_model.abc_data import abc_selection

    bench = _bench(abc_root)
    assert bench.config["tasks"] == "sampled"  # auto, and no task file under data_root
    sel = abc_selection(bench.config)
    assert {e["id"]: [_rel(abc_root, q["path"]) for q in e["queries"]] for e in sel} == SAMPLED
    assert [e["id"] for e in sel] == list(SAMPLED)
    for e in sel:
        assert e["prompt"] == TEMPLATES[e["subset"]] and e["prompt_source"] == "template"
        assert {(q["prompt"], q["prompt_source"]) for q in e["queries"]} == {(TEMPLATES[e["subset"]], "template")}
    cells = bench.cells(["pixel"])
    assert [c.id for c in cells[:3]] == [f"pixel/observed_imagenet-0000-obs0/q{q:02d}" for q in range(3)]
    assert _bench(abc_root, tasks="sampled").config == bench.config


def test_official_task_file_gives_tasks_prompts_and_provenance(official_root, session_cache):
    import genattr

    path = official_root / "tasks" / "all_tasks.json"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    bench = _bench(official_root, queries_per_model=20)
    assert bench.config["tasks"] == "official"  # auto finds the task file
    specs = {s["id"]: s["queries"] for s in bench.concept_specs()}
    assert specs == {"observed_imagenet-0001-obs1": 3, "bamfg-0000-bam0": 1}
    cells = bench.cells(["pixel"])
    assert len(cells) == 4
    env = RunEnv(cache=session_cache, scale="paper")
    prov = bench.setup(env)
    assert prov["task_source"] == f"task file {path} sha256:{sha} (4 of 4 tasks)"
    assert prov["prompt_source"] == f"task file {path} sha256:{sha}"
    assert prov["tasks"]["sha256"] == sha and prov["tasks"]["source"] == "task file"
    assert prov["tasks"]["prompts"] == {"queries": {"task-file": 4, "template": 0},
                                        "exemplars": {"task-file": 2, "template": 0}}
    state = bench._load(env)
    obs, bam = state.cases["observed_imagenet-0001-obs1"], state.cases["bamfg-0000-bam0"]
    # queries in file order, each with its task's prompt; exemplars captioned with the model's train_prompt
    assert [_rel(official_root, q.meta["path"]) for q in obs.queries] == [
        "observed_imagenet/1/media_1", "observed_imagenet/1/gpt_1", "observed_imagenet/1/gpt_0"]
    assert [q.prompt for q in obs.queries] == [TASKS[0]["prompt"], TASKS[2]["prompt"], TASKS[3]["prompt"]]
    assert [q.meta["task"] for q in obs.queries] == [0, 2, 3]
    assert [q.meta["type"] for q in obs.queries] == ["media", "gpt", "gpt"]
    assert [q.prompt for q in bam.queries] == [TASKS[1]["prompt"]]
    assert obs.exemplars.captions(0) == ("<new1> goldfish",)
    assert bam.exemplars.captions(0) == ("A picture in the style of <new1> art",)
    by_id = {c["id"]: c for c in prov["concepts"]}
    assert by_id["bamfg-0000-bam0"]["prompts"] == [TASKS[1]["prompt"]]
    method = genattr.get_method("pixel")
    rows = {c.id: bench.run_cell(c, method, env) for c in cells}
    assert rows["pixel/observed_imagenet-0001-obs1/q01"]["extra"]["prompt"] == TASKS[2]["prompt"]
    assert all(r["extra"]["ranks_own"][0] == 1 for r in rows.values())
    # caps apply in file order; a path to the file (relative to data_root) selects the same tasks
    capped = _bench(official_root, models_per_split=1, queries_per_model=2, tasks="tasks/all_tasks.json")
    assert capped.config["tasks"] == "tasks/all_tasks.json"
    assert {s["id"]: s["queries"] for s in capped.concept_specs()} == {"observed_imagenet-0001-obs1": 2,
                                                                        "bamfg-0000-bam0": 1}


def test_sampled_tasks_take_prompts_the_task_file_has(official_root):
    from genattr.benchmarks.customized_model.abc_data import abc_selection

    bench = _bench(official_root, tasks="sampled")
    assert bench.config["tasks"] == "sampled"
    sel = abc_selection(bench.config)
    assert {e["id"]: [_rel(official_root, q["path"]) for q in e["queries"]] for e in sel} == SAMPLED  # same cells
    listed = {t["synth_image_path"][len("synth/"):-len(".png")]: t for t in TASKS}
    n_file = 0
    for e in sel:
        for q in e["queries"]:
            t = listed.get(_rel(official_root, q["path"]))
            assert q["prompt"] == (t["prompt"] if t else TEMPLATES[e["subset"]])
            assert q["prompt_source"] == ("task-file" if t else "template")
            n_file += bool(t)
        train = {"observed_imagenet-0001-obs1": TASKS[0]["train_prompt"], "bamfg-0000-bam0": TASKS[1]["train_prompt"]}
        assert e["prompt"] == train.get(e["id"], TEMPLATES[e["subset"]])  # the exemplars' caption
    assert n_file == 3  # obs1 gpt_1, media_1 and bam0 gpt_1 are both sampled and listed


def _task_file(tmp_path, tasks) -> str:
    p = tmp_path / "tasks.json"
    p.write_text(json.dumps(tasks))
    return str(p)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(test_case_ind=7), "out of range"),
    (lambda t: t.update(model_path="models/imagenet/obs0"), "names model"),
    (lambda t: t.update(synth_image_path="synth/observed_imagenet/0/gpt_0.png"), "is not a synthesized image"),
    (lambda t: t.pop("prompt"), "lacks 'prompt'"),
    (lambda t: t.update(test_case="test_coco"), "test_case 'test_coco'"),
])
def test_malformed_task_files_are_one_line_errors(abc_root, tmp_path, change, message):
    from genattr.harness.errors import UserError

    tasks = json.loads(json.dumps(TASKS))
    change(tasks[0])
    path = _task_file(tmp_path, tasks)
    with pytest.raises(UserError, match=message) as err:
        _bench(abc_root, tasks=path).concept_specs()
    assert "\n" not in str(err.value)


def test_tasks_option_errors(abc_root, tmp_path):
    from genattr.harness.errors import UserError

    with pytest.raises(UserError, match="no task file"):
        _bench(abc_root, tasks="official")
    with pytest.raises(UserError, match="neither one of"):
        _bench(abc_root, tasks="missing.json")
    with pytest.raises(UserError, match="tasks must be"):
        _bench(abc_root, tasks=3)
    with pytest.raises(UserError, match="repeats the image"):
        _bench(abc_root, tasks=_task_file(tmp_path, [TASKS[0], TASKS[0]])).concept_specs()


def test_a_method_needing_context_the_benchmark_never_offers_is_refused_before_any_cell(tmp_path, capsys):
    """abc-clip without a mappers file needs training concepts; leave-k-out has none: the run stops before the
    first cell (not after random's), with a one-line error naming the way out. distilled's base-model teacher
    likewise. With a mappers file abc-clip passes the check."""
    from genattr.cli import main
    from genattr.harness.errors import UserError
    from genattr.harness.run import build_spec, run

    out = tmp_path / "o"
    capsys.readouterr()
    rc = main(["run", "leave-k-out", "--scale", "tiny", "-m", "random", "-m", "abc-clip", "--out", str(out),
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc not in (0, None) and len(err) == 1
    assert "abc-clip cannot run on leave-k-out" in err[0] and "abc-clip.mappers=FILE" in err[0]
    assert not (out / "results.jsonl").exists()
    spec = build_spec(["leave-k-out"], ["distilled"], scale="tiny", sets=['distilled.teacher_model="base"'],
                      out=str(tmp_path / "d"), device="cpu", quiet=True)
    with pytest.raises(UserError, match="distilled cannot run on leave-k-out.*base_model"):
        run(spec)
    # the check itself: what each side declares
    import genattr

    abc = genattr.get_method("abc-clip")
    assert abc.required_extra(abc.config) == ("training_concepts",)
    assert abc.required_extra({**abc.config, "mappers_sha256": "0" * 64}) == ()
    assert "training_concepts" in CustomizedModelBenchmark.provides_extra
    dist = genattr.get_method("distilled", teacher_model="base")
    assert dist.required_extra(dist.config) == ("base_model",)
    assert dist.required_extra({**dist.config, "weights": "student.safetensors"}) == ()


def test_abc_mappers_of_another_builtin_backbone_are_refused_before_any_cell(tmp_path, capsys):
    """Mappers trained on the digits encoder, backbone auto, on the (shapes) tiny leave-K-out: one line naming
    both backbones before any cell; on a digits leave-K-out the digits encoder's mappers pass the check."""
    from genattr.cli import main
    from genattr.plugins.methods.abc_tuned import identity_mappers, save_mappers_file

    files = {}
    for which in ("shapes", "digits"):
        files[which] = tmp_path / f"{which}.safetensors"
        save_mappers_file(files[which], identity_mappers(4), method="abc-clip", backbone=f"builtin:{which}",
                          backbone_fingerprint="0" * 64, training_concepts=["c"], config={})
    out = tmp_path / "o"
    capsys.readouterr()
    rc = main(["run", "leave-k-out", "--scale", "tiny", "-m", "random", "-m", "abc-clip", "--set",
               f"abc-clip.mappers={files['digits']}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc not in (0, None) and len(err) == 1
    assert "'builtin:shapes'" in err[0] and "'builtin:digits'" in err[0] and "abc-clip.backbone" in err[0]
    assert not (out / "results.jsonl").exists()
    import genattr

    ok = genattr.get_method("abc-clip", mappers=str(files["digits"]))
    ok.check_benchmark("leave-k-out", {"dataset": "digits"}, ok.config)
    explicit = genattr.get_method("abc-clip", mappers=str(files["shapes"]), backbone="pixels:8")
    explicit.check_benchmark("leave-k-out", {"dataset": "digits"}, explicit.config)  # checked in prepare
