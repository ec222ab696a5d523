"""``genattr attribute``: rank the training items of a dataset for one query (generated from a prompt and seed, or
read from an image file) with one method, through the same scoring path as the benchmarks
(:func:`genattr.harness.scoring.score`). Models are resolved through the model registry.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Sequence

from genattr.harness.errors import UserError
from genattr.harness.results import SCHEMA_VERSION, check_writable, clean_json, utc_now
from genattr.harness.run.config import _deep_set, parse_assignment
from genattr.harness.run.driver import create
from genattr.harness.run.provenance import resolve_device

def _assignments(items: Sequence[str], what: str) -> dict:
    cfg: dict = {}
    for text in items:
        path, value = parse_assignment(text)
        _deep_set(cfg, path, value)
    return cfg


def load_model(spec: str, config: Mapping | None = None):
    """A model adapter from ``spec``: a directory saved by a genattr adapter (``genattr_model.json`` names the
    registered adapter, loaded with its ``load``), a diffusers pipeline directory (``model_index.json``), a
    registered model name (built with ``config``), or a hub id (``org/name``, through the diffusers adapter)."""
    from genattr.harness.manager import registry

    p = Path(spec).expanduser()
    models = registry("models")
    if p.is_dir():
        meta_file = p / "genattr_model.json"
        if meta_file.is_file():
            try:
                name = json.loads(meta_file.read_text()).get("model")
            except (OSError, ValueError):
                raise UserError(f"--model {spec!r}: unreadable genattr_model.json") from None
            if name not in models:
                raise UserError(f"--model {spec!r} was saved by model adapter {name!r}, which is not installed")
            factory = models.get(name).factory
            cls = factory.resolve() if hasattr(factory, "resolve") else factory
            return cls.load(str(p))
        if (p / "model_index.json").is_file():
            return _diffusers_model(str(p))
        raise UserError(f"--model {spec!r} is neither a saved genattr model (genattr_model.json) nor a diffusers "
                        "pipeline (model_index.json)")
    if spec in models:
        import genattr

        return genattr.get_model(spec, **dict(config or {}))
    if "/" in spec and not p.exists() and not spec.startswith((".", "/", "~")):
        return _diffusers_model(spec)
    raise UserError(f"--model {spec!r}: no such directory, registered model or hub id")


def _is_fresh(spec: str | None) -> bool:
    """Whether ``--model`` names a registered adapter (built fresh, untrained) rather than saved weights."""
    if not spec or Path(spec).expanduser().exists():
        return False
    from genattr.harness.manager import registry

    return spec in registry("models")


def format_ranking(ranking: list[dict]) -> str:
    """The ranking as aligned text columns: rank, score, id, caption."""
    if not ranking:
        return ""
    scores = [f"{r['score']:+.6g}" for r in ranking]
    w_s = max(len(x) for x in scores)
    w_id = max(len(str(r["id"])) for r in ranking)
    lines = [f"{'rank':>4}  {'score':>{w_s}}  {'id':<{w_id}}  caption"]
    for r, sc in zip(ranking, scores):
        lines.append(f"{r['rank']:>4}  {sc:>{w_s}}  {str(r['id']):<{w_id}}  {r.get('caption', '')}".rstrip())
    return "\n".join(lines)


def _diffusers_model(path_or_id: str):
    """The registered ``diffusers`` adapter on a pipeline directory or hub id."""
    from genattr.harness.manager import registry

    try:
        factory = registry("models").get("diffusers").factory
        cls = factory.resolve() if hasattr(factory, "resolve") else factory
        return cls(path_or_id)
    except ImportError as exc:
        raise UserError(f"cannot load diffusers pipeline {path_or_id!r}: {exc}") from None


def _read_image(path: str, resolution: int | None, channels: int | None):
    """An image file as a ``C×H×W`` float tensor in [-1, 1] at ``resolution`` with ``channels``."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--image {path!r} does not exist")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"--image {path!r} is not a readable image: {exc}") from None
    img = img.convert("L" if channels == 1 else "RGB")
    if resolution:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _to_display(image):
    import numpy as np

    a = image.detach().float().cpu().clamp(-1, 1).add(1).div(2).numpy()
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a[:3], (1, 2, 0)), None


