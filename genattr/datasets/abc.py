"""The public AbC benchmark (Customized Model benchmark, Wang et al. 2023) read from a local directory.

Layout (paths inside the JSON files are relative to ``root``, the folder that holds ``dataset/``)::

    root/dataset/json/test_{artchive,bamfg,observed_imagenet,unobserved_imagenet}.json
    root/dataset/exemplar/…        exemplar images of each customized model
    root/dataset/synth/…           images synthesized by each customized model (the queries)
    root/dataset/laion_subset/…    the retrieval pool (LAION images)

Each ``test_{split}.json`` is a JSON list; an entry has ``exemplar`` (a list of image paths: 1 for ImageNet,
4–12 for BAM-FG, up to 67 for Artchive), ``synth`` (a dict from prompt type — ``gpt``/``object`` for the style
sets, ``media``/``gpt`` for ImageNet — to a list of image paths), ``class_id`` (a string) and ``category`` (a
string for ImageNet, ``null`` for the style sets). :func:`load_abc_split` reads one split into :class:`AbCEntry`
records with absolute paths.

The pool (:class:`AbCPool`) is every image under ``dataset/laion_subset`` (recursively, sorted by relative path;
extensions .jpg .jpeg .png .webp .bmp). Its id is the path relative to ``laion_subset`` (e.g. ``000001.jpg``).
Captions, first match wins:

1. a sidecar text file next to the image with the same stem (``000001.txt``): one caption per non-empty line;
2. a captions JSON file ``dataset/laion_subset.json`` or ``dataset/laion_subset/captions.json``: an object mapping
   the id (or the file name without extension) to a caption string or a list of captions;
3. otherwise the empty caption ``""`` (model-free methods do not need captions; model-based methods then score
   those pool images with the empty prompt).

The AbC JSON files do not store the prompts the synthesized images were made from. The unlearning paper's code
(PeterWang512/AttributeByUnlearning, ``custom_diffusion/tasks/all_tasks.json``) lists its 400 test tasks (20
customized models × 20 synthesized images) in a **task file**: a JSON list whose entries have ``synth_image_path``
(the query image, relative to the official data root, i.e. our ``root/dataset``: ``synth/imagenet/gpt/…/00000.png``),
``prompt`` (the prompt it was synthesized from, with the modifier token ``<new1>``), ``test_case`` (``test_{split}``,
naming the JSON file), ``test_case_ind`` (the customized model's position in that file), and optionally
``model_path`` (``models/{imagenet,bamfg,artchive}/{class_id}``), ``train_prompt`` (the model's customization prompt,
e.g. ``<new1> fish``) and ``category``. :func:`find_abc_task_file` looks for it at :data:`TASK_FILES` and
:func:`load_abc_tasks` reads it into :class:`AbCTask` records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from genattr.harness.data import InMemoryDataset
from genattr.harness.errors import UserError

from ._images import IMAGE_EXTENSIONS, load_image, load_images  # noqa: F401  (load_image re-exported)

SPLITS = ("artchive", "bamfg", "observed_imagenet", "unobserved_imagenet")
#: Which splits are object-centric and which are artist-style.
SPLIT_KINDS = {"artchive": "style", "bamfg": "style", "observed_imagenet": "object", "unobserved_imagenet": "object"}


@dataclass
class AbCEntry:
    """One customized model of the AbC benchmark.

    ``index``: position in the split's JSON list; ``split``; ``class_id``; ``category`` (None for style sets);
    ``exemplar_paths``: absolute paths of its exemplars; ``synth``: prompt type → absolute paths of its
    synthesized images; ``root``: the benchmark root the paths were resolved against.
    """

    index: int
    split: str
    class_id: str
    category: str | None
    exemplar_paths: list[str]
    synth: dict[str, list[str]] = field(default_factory=dict)
    root: str = ""

    @property
    def id(self) -> str:
        """A stable id of the customized model: ``{split}/{index:04d}-{class_id}``."""
        return f"{self.split}/{self.index:04d}-{self.class_id}"

    @property
    def kind(self) -> str:
        return SPLIT_KINDS[self.split]

    @property
    def exemplar_ids(self) -> list[str]:
        """The exemplar paths relative to ``root`` (as written in the JSON file): stable ids of the exemplars."""
        return [os.path.relpath(p, self.root) for p in self.exemplar_paths]

    @property
    def synth_paths(self) -> list[str]:
        """Every synthesized image, prompt types in sorted order."""
        return [p for k in sorted(self.synth) for p in self.synth[k]]

    def missing_files(self) -> list[str]:
        """Exemplar and synthesized image paths that do not exist."""
        return [p for p in self.exemplar_paths + self.synth_paths if not os.path.isfile(p)]


def _root(root) -> Path:
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise UserError(f"abc: root directory not found: {root}")
    if not (root / "dataset").is_dir():
        raise UserError(f"abc: {root} has no 'dataset' folder (expected the AbC layout root/dataset/json, …)")
    return root


def load_abc_split(root, split: str) -> list[AbCEntry]:
    """The customized models of one split, read from ``root/dataset/json/test_{split}.json``."""
    if split not in SPLITS:
        raise UserError(f"abc: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = _root(root)
    path = root / "dataset" / "json" / f"test_{split}.json"
    if not path.is_file():
        raise UserError(f"abc: split file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise UserError(f"abc: {path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"abc: {path} must hold a JSON list of entries, got {type(data).__name__}")
    entries = []
    for k, e in enumerate(data):
        try:
            exemplar = e["exemplar"]
            exemplar = [exemplar] if isinstance(exemplar, str) else list(exemplar)
            synth = {str(t): [str(root / p) for p in ps] for t, ps in dict(e.get("synth") or {}).items()}
            entries.append(AbCEntry(
                index=k, split=split, class_id=str(e["class_id"]),
                category=None if e.get("category") is None else str(e["category"]),
                exemplar_paths=[str(root / p) for p in exemplar], synth=synth, root=str(root)))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"abc: entry {k} of {path} is malformed ({type(err).__name__}: {err})") from None
    return entries


#: Where the task file is looked for, relative to ``root`` (first found wins): next to ``dataset/`` as in the
#: official repository (``tasks/all_tasks.json``), or inside it.
TASK_FILES = ("tasks/all_tasks.json", "dataset/tasks/all_tasks.json")


@dataclass
class AbCTask:
    """One task of a task file: a synthesized image of one customized model and the prompt it was made from.

    ``index``: position in the file; ``split``: the AbC split (from ``test_case``); ``entry``: the model's position
    in ``test_{split}.json`` (``test_case_ind``); ``image``: absolute path of the synthesized image; ``prompt``;
    ``train_prompt``, ``model_path``, ``category``: as in the file, None when absent."""

    index: int
    split: str
    entry: int
    image: str
    prompt: str
    train_prompt: str | None = None
    model_path: str | None = None
    category: str | None = None


def find_abc_task_file(root) -> Path | None:
    """The task file under ``root`` (:data:`TASK_FILES`, first found), or None."""
    root = Path(os.path.expanduser(str(root)))
    for rel in TASK_FILES:
        if (root / rel).is_file():
            return root / rel
    return None


def task_image_path(root, path: str) -> str:
    """The absolute path of a task's ``synth_image_path``: relative to ``root/dataset`` (the official data root), or
    to ``root`` when it starts with ``dataset/`` (as the AbC JSON files spell paths)."""
    root = Path(os.path.expanduser(str(root)))
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return os.path.normpath(str(p))
    base = root if p.parts[:1] == ("dataset",) else root / "dataset"
    return os.path.normpath(str(base / p))


def load_abc_tasks(root, path) -> list[AbCTask]:
    """The tasks of a task file (see the module docstring), image paths resolved against ``root``. Malformed
    files and entries are one-line :class:`UserError` s."""
    path = Path(os.path.expanduser(str(path)))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UserError(f"abc: cannot read task file {path} ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"abc: task file {path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"abc: task file {path} must hold a JSON list of tasks, got {type(data).__name__}")
    tasks = []
    for k, t in enumerate(data):
        if not isinstance(t, dict):
            raise UserError(f"abc: task {k} of {path} must be a JSON object, got {type(t).__name__}")
        missing = [key for key in ("synth_image_path", "prompt", "test_case", "test_case_ind") if key not in t]
        if missing:
            raise UserError(f"abc: task {k} of {path} lacks {', '.join(repr(m) for m in missing)}")
        case, ind = t["test_case"], t["test_case_ind"]
        split = case[len("test_"):] if isinstance(case, str) and case.startswith("test_") else None
        if split not in SPLITS:
            raise UserError(f"abc: task {k} of {path}: test_case {case!r} is not one of "
                            f"{', '.join('test_' + s for s in SPLITS)}")
        if not (isinstance(ind, int) and not isinstance(ind, bool) and ind >= 0):
            raise UserError(f"abc: task {k} of {path}: test_case_ind must be a non-negative integer, got {ind!r}")
        for key in ("synth_image_path", "prompt"):
            if not isinstance(t[key], str) or not t[key].strip():
                raise UserError(f"abc: task {k} of {path}: {key} must be a non-empty string, got {t[key]!r}")
        opt = {}
        for key in ("train_prompt", "model_path", "category"):
            v = t.get(key)
            if v is not None and not isinstance(v, str):
                raise UserError(f"abc: task {k} of {path}: {key} must be a string, got {v!r}")
            opt[key] = v
        tasks.append(AbCTask(index=k, split=split, entry=ind, image=task_image_path(root, t["synth_image_path"]),
                             prompt=t["prompt"], **opt))
    return tasks


def _pool_captions(root: Path, pool_dir: Path) -> dict[str, list[str]]:
    for cand in (root / "dataset" / "laion_subset.json", pool_dir / "captions.json"):
        if cand.is_file():
            try:
                with open(cand, encoding="utf-8") as f:
                    data = json.load(f)
            except ValueError as e:
                raise UserError(f"abc: captions file {cand} is not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise UserError(f"abc: captions file {cand} must map image ids to captions")
            return {str(k): ([v] if isinstance(v, str) else [str(c) for c in v]) for k, v in data.items()}
    return {}


class AbCPool(InMemoryDataset):
    """The AbC retrieval pool: every image under ``root/dataset/laion_subset`` (see the module docstring).

    ``resolution``: images are resized (shorter side) and centre-cropped to it; ``limit``: keep the first
    ``limit`` images in sorted order. Held in memory as float32 (100k images at 64 px ≈ 4.9 GB).
    """

    name = "abc"
    version = "1"

    def __init__(self, root, resolution: int = 64, limit: int | None = None):
        root = _root(root)
        pool_dir = root / "dataset" / "laion_subset"
        if not pool_dir.is_dir():
            raise UserError(f"abc: pool directory not found: {pool_dir}")
        files = sorted(
            p.relative_to(pool_dir).as_posix() for p in pool_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if limit is not None:
            if int(limit) < 1:
                raise UserError(f"abc: limit must be positive, got {limit}")
            files = files[: int(limit)]
        if not files:
            raise UserError(f"abc: no images under {pool_dir}")
        table = _pool_captions(root, pool_dir)
        captions = []
        for rel in files:
            side = (pool_dir / rel).with_suffix(".txt")
            if side.is_file():
                lines = [" ".join(l.split()) for l in side.read_text(encoding="utf-8").splitlines()]
                caps = [l for l in lines if l]
            else:
                caps = table.get(rel) or table.get(rel.rsplit(".", 1)[0]) or []
            captions.append(tuple(caps) or ("",))
        images = load_images([pool_dir / f for f in files], int(resolution))
        super().__init__(self.name, self.version, files, images, captions,
                         meta={"root": str(root), "resolution": int(resolution)})
        self.paths = [str(pool_dir / f) for f in files]
