"""The public AbC benchmark layout (real data, scale ``paper``): task selection, cases, pool and customized models.

``dataset/json/test_*.json`` through :mod:`genattr.datasets.abc`; the tasks (models and queries) either come from a
task file in the layout of the unlearning paper's code (its 400 tasks and their prompts, ``tasks/all_tasks.json``) or
are sampled with fixed seeds (option ``tasks``, :func:`abc_selection`); queries are the benchmark's synthesized images,
the pool a LAION subset (:class:`~genattr.datasets.abc.AbCPool`, read from disk on demand); customized models are
Custom-Diffusion deltas over Stable Diffusion v1.4 in ``weights_dir``, loaded per concept when a method needs them.
Models without weights are listed in the provenance and their cells are not enumerated for methods that need a
model (model-free methods still run).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from genattr.harness.api import Query, RunEnv
from genattr.harness.errors import UserError

from .cases import ConceptCase, State, case_json
from .config import SPLIT_ORDER
from .pools import pool_name

log = logging.getLogger("genattr.benchmarks.customized_model")

#: Prompt templates for the AbC models, used where no task file gives the prompt (the AbC JSON files do not store
#: the prompts of the synthesized images): Custom Diffusion's customization prompts, ``{token}`` its modifier token,
#: ``{category}`` the ImageNet class.
ABC_PROMPTS = {"object-centric": "photo of a {token} {category}", "artist-style": "art in the style of {token} art"}
ABC_TOKEN = "<new1>"
WEIGHT_SUFFIXES = ("", ".safetensors", ".bin", ".pt")
#: Values of the ``tasks`` option besides a path to a task file.
TASK_MODES = ("auto", "official", "sampled")
#: Where a prompt came from (``prompt_source`` of each query and model in the selection).
TASK_FILE, TEMPLATE = "task-file", "template"


def _find_weights(weights_dir, subset: str, class_id: str) -> str | None:
    """``<weights_dir>/<subset>/<class_id>`` or ``<weights_dir>/<class_id>`` — a directory or a file, with or
    without one of :data:`WEIGHT_SUFFIXES`."""
    if not weights_dir:
        return None
    from pathlib import Path

    root = Path(weights_dir).expanduser()
    for folder in (root / subset, root):
        for suf in WEIGHT_SUFFIXES:
            p = folder / f"{class_id}{suf}"
            if p.exists():
                return str(p)
    return None


def resolve_tasks(data_root, tasks) -> str:
    """The ``tasks`` option resolved against ``data_root``: ``"official"`` (a task file is found at
    :data:`genattr.datasets.abc.TASK_FILES`), ``"sampled"`` or a path to a task file as given (absolute, or relative
    to ``data_root``). ``auto`` is ``official`` when the task file is there, else ``sampled``."""
    from genattr.datasets.abc import TASK_FILES, find_abc_task_file

    if not isinstance(tasks, str) or not tasks.strip():
        raise UserError(f"customized-model: tasks must be one of {', '.join(TASK_MODES)} or a path to a task file, "
                        f"got {tasks!r}")
    if tasks == "sampled":
        return tasks
    if tasks in ("auto", "official"):
        if find_abc_task_file(data_root) is not None:
            return "official"
        if tasks == "auto":
            return "sampled"
        raise UserError(f"customized-model: tasks='official' but no task file under {str(data_root)!r} (looked for "
                        f"{' and '.join(TASK_FILES)}; see docs/benchmarks/customized-model.md)")
    if _task_path(data_root, tasks) is None:
        raise UserError(f"customized-model: tasks={tasks!r} is neither one of {', '.join(TASK_MODES)} nor a task file "
                        f"(relative paths are read from data_root {str(data_root)!r})")
    return tasks


def _task_path(data_root, tasks: str):
    from pathlib import Path

    p = Path(tasks).expanduser()
    if not p.is_absolute():
        p = Path(str(data_root)).expanduser() / p
    return p if p.is_file() else None


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _template(split: str, category: str | None) -> str:
    return ABC_PROMPTS[split].format(token=ABC_TOKEN, category=(category or "").replace("_", " ")).strip()


def _model(config, split: str, e, queries: list[dict], tasks_of_model: list) -> dict:
    """One selected model: its exemplars, the chosen queries, the exemplars' caption (the task file's
    ``train_prompt`` of the model when it has one, else the template) and its weights."""
    train = next((t.train_prompt for t in tasks_of_model if t.train_prompt), None)
    model_path = next((t.model_path for t in tasks_of_model if t.model_path), None)
    return {
        "id": f"{e.split}-{int(e.index):04d}-{e.class_id}".replace("/", "_"), "split": split, "subset": e.split,
        "class_id": str(e.class_id), "category": e.category,
        "exemplars": list(e.exemplar_paths), "exemplar_ids": list(e.exemplar_ids), "queries": queries,
        "prompt": train or _template(split, e.category), "prompt_source": TASK_FILE if train else TEMPLATE,
        "model_path": model_path,
        "weights": _find_weights(config.get("weights_dir"), e.split, str(e.class_id)),
    }


def _selection(config: Mapping[str, Any]) -> tuple[list[dict], dict]:
    """``(models, info)``: the selected models (see :func:`abc_selection`) and where tasks and prompts came from."""
    import os

    from genattr.datasets.abc import find_abc_task_file, load_abc_split, load_abc_tasks
    from genattr.harness.seeding import numpy_rng

    root = config["data_root"]
    mode = resolve_tasks(root, config.get("tasks", "auto"))
    # sampled: the task file under data_root, if any, gives the prompts of the queries it lists
    task_file = find_abc_task_file(root) if mode in ("official", "sampled") else _task_path(root, mode)
    tasks = load_abc_tasks(root, task_file) if task_file is not None else []
    info = {"source": "sampled" if mode == "sampled" else "task file", "file": str(task_file) if task_file else None,
            "sha256": _sha256(task_file) if task_file else None, "tasks_in_file": len(tasks)}
    by_image: dict[str, Any] = {}
    by_model: dict[tuple, list] = {}
    for t in tasks:
        by_image.setdefault(t.image, t)
        by_model.setdefault((t.split, t.entry), []).append(t)
    entries: dict[str, list] = {}

    def split_entries(sub):
        if sub not in entries:
            entries[sub] = load_abc_split(root, sub)
        return entries[sub]

    out = []
    if mode == "sampled":
        for split in SPLIT_ORDER:
            subsets = list(config["abc_subsets"].get(split, []))
            orders = []
            for sub in subsets:
                if not os.path.isfile(os.path.join(os.path.expanduser(str(root)), "dataset", "json",
                                                   f"test_{sub}.json")):
                    continue  # a subset the user does not have: its split just has fewer models
                es = split_entries(sub)
                perm = numpy_rng("customized-model", int(config["seed_offset"]), sub).permutation(len(es))
                orders.append([es[i] for i in perm])
            chosen = []
            while len(chosen) < int(config["models_per_split"]) and any(orders):
                for o in orders:
                    if o and len(chosen) < int(config["models_per_split"]):
                        chosen.append(o.pop(0))
            for e in chosen:
                synth = e.synth if isinstance(e.synth, Mapping) else {"synth": list(e.synth)}
                paths = [(t, p) for t in sorted(synth) for p in synth[t]]
                rng = numpy_rng("customized-model", int(config["seed_offset"]), e.split, e.class_id, "queries")
                pick = rng.permutation(len(paths))[: int(config["queries_per_model"])]
                queries = []
                for i in sorted(pick):
                    t = by_image.get(os.path.normpath(paths[i][1]))
                    if t is not None and (t.split, t.entry) != (e.split, e.index):
                        t = None  # listed for another model: not this query's prompt
                    queries.append({"path": paths[i][1], "type": paths[i][0],
                                    "prompt": t.prompt if t else _template(split, e.category),
                                    "prompt_source": TASK_FILE if t else TEMPLATE})
                out.append(_model(config, split, e, queries, by_model.get((e.split, e.index), [])))
        info["seed_offset"] = int(config["seed_offset"])
    else:
        from genattr.datasets.abc import SPLIT_KINDS

        from .config import SPLITS

        per_split: dict[str, list] = {s: [] for s in SPLIT_ORDER}
        for sub, ind in by_model:  # models in order of their first task
            split = SPLITS[SPLIT_KINDS[sub]]
            if sub in config["abc_subsets"].get(split, []) and len(per_split[split]) < int(config["models_per_split"]):
                per_split[split].append((sub, ind))
        for split in SPLIT_ORDER:
            for sub, ind in per_split[split]:
                es = split_entries(sub)
                where = f"customized-model: task file {task_file}"
                if ind >= len(es):
                    raise UserError(f"{where}: test_case_ind {ind} is out of range for test_{sub}.json "
                                    f"({len(es)} models)")
                e = es[ind]
                ts = by_model[(sub, ind)]
                for t in ts:
                    if t.model_path and os.path.basename(t.model_path.rstrip("/")) != e.class_id:
                        raise UserError(f"{where}: task {t.index} names model {t.model_path!r} but entry {ind} of "
                                        f"test_{sub}.json is class_id {e.class_id!r} (another AbC JSON version?)")
                types = {os.path.normpath(p): typ for typ, ps in e.synth.items() for p in ps}
                queries, seen = [], set()
                for t in ts[: int(config["queries_per_model"])]:
                    if t.image not in types:
                        raise UserError(f"{where}: task {t.index}'s image {t.image} is not a synthesized image of "
                                        f"entry {ind} ({e.class_id}) of test_{sub}.json")
                    if t.image in seen:
                        raise UserError(f"{where}: task {t.index} repeats the image {t.image}")
                    seen.add(t.image)
                    queries.append({"path": t.image, "type": types[t.image], "prompt": t.prompt,
                                    "prompt_source": TASK_FILE, "task": t.index})
                out.append(_model(config, split, e, queries, ts))
    if mode != "sampled":
        info["tasks_used"] = sum(len(m["queries"]) for m in out)
    return out, info


def abc_selection(config: Mapping[str, Any]) -> list[dict]:
    """The AbC models and queries the configuration selects (cheap: reads the JSON files only).

    ``tasks`` (resolved by :func:`resolve_tasks`) decides how:

    * a task file (``official``: the one found under ``data_root``; or a path): its tasks, grouped by model in the
      order of their first task; per split at most ``models_per_split`` models of the split's ``abc_subsets``, per
      model at most ``queries_per_model`` tasks, in file order. Prompts (and the exemplars' caption, from
      ``train_prompt``) come from the file.
    * ``sampled``: per split, ``models_per_split`` models round-robin over the split's subsets, each subset in a
      seeded random order (seed: ``seed_offset``, independent of the run seed so cells are known before setup); per
      model, ``queries_per_model`` synthesized images in a seeded random order over its prompt types. A query (and
      a model) that a task file under ``data_root`` lists takes its prompt from it, the others the template
      (:data:`ABC_PROMPTS`).

    Each model: ``{"id", "split", "subset", "class_id", "category", "exemplars", "exemplar_ids", "queries": [{"path",
    "type", "prompt", "prompt_source"}], "prompt" (the exemplars' caption), "prompt_source", "model_path",
    "weights"}``; ``prompt_source`` is ``task-file`` or ``template``."""
    return _selection(config)[0]


def abc_build_state(bench, env: RunEnv) -> State:
    """Cases, pool and provenance for the AbC data. Exemplars and queries are loaded now (they are few); the
    LAION pool stays on disk (``AbCPool``); customized models load per concept when a method needs them."""
    import os

    from genattr.datasets.abc import AbCPool, load_images
    from genattr.harness.data import ConcatDataset, InMemoryDataset

    t0 = time.perf_counter()
    c = bench.config
    root, res = c["data_root"], int(c["resolution"])
    selection, tasks_info = _selection(c)
    if not selection:
        raise UserError(f"customized-model: no AbC models found under {root!r} (expected dataset/json/test_*.json)")
    cases = []
    for e in selection:
        ex_imgs = load_images([os.path.join(root, p) if not os.path.isabs(p) else p for p in e["exemplars"]], res)
        ex = InMemoryDataset(f"abc-exemplars-{e['id']}", "1", e["exemplar_ids"], ex_imgs,
                             [(e["prompt"],)] * len(e["exemplars"]))
        q_imgs = load_images([os.path.join(root, q["path"]) if not os.path.isabs(q["path"]) else q["path"]
                              for q in e["queries"]], res)
        case = ConceptCase(id=e["id"], split=e["split"], token=ABC_TOKEN, exemplars=ex,
                           prompts=[q["prompt"] for q in e["queries"]], seeds=[None] * len(e["queries"]),
                           weights=e["weights"], description=f"{e['subset']} {e['class_id']} {e['category'] or ''}".strip())
        case.queries = [Query(id=f"{e['id']}/q{i:02d}", image=q_imgs[i], prompt=q["prompt"],
                              meta={"concept": e["id"], "split": e["split"], "path": q["path"], "type": q["type"],
                                    "query": i, "prompt_source": q["prompt_source"],
                                    **({"task": q["task"]} if "task" in q else {})})
                        for i, q in enumerate(e["queries"])]
        cases.append(case)
    base = AbCPool(root, resolution=res, limit=c["pool_size"])
    pool = ConcatDataset(pool_name(base), [base] + [k.exemplars for k in cases])
    n_base = len(base)
    start = n_base
    for k in cases:
        k.own_idx = list(range(start, start + len(k.exemplars)))
        start += len(k.exemplars)
    missing = [k.id for k in cases if not k.weights]
    if missing:
        log.warning(f"customized-model: no customized-model weights for {len(missing)} of {len(cases)} models "
              f"({', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}); their cells run only for "
              "model-free methods")
    provenance = {
        "source": "abc",
        "data_root": str(root),
        **_sources(selection, tasks_info),
        "datasets": {"pool": pool.fingerprint},
        "models": {"base": c["base_model"], **{k.id: k.weights for k in cases}},
        "concepts": [case_json(k) for k in cases],
        "missing_weights": missing,
        "sizes": {"pool_base": n_base, "pool_all": len(pool),
                  "concepts": {s: sum(k.split == s for k in cases) for s in SPLIT_ORDER},
                  "queries": sum(len(k.queries) for k in cases)},
        "verification": {"note": "not run on AbC data (the benchmark ships the synthesized images)"},
        "setup_s": round(time.perf_counter() - t0, 2),
    }
    return State(cases={k.id: k for k in cases}, pool=pool, n_base=n_base, provenance=provenance)


def _sources(selection: list[dict], info: dict) -> dict:
    """The provenance of the tasks and prompts: ``task_source`` and ``prompt_source`` (one line each, the task
    file named by path and sha256) and ``tasks`` (the same as data: file, counts of prompts per source)."""
    file = f"{info['file']} sha256:{info['sha256']}" if info["file"] else None
    if info["source"] == "sampled":
        task_source = f"sampled (seed_offset {info['seed_offset']})"
    else:
        task_source = f"task file {file} ({info['tasks_used']} of {info['tasks_in_file']} tasks)"
    names = {TASK_FILE: f"task file {file}", TEMPLATE: "template"}
    queries = {TASK_FILE: 0, TEMPLATE: 0}
    exemplars = {TASK_FILE: 0, TEMPLATE: 0}
    for m in selection:
        exemplars[m["prompt_source"]] += 1
        for q in m["queries"]:
            queries[q["prompt_source"]] += 1
    used = [k for k in (TASK_FILE, TEMPLATE) if queries[k]]
    prompt_source = (names[used[0]] if len(used) == 1 else
                     ", ".join(f"{names[k]} ({queries[k]} queries)" for k in used) if used else "none")
    return {"task_source": task_source, "prompt_source": prompt_source,
            "tasks": {**info, "prompts": {"queries": queries, "exemplars": exemplars},
                      "templates": dict(ABC_PROMPTS)}}


_BASE_MODELS: dict = {}


def _abc_base_model(base_model: str, model: str):
    """The base model of the deltas, loaded once per process: a directory saved by a registered model (its
    ``genattr_model.json`` names which), else one the registered model ``model`` loads (``diffusers``: a Stable
    Diffusion pipeline directory or hub id)."""
    from genattr.harness.models import load_model

    key = (str(base_model), str(model))
    if key not in _BASE_MODELS:
        _BASE_MODELS.clear()  # one base at a time: Stable Diffusion is large
        _BASE_MODELS[key] = load_model(str(base_model), model)
    return _BASE_MODELS[key]


def abc_load_model(config: Mapping[str, Any], case: ConceptCase, env: RunEnv):
    """The customized model of one AbC case: the base model with the case's delta applied by the model's own
    ``apply_delta`` (for the built-ins: a genattr delta directory or Custom Diffusion's ``delta.bin``)."""
    base = _abc_base_model(config["base_model"], config["model"])
    model = base.apply_delta(str(case.weights))
    if env.device and env.device != "cpu" and hasattr(model, "to"):
        model = model.to(env.device)
    return model