def _grid_png(path: Path, query, ranking: list[dict], dataset) -> None:
    """The query and its top-ranked training images in a grid; every title sits in its own band above its image
    (wrapped, so long ids never run into a neighbour)."""
    import math as _math
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def title(r):
        ident = "\n".join(textwrap.wrap(str(r["id"]), 18)[:2])
        return f"#{r['rank']}  {r['score']:.4g}\n{ident}"

    panels = [("query", query.image)] + [(title(r), dataset.item(r["index"]).image) for r in ranking]
    cols = min(6, len(panels))
    rows = _math.ceil(len(panels) / cols)
    fig = plt.figure(figsize=(2.1 * cols, 2.75 * rows + 0.6))
    grid = fig.add_gridspec(rows, cols, hspace=0.75, wspace=0.25, top=1 - 0.6 / (2.75 * rows + 0.6), bottom=0.02,
                            left=0.02, right=0.98)
    for k, (t, image) in enumerate(panels):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.axis("off")
        arr, cmap = _to_display(image)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(t, fontsize=7, linespacing=1.1)
    fig.suptitle("\n".join(textwrap.wrap(str(query.prompt), 100)[:2]), fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _from_run(run_dir: str, benchmark: str | None, concept: str | None, cache_root: str | None, device: str,
              progress: bool, allow_unverified: bool = False):
    """``(model, training set, run document, benchmark name, description)`` of a finished run directory: the
    benchmark is rebuilt from the run's recorded configuration and set up from the cache (no training when the run
    has finished its setup)."""
    import genattr
    from genattr.harness.api import RunEnv
    from genattr.harness.cache import Cache
    from genattr.harness.results import read_run

    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"--run {run_dir!r} is not a directory")
    doc = read_run(d)
    if not doc or not doc.get("benchmarks"):
        raise UserError(f"--run {run_dir!r} holds no run.json with benchmarks; run 'genattr run --out {run_dir}' first")
    names = [b for b in doc["benchmarks"] if benchmark in (None, b)]
    if not names:
        raise UserError(f"--benchmark {benchmark!r} is not in {run_dir}; it holds {', '.join(doc['benchmarks'])}")
    b = names[0]
    cfg = dict(doc["benchmarks"][b].get("config") or {})
    bench = genattr.get_benchmark(b, **cfg)
    if not callable(getattr(bench, "attribution_context", None)):
        raise UserError(f"benchmark {b!r} cannot hand out its model and training set (no attribution_context)")
    env = RunEnv(cache=Cache(cache_root), device=device, seed=int(doc.get("seed", 0)),
                 scale=str(doc.get("scale") or cfg.get("scale") or "tiny"), progress=progress)
    bench.setup(env)
    import inspect

    kwargs = {"concept": concept}
    if "allow_unverified" in inspect.signature(bench.attribution_context).parameters:
        kwargs["allow_unverified"] = allow_unverified
    model, train_set, what = bench.attribution_context(env, **kwargs)
    return model, train_set, doc, b, what, env.scale


