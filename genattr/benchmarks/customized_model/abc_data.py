"""The public AbC benchmark layout (real data, scale ``paper``): task selection, cases, pool and customized models.

``dataset/json/test_*.json`` through :mod:`genattr.datasets.abc`; queries are the benchmark's synthesized images,
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

#: Prompt templates for the AbC models (the JSON files do not store the prompts of the synthesized images):
#: Custom Diffusion's customization prompts, ``{token}`` its modifier token, ``{category}`` the ImageNet class.
ABC_PROMPTS = {"object-centric": "photo of a {token} {category}", "artist-style": "art in the style of {token} art"}
ABC_TOKEN = "<new1>"
WEIGHT_SUFFIXES = ("", ".safetensors", ".bin", ".pt")


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


def abc_selection(config: Mapping[str, Any]) -> list[dict]:
    """The AbC models and queries the configuration selects (cheap: reads the JSON files only).

    Per split, ``models_per_split`` models are taken round-robin over the split's subsets, each subset in a seeded
    random order (seed: ``seed_offset``, independent of the run seed so cells are known before setup); per model,
    ``queries_per_model`` synthesized images in a seeded random order over its prompt types."""
    import os

    from genattr.datasets.abc import load_abc_split
    from genattr.harness.seeding import numpy_rng

    root = config["data_root"]
    out = []
    for split in SPLIT_ORDER:
        subsets = list(config["abc_subsets"].get(split, []))
        orders = []
        for sub in subsets:
            if not os.path.isfile(os.path.join(os.path.expanduser(str(root)), "dataset", "json", f"test_{sub}.json")):
                continue  # a subset the user does not have: its split just has fewer models
            entries = load_abc_split(root, sub)
            perm = numpy_rng("customized-model", int(config["seed_offset"]), sub).permutation(len(entries))
            orders.append([entries[i] for i in perm])
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
            cid = f"{e.split}-{int(e.index):04d}-{e.class_id}".replace("/", "_")
            category = e.category if e.category else ""
            prompt = ABC_PROMPTS[split].format(token=ABC_TOKEN, category=category.replace("_", " ")).strip()
            out.append({
                "id": cid, "split": split, "subset": e.split, "class_id": str(e.class_id), "category": e.category,
                "exemplars": list(e.exemplar_paths), "exemplar_ids": list(e.exemplar_ids),
                "queries": [{"path": paths[i][1], "type": paths[i][0]} for i in sorted(pick)],
                "prompt": prompt,
                "weights": _find_weights(config.get("weights_dir"), e.split, str(e.class_id)),
            })
    return out


def abc_build_state(bench, env: RunEnv) -> State:
    """Cases, pool and provenance for the AbC data. Exemplars and queries are loaded now (they are few); the
    LAION pool stays on disk (``AbCPool``); customized models load per concept when a method needs them."""
    import os

    from genattr.datasets.abc import AbCPool, load_images
    from genattr.harness.data import ConcatDataset, InMemoryDataset

    t0 = time.perf_counter()
    c = bench.config
    root, res = c["data_root"], int(c["resolution"])
    selection = abc_selection(c)
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
                           prompts=[e["prompt"]] * len(e["queries"]), seeds=[None] * len(e["queries"]),
                           weights=e["weights"], description=f"{e['subset']} {e['class_id']} {e['category'] or ''}".strip())
        case.queries = [Query(id=f"{e['id']}/q{i:02d}", image=q_imgs[i], prompt=e["prompt"],
                              meta={"concept": e["id"], "split": e["split"], "path": q["path"], "type": q["type"],
                                    "query": i})
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


_BASE_MODELS: dict = {}


def _abc_base_model(base_model: str):
    """The base model of the deltas, loaded once per process: a directory saved by a genattr model
    (``genattr_model.json``, e.g. ``tiny-t2i``) or a diffusers Stable Diffusion pipeline (local path or hub id)."""
    from pathlib import Path

    key = str(base_model)
    if key not in _BASE_MODELS:
        _BASE_MODELS.clear()  # one base at a time: Stable Diffusion is large
        p = Path(key).expanduser()
        if (p / "genattr_model.json").is_file():
            import json

            kind = json.loads((p / "genattr_model.json").read_text()).get("model")
            if kind != "tiny-t2i":
                raise UserError(f"customized-model: base_model {key!r} holds a {kind!r} model; expected tiny-t2i "
                                "or a diffusers pipeline")
            from genattr.plugins.models.tiny_t2i import TinyT2I

            _BASE_MODELS[key] = TinyT2I.load(str(p))
        else:
            from genattr.plugins.models.diffusers_adapter import DiffusersT2I

            loader = getattr(DiffusersT2I, "from_pretrained", None) or DiffusersT2I
            _BASE_MODELS[key] = loader(key)
    return _BASE_MODELS[key]


def abc_load_model(config: Mapping[str, Any], case: ConceptCase, env: RunEnv):
    """The customized model of one AbC case: the base model with the case's delta applied — a genattr delta
    directory (``delta.json``, written by ``save_delta``) or a Custom-Diffusion delta (diffusers adapter)."""
    from pathlib import Path

    base = _abc_base_model(config["base_model"])
    path = Path(case.weights)
    if path.is_dir() and (path / "delta.json").is_file():
        from genattr.plugins.models.common import load_delta

        model = load_delta(base, str(path))
    else:
        from genattr.plugins.models.diffusers_adapter import load_delta

        model = load_delta(base, str(path))
    if env.device and env.device != "cpu" and hasattr(model, "to"):
        model = model.to(env.device)
    return model
