"""The leave-K-out counterfactual benchmark (PAPER_NOTES §2; the paper's Table 1).

Protocol
--------
1. Train a base model θ0 from scratch on the training set (model cache: a second run loads it).
2. Synthesize queries with θ0 from **held-out** captions (captions of items that are not in the training set), one
   per query, each with a fixed seed derived from ``(run seed, "leave-k-out/query", query index)``.
3. Cells are ``method × K × query``. A cell asks the method for its scores on the query (computed once per
   (method, method config, θ0, query) and cached: the same scores serve every K), removes the top-K training items,
   retrains from scratch with the *same* recipe and seed — the removed items are the only difference; ``coupled``
   retraining (the default of the built-in scales, :data:`RETRAIN_MODES`) also keeps θ0's batch sequence — and
   measures ``delta-loss``, ``delta-gen-mse`` and ``delta-gen-sim`` (:mod:`genattr.plugins.metrics.counterfactual`).
   Retrained models go through the content-addressed model cache, keyed on the training set's fingerprint and the
   removed-id set: the same removal is never trained twice (across methods, queries,
   runs). The metric values of a (removal set, query) pair are cached too, so a re-run is fast.
4. The random baseline (method ``random``) does not rank per query: for every K it draws ``random_draws`` (R)
   removal sets from ``(run seed, K, draw)`` — the same R sets for every query, so R retrains per K rather than
   R × queries — and a cell reports the mean over the draws (per-draw values in ``extra``).
5. :meth:`LeaveKOutBenchmark.summarize` turns result rows into the Table-1-shaped table: method × K, mean ±
   standard error over queries of ΔL, ΔG-MSE and ΔG-similarity.

Configuration keys (``get_benchmark("leave-k-out", **config)``; unspecified keys come from the scale preset):
``scale`` (tiny | small | paper), ``dataset`` (digits | shapes | mscoco), ``dataset_config`` (keyword arguments of
the dataset class; for mscoco ``root``, ``annotations``, ``split`` and optionally ``latents``, plus
``query_split`` / ``query_annotations`` for the held-out captions), ``n`` (training-set size), ``model`` (registered
adapter name for the model cache: ``tiny-t2i`` or ``diffusers``), ``recipe`` (tiny | small, a recipe of
``genattr.plugins.models.recipes``), ``model_config`` / ``train_config`` (override the recipe's), ``train_seed``
(default: the run seed), ``k`` (list of counts ≥ 1 or fractions of N in (0, 1); a fraction becomes
``max(1, round(f·N))``), ``num_queries``, ``query_steps`` (sampling steps for queries and regenerations),
``random_draws``, ``random_method`` (the method name treated as the random baseline, default ``random``),
``loss_stride`` (5), ``retrain`` (``coupled`` | ``independent``, :data:`RETRAIN_MODES`), ``encoder``
(ΔG-similarity encoder spec; default ``builtin:<dataset>`` for built-in data, ``clip:openai/clip-vit-base-patch32``
for mscoco).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, Sequence

from genattr.harness.api import Cell, Query
from genattr.harness.errors import UserError

NAME = "leave-k-out"
VERSION = "1"

#: The paper's K as fractions of N: 500, 1000, 4000 of 118,287 COCO images.
PAPER_K_FRACTIONS = (0.0042, 0.0085, 0.034)

#: The paper's latent-diffusion recipe for MSCOCO (PAPER_NOTES §2), for the ``diffusers`` adapter. The UNet is
#: trained from scratch; the SD-2 text encoder, tokenizer and VAE are loaded from ``pretrained`` (a hub id or a
#: local directory with ``text_encoder/``, ``tokenizer/``, ``vae/``) and stay frozen.
PAPER_MODEL = {
    "pretrained": "stabilityai/stable-diffusion-2",
    "from_scratch": ["unet"],
    "resolution": 128,
    "unet": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [128, 256, 256, 256],
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
    },
    "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"},
}
PAPER_TRAIN = {"epochs": 200, "lr": 1e-4, "batch_size": 128, "flip": True}

#: Scale presets. ``small`` is sized to finish (three methods, one K, a handful of queries) in about 30 minutes on
#: a 2-core CPU including the base model and every retrain; see docs/benchmarks/leave-k-out.md for the figures.
SCALES: dict[str, dict] = {
    "tiny": {
        "dataset": "digits",
        "dataset_config": {},
        "n": 48,
        "model": "tiny-t2i",
        "recipe": "tiny",
        "model_config": None,
        "train_config": None,
        "k": [2, 6],
        "num_queries": 2,
        "query_steps": 10,
        "random_draws": 2,
        "loss_stride": 5,
        "encoder": None,
    },
    "small": {
        "dataset": "digits",
        "dataset_config": {"resolution": 8},
        "n": 300,
        "model": "tiny-t2i",
        "recipe": "small",
        "model_config": None,
        "train_config": {"steps": 400},
        "k": [0.034],
        "num_queries": 5,
        "query_steps": 50,
        "random_draws": 4,
        "loss_stride": 5,
        "encoder": None,
    },
    "paper": {
        "dataset": "mscoco",
        "dataset_config": {"root": None, "split": "train2017", "annotations": None, "resolution": 128,
                           "latents": None, "query_split": "val2017", "query_annotations": None},
        "n": None,
        "model": "diffusers",
        "recipe": None,
        "model_config": PAPER_MODEL,
        "train_config": PAPER_TRAIN,
        "k": [500, 1000, 4000],
        "num_queries": 110,
        "query_steps": 1000,
        "guidance_scale": 7.5,
        "random_draws": 10,
        "loss_stride": 5,
        "encoder": None,
    },
}

COMMON = {"train_seed": None, "random_method": "random", "guidance_scale": None, "retrain": None}

#: How a removal is retrained (config key ``retrain``; default ``coupled`` for the built-in scales, ``independent``
#: for ``paper``, as the paper did):
#:
#: * ``independent`` — train from scratch on the remaining N − K items with the same recipe and seed. The batch
#:   sequence is a permutation of the smaller set, so every batch differs from θ0's: the retrain carries the full
#:   reshuffling noise of SGD on top of the removal's effect (the paper's Random row, ΔL 3.5·10⁻³, is mostly this
#:   noise floor).
#: * ``coupled`` — train from scratch on the full set's batch sequence (same permutation, noise, timesteps,
#:   captions) with the K removed items' loss terms weighted 0 (``exclude`` of ``DDPMAdapter.train``). The removed
#:   items are then literally the only difference between θ0 and θ₋K, which lowers the noise floor by a large factor
#:   and lets a handful of queries separate methods on a small model (common random numbers).
RETRAIN_MODES = ("coupled", "independent")

#: Dataset keyword arguments that set the training-set size (the benchmark sets it from ``n``).
_SIZE_KEYS = ("limit", "n")

METRICS = {"delta-loss": True, "delta-gen-mse": True, "delta-gen-sim": False}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def resolve_k(k_values: Sequence[float | int], n: int) -> list[tuple[int, float]]:
    """``[(count, fraction of n)]`` for each K: integers (or floats ≥ 1) are counts, floats in (0, 1) fractions of
    ``n`` rounded to the nearest count, at least 1. Counts must be below ``n``. Duplicates are dropped."""
    out: list[tuple[int, float]] = []
    for v in k_values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise UserError(f"leave-k-out: K must be a positive count or a fraction in (0, 1), got {v!r}")
        count = max(1, int(round(v * n))) if (isinstance(v, float) and v < 1) else int(v)
        if count >= n:
            raise UserError(f"leave-k-out: K={v!r} removes {count} of N={n} training items; K must be below N")
        if count not in [c for c, _ in out]:
            out.append((count, count / n))
    return out


def top_k(scores, k: int):
    """Indices of the ``k`` highest scores (ties: lower index first; NaN counts as lowest)."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s = np.where(np.isnan(s), -np.inf, s)
    return np.argsort(-s, kind="stable")[:k]