def attribute(*, model_spec: str | None, dataset: str | None, method: str, out: str, model_sets: Sequence[str] = (),
              dataset_sets: Sequence[str] = (), method_sets: Sequence[str] = (), prompt: str | None = None,
              seed: int = 0, image: str | None = None, steps: int = 50, top_k: int = 10, scale: str | None = None,
              device: str = "auto", progress: bool = True, cache_root: str | None = None, run: str | None = None,
              benchmark: str | None = None, concept: str | None = None, allow_untrained: bool = False,
              allow_unverified: bool = False) -> dict:
    """Rank the training items for one query (generated from ``prompt``/``seed`` by the model, or read from
    ``image``) with ``method``; write ``ranking.csv``, ``ranking.json``, ``query.png`` and ``grid.png`` into
    ``out``. The model and training set come from a finished run directory (``run``; its benchmark's model — a
    concept's customized model with ``concept`` — and training set, from the cache) or from ``model_spec`` and
    ``dataset``. Returns the JSON document written to ``ranking.json`` plus the file paths."""
    import csv
    import logging

    import genattr
    from genattr.harness.api import AttributionContext, Query
    from genattr.harness.cache import Cache
    from genattr.harness.scoring import score

    log = logging.getLogger("genattr.attribute")
    if image is None and not prompt:
        raise UserError("give --prompt (with --seed) to generate the query, or --image PATH")
    if run and model_spec:
        raise UserError("give either --run DIR or --model, not both")
    if not run and not dataset:
        raise UserError("give --dataset NAME (with --model), or --run DIR to use a run's model and training set")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be a positive integer (sampling steps of the query), got {steps!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"--top-k must be a positive integer, got {top_k!r}")
    out_dir = check_writable(out)
    method_cfg = _assignments(method_sets, "--set")
    dataset_cfg = _assignments(dataset_sets, "--dataset-set")
    model_cfg = _assignments(model_sets, "--model-set")
    dev = resolve_device(device)
    m = create("method", method, method_cfg)
    source = {}
    if run:
        model, train_set, doc, bname, what, run_scale = _from_run(run, benchmark, concept, cache_root, dev, progress,
                                                                  allow_unverified)
        scale = scale or run_scale
        source = {"run": str(run), "benchmark": bname, "what": what}
        if dataset:
            other = genattr.get_dataset(dataset, **dataset_cfg)
            if getattr(other, "fingerprint", None) != getattr(train_set, "fingerprint", None):
                log.warning(f"--dataset {dataset} is not the training set of {run} ({what}); ranking the run's "
                            "training set")
    else:
        scale = scale or "small"
        try:
            train_set = genattr.get_dataset(dataset, **dataset_cfg)
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad configuration for dataset {dataset!r}: {str(exc).splitlines()[0]}") from None
        model = load_model(model_spec, model_cfg) if model_spec else None
        if model is not None and _is_fresh(model_spec) and not allow_untrained:
            raise UserError(f"--model {model_spec!r} is a fresh, untrained {model_spec} adapter; give --run DIR (a "
                            "finished genattr run), a saved model directory, or --allow-untrained")
    if model is None and (image is None or getattr(m, "needs_model", True)):
        raise UserError(f"--model or --run is required ({'to generate the query' if image is None else method + ' needs it'})")
    if model is not None and hasattr(model, "to"):
        try:
            model = model.to(dev) or model
        except Exception:  # noqa: BLE001 - adapters without device moves keep their own
            pass
    if model is not None:
        for attr in ("resolution", "channels"):
            mv, dv = getattr(model, attr, None), getattr(train_set, attr, None)
            if mv is not None and dv is not None and int(mv) != int(dv):
                log.warning(f"the model's {attr} ({mv}) differs from the training set's ({dv}): the two do not "
                            "belong together")
    if image is not None:
        res = getattr(model, "resolution", None) or getattr(train_set, "resolution", None)
        ch = getattr(model, "channels", None) or getattr(train_set, "channels", None)
        img = _read_image(image, res, ch)
        query = Query(id="query", image=img, prompt=prompt or "", meta={"image": str(image)})
    else:
        img = model.generate([prompt], [int(seed)], steps=steps)[0]
        query = Query(id="query", image=img.detach().cpu(), prompt=prompt, meta={"seed": int(seed), "steps": steps})
    ctx = AttributionContext(model=model, train_set=train_set, cache=Cache(cache_root), device=dev, seed=int(seed),
                             scale=scale, progress=progress)
    t0 = time.perf_counter()
    import numpy as np

    resolve = getattr(m, "resolve_config", None)
    if callable(resolve):
        resolve(scale, None)
    scores = score(m, ctx, [query])
    wall = time.perf_counter() - t0
    s = scores[0]
    order = np.argsort(-s, kind="stable")[:top_k]
    ids = train_set.ids
    ranking = []
    for rank, idx in enumerate(order, start=1):
        caps = train_set.captions(int(idx)) if hasattr(train_set, "captions") else ()
        ranking.append({"rank": rank, "index": int(idx), "id": ids[int(idx)], "score": float(s[idx]),
                        "caption": caps[0] if caps else ""})
    doc = {
        "schema_version": SCHEMA_VERSION,
        "query": {"prompt": query.prompt, **query.meta},
        "source": source,
        "model": {"spec": model_spec, "name": getattr(model, "name", None), "version": getattr(model, "version", None),
                  "fingerprint": getattr(model, "fingerprint", None) if model is not None else None},
        "dataset": {"name": dataset or getattr(train_set, "name", None), "config": dataset_cfg,
                    "size": len(train_set), "fingerprint": getattr(train_set, "fingerprint", None)},
        "method": {"name": method, "version": str(getattr(m, "version", "")),
                   "config": clean_json(getattr(m, "config", {}))},
        "device": dev, "attribution_s": round(wall, 3), "finished_at": utc_now(),
        "ranking": ranking,
    }
    files = {"csv": out_dir / "ranking.csv", "json": out_dir / "ranking.json", "grid": out_dir / "grid.png",
             "query": out_dir / "query.png"}
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["rank", "index", "id", "score", "caption"])
        w.writeheader()
        w.writerows(ranking)
    files["json"].write_text(json.dumps(clean_json(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    arr, cmap = _to_display(query.image)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.imsave(files["query"], arr, cmap=cmap, vmin=0, vmax=1)
    _grid_png(files["grid"], query, ranking, train_set)
    return {**doc, "files": {k: str(v) for k, v in files.items()}}