def random_removal(seed: int, k: int, draw: int, n: int):
    """The ``draw``-th random removal set of size ``k`` (sorted indices into the training set): a function of
    ``(seed, k, draw)`` only — shared by every query."""
    import numpy as np

    from genattr.harness.seeding import numpy_rng

    return np.sort(numpy_rng(seed, "leave-k-out/random", int(k), int(draw)).choice(n, size=int(k), replace=False))


class _State:
    """What setup builds once per process: datasets, θ0, queries, recipe."""

    def __init__(self):
        self.train = None
        self.base = None
        self.queries: list[Query] = []
        self.model_config: dict = {}
        self.train_config: dict = {}
        self.train_seed = 0
        self.k: list[tuple[int, float]] = []
        self.provenance: dict = {}


class LeaveKOutBenchmark:
    """Leave-K-out counterfactual evaluation (see the module docstring for the protocol and the configuration)."""

    name = NAME
    version = VERSION
    metrics = dict(METRICS)

    def __init__(self, scale: str = "tiny", **overrides: Any):
        if scale not in SCALES:
            raise UserError(f"leave-k-out: unknown scale {scale!r}; choose from {', '.join(SCALES)}")
        unknown = set(overrides) - set(SCALES[scale]) - set(COMMON)
        if unknown:
            raise UserError(f"leave-k-out: unknown config key(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(sorted(set(SCALES[scale]) | set(COMMON)))}")
        cfg = {**copy.deepcopy(COMMON), **copy.deepcopy(SCALES[scale])}
        for key, value in overrides.items():
            if key == "dataset_config" and isinstance(value, dict) and "dataset" not in overrides:
                cfg[key] = {**(cfg[key] or {}), **value}
            elif (key in ("model_config", "train_config") and isinstance(value, dict) and isinstance(cfg[key], dict)
                  and overrides.get("model", cfg["model"]) == SCALES[scale]["model"]):
                cfg[key] = {**cfg[key], **value}  # adjust the preset's recipe (another model: replace it)
            else:
                cfg[key] = value
        if isinstance(cfg["k"], (int, float)):
            cfg["k"] = [cfg["k"]]
        if cfg["dataset"] not in ("digits", "shapes", "mscoco"):
            raise UserError(f"leave-k-out: unknown dataset {cfg['dataset']!r}; choose from digits, shapes, mscoco")
        if cfg["retrain"] is None:
            cfg["retrain"] = "independent" if scale == "paper" else "coupled"
        if cfg["retrain"] not in RETRAIN_MODES:
            raise UserError(f"leave-k-out: unknown retrain mode {cfg['retrain']!r}; choose from "
                            f"{', '.join(RETRAIN_MODES)}")
        if int(cfg["num_queries"]) < 1 or int(cfg["random_draws"]) < 1:
            raise UserError("leave-k-out: num_queries and random_draws must be at least 1")
        cfg["scale"] = scale
        self.config = cfg
        self.scale = scale
        self._state: _State | None = None
        self._state_key = None
        self._metric_objs: dict | None = None
        self._method_cfgs: dict = {}

    # -- datasets ---------------------------------------------------------------------------------------------------
    def _datasets(self, seed: int):
        """(training set, held-out [(source id, caption)])."""
        cfg = self.config
        name = cfg["dataset"]
        rec = self._recipe_parts()[2]
        dcfg = {**{k: v for k, v in rec.items() if k not in _SIZE_KEYS}, **dict(cfg["dataset_config"] or {})}
        n = cfg["n"] if cfg["n"] is not None else next((rec[k] for k in _SIZE_KEYS if rec.get(k)), None)
        q = int(cfg["num_queries"])
        if name == "digits":
            from genattr.datasets.digits import Digits

            full = Digits(**dcfg)
            total = len(full)
            n = total if n is None else int(n)
            if n > total:
                raise UserError(f"leave-k-out: digits has {total} images, n={n} asked")
            # the first n images (a Digits instance, so it keeps ``labels`` for the built-in encoder)
            train = Digits(limit=n, **dcfg) if n < total else full
            held = [(full.ids[i], full.captions(i)) for i in range(n, total)]
            if not held:  # every image trains: digit captions only name the digit, reuse their wording
                held = [(full.ids[i], full.captions(i)) for i in range(total)]
        elif name == "shapes":
            from genattr.datasets.shapes import Shapes

            n = int(n or 1000)
            train = Shapes(n=n, **dcfg)
            heldout = Shapes(n=q, start=n, **dcfg)
            held = [(heldout.ids[i], heldout.captions(i)) for i in range(len(heldout))]
        else:
            from genattr.datasets.mscoco import MSCOCO

            if not dcfg.get("root"):
                raise UserError("leave-k-out: dataset mscoco needs dataset_config.root (the COCO directory); "
                                "e.g. --set dataset_config.root=/data/coco")
            qsplit = dcfg.pop("query_split", "val2017")
            qann = dcfg.pop("query_annotations", None)
            if n is not None:
                dcfg["limit"] = int(n)
            train = MSCOCO(**dcfg)
            qcfg = {**dcfg, "split": qsplit, "annotations": qann, "limit": q, "latents": None}
            heldout = MSCOCO(**qcfg)
            held = [(heldout.ids[i], heldout.captions(i)) for i in range(len(heldout))]
        # pick the query captions: one per held-out item, caption index from the seed
        import numpy as np

        from genattr.harness.seeding import numpy_rng

        rng = numpy_rng(seed, "leave-k-out/captions")
        order = rng.permutation(len(held)) if name == "digits" else np.arange(len(held))
        picked = []
        for j in range(q):
            src, caps = held[int(order[j % len(held)])]
            picked.append((src, caps[int(numpy_rng(seed, "leave-k-out/caption", j).integers(len(caps)))]))
        return train, picked

    # -- recipe -----------------------------------------------------------------------------------------------------
    def _recipe_parts(self) -> tuple[dict, dict, dict]:
        """(model config, training config, dataset keyword arguments) of the recipe, with the config's overrides."""
        cfg = self.config
        model_config: dict = {}
        train_config: dict = {}
        dataset_kw: dict = {}
        if cfg.get("recipe") and cfg["dataset"] in ("digits", "shapes"):
            from genattr.plugins.models.recipes import recipe

            r = recipe(cfg["dataset"], cfg["recipe"])
            model_config = dict(r.get("model") or {})
            train_config = dict(r.get("train") or {})
            dataset_kw = dict(r.get("dataset") or {})
        elif cfg.get("recipe"):
            raise UserError(f"leave-k-out: the {cfg['recipe']!r} recipe exists for digits and shapes only; give "
                            f"model_config and train_config for {cfg['dataset']}")
        if cfg.get("model_config"):
            model_config.update(cfg["model_config"])
        if cfg.get("train_config"):
            train_config.update(cfg["train_config"])
        return model_config, train_config, dataset_kw

    def _recipe(self, train) -> tuple[dict, dict]:
        """The recipe every training of this benchmark uses (θ0 and every retrain). For ``tiny-t2i`` the caption
        length ``max_length`` is fixed from the full training set, so that it does not depend on which items a
        retrain leaves out."""
        model_config, train_config, _ = self._recipe_parts()
        if self.config["model"] == "tiny-t2i" and "max_length" not in model_config:
            from genattr.plugins.models.tiny_t2i import caption_words

            longest = max((len(caption_words(c)) for i in range(len(train)) for c in train.captions(i)), default=0)
            model_config["max_length"] = max(8, longest + 4)
        return model_config, train_config

    def _train(self, dataset, env, state: _State, exclude: Sequence[str] | None = None):
        """``load_or_train`` with the benchmark's recipe and seed (θ0 and every retrain go through here);
        ``exclude`` (item ids) is the coupled retrain's removal. On an accelerator (``env.device`` not ``cpu``) a
        missing model is trained there and stored under the very key ``load_or_train`` uses, and the loaded model is
        moved to the device."""
        from genattr.plugins.models import cache as model_cache

        model = self.config["model"]
        device = str(env.device or "cpu")
        train_config = dict(state.train_config)
        if exclude:
            train_config["exclude"] = sorted(str(i) for i in exclude)
        if device != "cpu":
            key = model_cache.train_key(dataset, state.model_config, train_config, state.train_seed, model)
            if env.cache.lookup(model_cache.NS_TRAINED, key) is None:
                cls = model_cache._model_class(model)
                tc = {**train_config, "seed": state.train_seed, "progress": env.progress}

                def create(tmp):
                    build = getattr(cls, "for_dataset", None)
                    m = build(dataset, **state.model_config) if build is not None else cls(**state.model_config)
                    report = m.to(device).train(dataset, tc)
                    m.to("cpu").save(str(tmp / "model"))
                    (tmp / "train_report.json").write_text(json.dumps(
                        {k: report.get(k) for k in ("seconds", "images_per_second", "steps", "batch_size")}
                        | {"device": device}))

                env.cache.get_or_create(model_cache.NS_TRAINED, key, create,
                                        {"model": model, "dataset": dataset.fingerprint, "seed": state.train_seed})
        m = model_cache.load_or_train(env.cache, dataset, state.model_config, train_config,
                                      seed=state.train_seed, model=model, progress=env.progress)
        return m.to(device) if device != "cpu" and hasattr(m, "to") else m

    def retrain_key(self, dataset, state: _State, exclude: Sequence[str] | None = None) -> str:
        """The identity of the model trained on ``dataset`` (without the ids ``exclude``, coupled mode) with the
        benchmark's recipe and seed."""
        parts = ["leave-k-out/retrain", self.config["model"], state.model_config, state.train_config,
                 state.train_seed, dataset.fingerprint]
        if exclude:
            parts.append(["coupled", sorted(str(i) for i in exclude)])
        return _sha(parts)

    # -- setup ------------------------------------------------------------------------------------------------------
    def setup(self, env) -> dict:
        """Build (or load from the cache) the training set, θ0 and the queries; returns provenance."""
        return self._setup(env).provenance

    def _setup(self, env) -> _State:
        key = (str(env.cache.root), int(env.seed), env.device)
        if self._state is not None and self._state_key == key:
            return self._state
        import torch

        cfg = self.config
        st = _State()
        st.train_seed = int(cfg["train_seed"] if cfg["train_seed"] is not None else env.seed)
        st.train, picked = self._datasets(int(env.seed))
        st.model_config, st.train_config = self._recipe(st.train)
        st.k = resolve_k(cfg["k"], len(st.train))
        st.base = self._train(st.train, env, st)
        base_fp = st.base.fingerprint
        steps = int(cfg["query_steps"])
        prompts = [c for _, c in picked]
        seeds = [int(_derive(env.seed, "leave-k-out/query", j)) for j in range(len(picked))]

        guidance = cfg["guidance_scale"]
        gkw = {} if guidance is None else {"guidance_scale": float(guidance)}

        def make():
            with torch.no_grad():
                imgs = [st.base.generate([p], [s], steps=steps, **gkw)[0] for p, s in zip(prompts, seeds)]
            return {"images": torch.stack(imgs).float().cpu()}

        qkey = env.cache.key(NAME, VERSION, "queries", base_fp, prompts, seeds, steps, guidance)
        images = env.cache.tensors("leave-k-out/queries", qkey, make)["images"]
        st.queries = [
            Query(id=f"q{j:03d}", image=images[j], prompt=prompts[j],
                  meta={"seed": seeds[j], "steps": steps, "guidance_scale": guidance, "source_id": picked[j][0],
                        "dataset": cfg["dataset"]})
            for j in range(len(picked))
        ]
        st.provenance = {
            "datasets": {f"{cfg['dataset']}-train": st.train.fingerprint},
            "models": {"base": base_fp},
            "n": len(st.train),
            "k": [{"K": c, "K_frac": f} for c, f in st.k],
            "queries": [{"id": qq.id, "prompt": qq.prompt, "seed": qq.meta["seed"], "source_id": qq.meta["source_id"]}
                        for qq in st.queries],
            "recipe": {"model": cfg["model"], "model_config": st.model_config, "train_config": st.train_config,
                       "seed": st.train_seed},
            "retrain": cfg["retrain"],
        }
        self._state, self._state_key = st, key
        return st

    # -- cells ------------------------------------------------------------------------------------------------------
    def _k_list(self) -> list[tuple[int, float]]:
        if self._state is not None:
            return self._state.k
        n = self._n_without_setup()
        return resolve_k(self.config["k"], n)

    def _n_without_setup(self) -> int:
        cfg = self.config
        if cfg["n"] is not None:
            return int(cfg["n"])
        rec = self._recipe_parts()[2]
        n = next((rec[k] for k in _SIZE_KEYS if rec.get(k)), None)
        if n is not None:
            return int(n)
        if cfg["dataset"] == "digits":
            return 1797
        if cfg["dataset"] == "shapes":
            return 1000
        if any(isinstance(v, float) and v < 1 for v in cfg["k"]):
            raise UserError("leave-k-out: K given as fractions of N needs n for mscoco (or give K as counts)")
        return 1 << 62

    def cells(self, methods: Sequence[str]) -> list[Cell]:
        out = []
        for m in methods:
            for count, frac in self._k_list():
                for j in range(int(self.config["num_queries"])):
                    out.append(Cell(id=f"{m}/K{count}/q{j:03d}", method=m,
                                    params={"K": count, "K_frac": frac, "query": j},
                                    group={"K": count, "K_frac": round(frac, 6)}))
        return out

    # -- scores -----------------------------------------------------------------------------------------------------
    def scores(self, method, query: Query, env):
        """The method's scores (N,) for one query, cached per (method, config, θ0, training set, query)."""
        import numpy as np

        from genattr.harness.api import AttributionContext

        st = self._setup(env)
        mname = getattr(method, "name", type(method).__name__)
        # the method's configuration as the run declared it (a method may fill in defaults in ``config`` once it
        # is prepared; keying on the declared one keeps the cache hit for every K)
        mcfg = (env.method_configs or {}).get(mname)
        if mcfg is None:
            mcfg = self._method_cfgs.setdefault(id(method), copy.deepcopy(getattr(method, "config", {})))
        key = env.cache.key(NAME, VERSION, "scores", mname, getattr(method, "version", "0"), mcfg, self.scale,
                            st.base.fingerprint,
                            st.train.fingerprint, query.id, query.prompt, query.meta.get("seed"),
                            query.meta.get("steps"), int(env.seed))

        def compute():
            ctx = AttributionContext(model=st.base, train_set=st.train, cache=env.cache, device=env.device,
                                     seed=int(env.seed), scale=self.scale, progress=env.progress,
                                     extra={"benchmark": NAME})
            method.prepare(ctx)
            s = np.asarray(method.attribute(ctx, [query]), dtype=np.float64)
            if s.shape != (1, len(st.train)):
                raise ValueError(f"method {getattr(method, 'name', method)!r} returned scores of shape {s.shape}, "
                                 f"expected (1, {len(st.train)})")
            return {"scores": s[0]}

        return env.cache.arrays("leave-k-out/scores", key, compute)["scores"]

    def removal_for(self, cell: Cell, method, env) -> list[list[int]]:
        """The removal set(s) of a cell as sorted training indices: one for a ranking method, R for random."""
        st = self._setup(env)
        k = int(cell.params["K"])
        n = len(st.train)
        if cell.method == self.config["random_method"]:
            return [random_removal(int(env.seed), k, r, n).tolist() for r in range(int(self.config["random_draws"]))]
        q = st.queries[int(cell.params["query"])]
        return [sorted(int(i) for i in top_k(self.scores(method, q, env), k))]

    # -- metrics ----------------------------------------------------------------------------------------------------
    def _metrics(self):
        if self._metric_objs is None:
            from genattr.plugins.metrics.counterfactual import DeltaGenMSE, DeltaGenSim, DeltaLoss

            self._metric_objs = {"delta-loss": DeltaLoss(), "delta-gen-mse": DeltaGenMSE(),
                                 "delta-gen-sim": DeltaGenSim(encoder=self.config["encoder"])}
        return self._metric_objs

    def _base_side(self, query: Query, env, st: _State) -> dict:
        """θ0's query losses (cached) and regenerated image (the query itself)."""
        import numpy as np

        from genattr.plugins.metrics.counterfactual import query_loss

        stride = int(self.config["loss_stride"])
        key = env.cache.key(NAME, VERSION, "query-loss", st.base.fingerprint, query.id, query.prompt,
                            query.meta.get("seed"), query.meta.get("steps"), stride, int(env.seed))
        losses = env.cache.arrays("leave-k-out/query-loss", key, lambda: {
            "losses": query_loss(st.base, query, seed=int(env.seed), stride=stride)})["losses"]
        return {"losses": np.asarray(losses), "image": query.image}

    def evaluate_removal(self, removed: Sequence[int], query: Query, env) -> dict:
        """Retrain without ``removed`` (training indices; cached) and return the three metrics for ``query`` plus
        ``retrain_key``. The values are cached per (removal set, query, metric options)."""
        st = self._setup(env)
        removed = sorted(int(i) for i in removed)
        if self.config["retrain"] == "coupled":
            exclude = [st.train.ids[i] for i in removed]
            subset = st.train
        else:
            exclude = None
            rset = set(removed)
            subset = st.train.subset([i for k, i in enumerate(st.train.ids) if k not in rset])
        rkey = self.retrain_key(subset, st, exclude)
        mobjs = self._metrics()
        enc_spec = self.config["encoder"] or mobjs["delta-gen-sim"].default_spec(self.config["dataset"])
        vkey = env.cache.key(NAME, VERSION, "removal-metrics", rkey, st.base.fingerprint, query.id, query.prompt,
                             query.meta.get("seed"), query.meta.get("steps"), int(self.config["loss_stride"]),
                             int(env.seed), enc_spec, {m: o.version for m, o in mobjs.items()})
        got = env.cache.get_json("leave-k-out/removal-metrics", vkey)
        if got is not None:
            return got
        from genattr.plugins.metrics.counterfactual import query_loss, regenerate

        retrained = self._train(subset, env, st, exclude)
        base = self._base_side(query, env, st)
        stride = int(self.config["loss_stride"])
        r_losses = query_loss(retrained, query, seed=int(env.seed), stride=stride)
        base_img = base["image"]
        if query.meta.get("steps") is None:  # pragma: no cover - queries from setup always carry their steps
            base_img = regenerate(st.base, query)
        r_img = regenerate(retrained, query)
        values = {
            "delta-loss": mobjs["delta-loss"](st.base, retrained, query, base_losses=base["losses"],
                                              retrained_losses=r_losses),
            "delta-gen-mse": mobjs["delta-gen-mse"](st.base, retrained, query, images=(base_img, r_img)),
            # the built-in encoder trains on θ0's training set the first time (cached)
            "delta-gen-sim": mobjs["delta-gen-sim"](st.base, retrained, query, images=(base_img, r_img),
                                                    encoder=enc_spec, cache=env.cache, device=env.device,
                                                    dataset=st.train),
        }
        out = {**values, "retrain_key": rkey, "retrained_fingerprint": retrained.fingerprint}
        if getattr(retrained, "vocab", None) is not None and getattr(st.base, "vocab", None) is not None:
            # tiny-t2i builds its word vocabulary from the training captions: a removal that drops the last
            # caption using a word changes the text encoder's table (recorded, so it can be checked)
            out["vocab_changed"] = list(retrained.vocab) != list(st.base.vocab)
        env.cache.put_json("leave-k-out/removal-metrics", vkey, out)
        return out

    def run_cell(self, cell: Cell, method, env) -> dict:
        import numpy as np

        st = self._setup(env)
        query = st.queries[int(cell.params["query"])]
        removals = self.removal_for(cell, method, env)
        per = [self.evaluate_removal(r, query, env) for r in removals]
        result: dict[str, Any] = {m: float(np.mean([p[m] for p in per])) for m in METRICS}
        extra: dict[str, Any] = {"K": int(cell.params["K"]), "N": len(st.train), "query_id": query.id,
                                 "prompt": query.prompt, "seed": query.meta["seed"]}
        if cell.method == self.config["random_method"]:
            extra["draws"] = [{m: p[m] for m in METRICS} for p in per]
            extra["removed_sha256"] = [_sha(r) for r in removals]
        else:
            ids = [st.train.ids[i] for i in removals[0]]
            extra["removed_sha256"] = _sha(removals[0])
            if len(ids) <= 100:
                extra["removed_ids"] = ids
        result["extra"] = extra
        return result

    # -- summary ----------------------------------------------------------------------------------------------------
    @staticmethod
    def summarize(rows: Sequence[dict], numeric: bool = False):
        """The Table-1-shaped summary of result rows (dicts with ``method``, ``group`` / ``params`` holding ``K``,
        and ``metrics``): one row per method, columns ``(metric, K)``, cells ``"mean ± s.e."`` over queries.
        ``numeric=True`` gives the long form instead: ``method, K, K_frac, metric, mean, se, n``."""
        import pandas as pd

        recs = []
        for r in rows:
            if r.get("benchmark", NAME) != NAME:
                continue
            group = r.get("group") or r.get("params") or {}
            metrics = r.get("metrics") or {m: r.get(m) for m in METRICS}
            for m in METRICS:
                v = metrics.get(m)
                if v is None:
                    continue
                recs.append({"method": r["method"], "K": int(group["K"]), "K_frac": group.get("K_frac"),
                             "metric": m, "value": float(v)})
        cols = ["method", "K", "K_frac", "metric", "mean", "se", "n"]
        if not recs:
            return pd.DataFrame(columns=cols)
        df = pd.DataFrame(recs)
        g = df.groupby(["method", "K", "metric"], sort=True)
        long = g["value"].agg(["mean", "count", "std"]).reset_index()
        long["se"] = long["std"].fillna(0.0) / long["count"].pow(0.5)
        fr = df.groupby("K")["K_frac"].first()
        long["K_frac"] = long["K"].map(fr)
        long = long.rename(columns={"count": "n"})[cols]
        if numeric:
            return long
        long["cell"] = [f"{m:.4g} ± {s:.2g}" for m, s in zip(long["mean"], long["se"])]
        table = long.pivot(index="method", columns=["metric", "K"], values="cell")
        order = [(m, k) for m in METRICS for k in sorted(long["K"].unique()) if (m, k) in table.columns]
        table = table[order]
        table.columns = pd.MultiIndex.from_tuples(order, names=["metric", "K"])
        return table


def _derive(*keys) -> int:
    from genattr.harness.seeding import derive_seed

    return derive_seed(*keys) % (2**31 - 1)
