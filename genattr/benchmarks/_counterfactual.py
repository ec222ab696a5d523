"""What the counterfactual benchmarks (leave-K-out, LDS) share: a training set and held-out query captions from a
registered dataset, θ0 trained from scratch through the model cache, queries synthesized by θ0, retraining on
subsets of the training set (``coupled`` or ``independent``), and the query losses ΔL is made of.

Everything is resolved through the registries: ``dataset`` (a registered dataset, built with ``dataset_config`` and,
when its constructor takes one, the size ``n`` as ``limit``/``n``; the held-out captions come from its
``heldout(n, count)`` when it has one, else from the items after the first ``n``), ``model`` (a registered model
model with the ``trainable`` capability, trained through the host's model cache
:func:`genattr.load_or_train`; its class's ``pin_config(dataset, config)`` fixes what it would derive from the
training set once, from the full set, so a retrain never changes the architecture) and the recipe (``recipe``: a
scale of the model's own ``recipe(scale, dataset)``, with ``model_config`` / ``train_config`` overrides).

Retraining modes (:data:`RETRAIN_MODES`):

* ``independent`` — train from scratch on the remaining items with the same recipe and seed. The batch sequence is a
  permutation of the smaller set, so every batch differs from θ0's: the retrain carries the full reshuffling noise of
  SGD on top of the removal's effect (the paper's Random row, ΔL 3.5·10⁻³, is mostly this noise floor).
* ``coupled`` — train from scratch on the full set's batch sequence (same permutation, noise, timesteps, captions)
  with the removed items' loss terms weighted 0 (the plan's ``item_weights``). The removed items are then
  literally the only difference between θ0 and the retrain, which lowers the noise floor by a large factor (common
  random numbers).
"""

from __future__ import annotations

from typing import Sequence

from genattr.harness.api import Query
from genattr.harness.cache import hash_json
from genattr.harness.errors import UserError

from ._metrics import resolve_metric_specs  # noqa: F401  (re-exported: leave-K-out, LDS, teacher agreement)

RETRAIN_MODES = ("coupled", "independent")


class CounterfactualState:
    """What setup builds once per process: the training set, θ0, the queries and the recipe."""

    def __init__(self):
        self.train = None
        self.base = None
        self.queries: list[Query] = []
        self.model_config: dict = {}
        self.train_config: dict = {}
        self.train_seed = 0
        self.provenance: dict = {}


class Counterfactual:
    """Mixin of the counterfactual benchmarks. Needs ``self.config`` with ``dataset``, ``dataset_config``, ``n``,
    ``model``, ``recipe``, ``model_config``, ``train_config``, ``train_seed``, ``num_queries``, ``query_steps``,
    ``guidance_scale``, ``loss_stride``, ``retrain``; ``NAME`` and ``VERSION`` key its cache entries."""

    NAME = "counterfactual"
    #: what the attribution context's ``extra`` carries (the base model is the context's model itself)
    provides_extra = ("benchmark", "preset_hint", "preset_model")
    VERSION = "1"

    @property
    def preset_model(self) -> str:
        """The model whose recipe makes θ0 and every retrain (offered to methods' ``resolve_config``)."""
        return self.config["model"]

    def required_model_capabilities(self) -> dict[str, tuple[str, ...]]:
        """``{model name: capabilities}`` the run checks before any work: θ0 and every retrain are trained here."""
        return {self.config["model"]: ("trainable",)}

    # -- datasets ---------------------------------------------------------------------------------------------------
    def _dataset_factory(self):
        from genattr.harness.manager import registry

        return registry("datasets").get(self.config["dataset"]).factory

    def _datasets(self, seed: int):
        """(training set, picked query captions ``[(source id, caption)]``)."""
        import genattr
        from genattr.harness.data import size_option, take

        cfg = self.config
        name = cfg["dataset"]
        rec = self._recipe_parts()[2]
        size_key = size_option(self._dataset_factory())
        rec_n = next((rec[k] for k in ("limit", "n") if rec.get(k)), None)
        dcfg = {**{k: v for k, v in rec.items() if k not in ("limit", "n")}, **dict(cfg["dataset_config"] or {})}
        n = cfg["n"] if cfg["n"] is not None else rec_n
        if n is not None and size_key is not None:
            dcfg[size_key] = int(n)
        try:
            source = genattr.get_dataset(name, **dcfg)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.NAME}: bad configuration for dataset {name!r}: {str(exc).splitlines()[0]}") from None
        if len(source) == 0:
            raise UserError(f"{self.NAME}: dataset {name!r} has no items")
        n = len(source) if n is None else int(n)
        if n > len(source):
            raise UserError(f"{self.NAME}: dataset {name!r} has {len(source)} items, n={n} asked")
        train = take(source, n)
        self._source = (name, dcfg, size_key, n)  # the held-out real images of the regime check come from them
        self._source_dataset = source
        q = int(cfg["num_queries"])
        picked = pick_captions(source, n, q, seed, "leave-k-out")
        # the regime check's own samples: enough of them to judge a share, whatever num_queries is
        count = self._regime_count()
        self._regime_picked = picked if q >= count else pick_captions(source, n, count, seed, "regime")
        return train, picked

    # -- recipe -----------------------------------------------------------------------------------------------------
    def _recipe_parts(self) -> tuple[dict, dict, dict]:
        """(model config, training config, dataset keyword arguments) of the recipe, with the config's overrides."""
        cfg = self.config
        model_config: dict = {}
        train_config: dict = {}
        dataset_kw: dict = {}
        if cfg.get("recipe"):
            from genattr.harness.models import model_recipe

            r = model_recipe(cfg["model"], cfg["recipe"], cfg["dataset"])
            model_config, train_config, dataset_kw = r["model"], r["train"], r["dataset"]
        if cfg.get("model_config"):
            model_config.update(cfg["model_config"])
        if cfg.get("train_config"):
            train_config.update(cfg["train_config"])
            from genattr.harness.models import check_model_plan

            check_model_plan(cfg["model"], "train", cfg["train_config"], self.NAME, "train_config")
        return model_config, train_config, dataset_kw

    def resolved_recipe(self) -> dict:
        """The model recipe this configuration resolves to (before pinning to the data): part of the benchmark's
        configuration hash and of ``run.json``."""
        model_config, train_config, dataset_kw = self._recipe_parts()
        return {"model": model_config, "train": train_config, "dataset": dataset_kw}

    def _recipe(self, train, env=None) -> tuple[dict, dict]:
        """The recipe every training of this benchmark uses (θ0 and every retrain), with what the model adapter
        derives from the data pinned from the full training set (``pin_config``)."""
        from genattr.harness.models import pin_model_config

        model_config, train_config, _ = self._recipe_parts()
        return pin_model_config(self.config["model"], train, model_config,
                                cache=getattr(env, "cache", None)), train_config

    def _train(self, dataset, env, state: CounterfactualState, exclude: Sequence[str] | None = None):
        """``load_or_train`` with the benchmark's recipe and seed (θ0 and every retrain go through here);
        ``exclude`` (item ids) is the coupled retrain's removal."""
        from genattr.harness.models import load_or_train

        return load_or_train(env.cache, dataset, state.model_config, self.train_plan(state, exclude),
                             seed=state.train_seed, model=self.config["model"], progress=env.progress,
                             device=str(env.device or "cpu"))

    @staticmethod
    def train_plan(state: CounterfactualState, exclude: Sequence[str] | None = None) -> dict:
        """The training plan of θ0 (``exclude`` None) or of a coupled retrain (the ids ``exclude`` weighted 0)."""
        plan = dict(state.train_config)
        if exclude:
            plan["item_weights"] = {str(i): 0.0 for i in sorted(str(i) for i in exclude)}
        return plan

    def retrain_key(self, dataset, state: CounterfactualState, exclude: Sequence[str] | None = None) -> str:
        """The identity of the model trained on ``dataset`` (without the ids ``exclude``, coupled mode) with the
        benchmark's recipe and seed."""
        parts = ["leave-k-out/retrain", self.config["model"], state.model_config, state.train_config,
                 state.train_seed, dataset.fingerprint]
        if exclude:
            parts.append(["coupled", sorted(str(i) for i in exclude)])
        return hash_json(parts)

    def retrain_without(self, removed: Sequence[int], env, state: CounterfactualState):
        """``(model, retrain key)`` trained without the training indices ``removed`` (cached), in the configured
        retraining mode."""
        removed = sorted(int(i) for i in removed)
        if self.config["retrain"] == "coupled":
            exclude = [state.train.ids[i] for i in removed]
            subset = state.train
        else:
            exclude = None
            rset = set(removed)
            subset = state.train.subset([i for k, i in enumerate(state.train.ids) if k not in rset])
        return (lambda: self._train(subset, env, state, exclude)), self.retrain_key(subset, state, exclude)

    # -- setup ------------------------------------------------------------------------------------------------------
    def _setup_state(self, env) -> CounterfactualState:
        """Build (or load from the cache) the training set, θ0 and the queries."""
        from genattr.harness import progress

        cfg = self.config
        st = CounterfactualState()
        st.train_seed = int(cfg["train_seed"] if cfg["train_seed"] is not None else env.seed)
        st.train, picked = self._datasets(int(env.seed))
        st.model_config, st.train_config = self._recipe(st.train, env)
        with progress.stage(f"setup {self.NAME}: training θ0 ({cfg['dataset']}, n={len(st.train)})"):
            st.base = self._train(st.train, env, st)
        base_fp = st.base.fingerprint
        steps = int(cfg["query_steps"])
        guidance = cfg["guidance_scale"]
        prompts = [c for _, c in picked]
        seeds = [int(derive(env.seed, "leave-k-out/query", j)) for j in range(len(picked))]
        with progress.stage(f"setup {self.NAME}: synthesizing {len(prompts)} queries"):
            images = self._synthesize(env, st.base, "queries", prompts, seeds)
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
            "queries": [{"id": qq.id, "prompt": qq.prompt, "seed": qq.meta["seed"], "source_id": qq.meta["source_id"]}
                        for qq in st.queries],
            "recipe": {"model": cfg["model"], "model_config": st.model_config, "train_config": st.train_config,
                       "seed": st.train_seed},
            "retrain": cfg["retrain"],
        }
        st.provenance["regime"] = self._regime(env, st)
        return st

    def _regime_count(self) -> int:
        """:func:`regime_count` of this benchmark's scale."""
        return regime_count(self.config.get("scale"))

    def _synthesize(self, env, base, kind: str, prompts: Sequence[str], seeds: Sequence[int], batch: int = 1):
        """:func:`synthesize` with the benchmark's sampling steps and guidance."""
        return synthesize(env, base, kind, prompts, seeds, int(self.config["query_steps"]),
                          self.config["guidance_scale"], batch=batch)

    def _regime_images(self, env, st: CounterfactualState) -> list:
        """The regime check's samples: the queries when there are :meth:`_regime_count` of them, else samples of
        its own from held-out captions with seeds of their own (:func:`regime_samples`)."""
        picked = getattr(self, "_regime_picked", None) or []
        if len(st.queries) >= self._regime_count() or not picked:
            return [q.image for q in st.queries]
        return list(regime_samples(env, st.base, picked, int(self.config["query_steps"]),
                                   self.config["guidance_scale"]))

    def _held_images(self, st: CounterfactualState):
        """Up to ``REGIME_HELDOUT`` real images the training set does not hold: the dataset's own
        ``heldout_images(n, count)`` when it has one (held-out combinations: the real scenes of the queries'
        distribution), else the items after the first ``n`` of the dataset built with room for them (a dataset whose
        first ``n`` items then differ from the training set's, or that has no more items, gives None)."""
        import torch

        import genattr

        name, dcfg, size_key, n = getattr(self, "_source", (None, None, None, 0))
        if name is None:
            return None
        own = getattr(getattr(self, "_source_dataset", None), "heldout_images", None)
        if callable(own):
            held = own(int(n), REGIME_HELDOUT).float()
            if st.queries and tuple(held.shape[1:]) != tuple(st.queries[0].image.shape):
                return None
            return held
        try:
            if size_key is not None:
                bigger = genattr.get_dataset(name, **{**dcfg, size_key: int(n) + REGIME_HELDOUT})
            else:
                bigger = genattr.get_dataset(name, **dcfg)
        except Exception:  # noqa: BLE001 - a dataset without more items: no check
            return None
        if len(bigger) <= n:
            return None
        probe = list(range(min(n, 16)))
        if not torch.equal(bigger.images(probe).float(), st.train.images(probe).float()):
            return None  # not the same items first: the rest are not "held out" of this training set
        held = bigger.images(list(range(n, min(len(bigger), n + REGIME_HELDOUT)))).float()
        if st.queries and tuple(held.shape[1:]) != tuple(st.queries[0].image.shape):
            return None  # another resolution or channel count than the queries: not comparable
        return held

    def _regime(self, env, st: CounterfactualState) -> dict:
        """The regime check of θ0 (:mod:`genattr.harness.regime`) on :meth:`_regime_count` generated samples: are they
        copies of training images? Recorded in the provenance; a failure is a warning naming the figures."""
        from genattr.harness import progress
        from genattr.harness.regime import cached_regime_check

        held = self._held_images(st)
        with progress.stage(f"setup {self.NAME}: regime check"):
            check = cached_regime_check(env.cache, st.base, st.train, self._regime_images(env, st), held,
                                        seed=int(env.seed))
        warn_if_copying(check, self.NAME, "θ0")
        return check

    def attribution_context(self, env, concept: str | None = None):
        """``(θ0, training set, description)`` for ``genattr attribute --run``."""
        if concept is not None:
            raise UserError(f"{self.NAME}: --concept applies to the customized-model benchmark only")
        st = self._setup(env)
        return st.base, st.train, f"θ0 and its training set ({self.config['dataset']}, n={len(st.train)})"

    def base_losses(self, query: Query, env, st: CounterfactualState):
        """θ0's per-timestep losses of ``query`` (cached)."""
        import numpy as np

        from genattr.harness.counterfactual import query_loss

        stride = int(self.config["loss_stride"])
        key = env.cache.key("leave-k-out", "1", "query-loss", st.base.fingerprint, query.id, query.prompt,
                            query.meta.get("seed"), query.meta.get("steps"), stride, int(env.seed))
        losses = env.cache.arrays("leave-k-out/query-loss", key, lambda: {
            "losses": query_loss(st.base, query, seed=int(env.seed), stride=stride)})["losses"]
        return np.asarray(losses)

    def method_scores(self, method, queries: Sequence[Query], env, st: CounterfactualState, preset_hint=None):
        """The method's scores ``(len(queries), N)`` at θ0, cached per (method, resolved config, θ0, training set,
        query): queries without cached scores are scored together in one ``attribute`` call."""
        import numpy as np

        from genattr.harness.api import AttributionContext
        from genattr.harness.scoring import method_name, score

        mname = method_name(method)
        mcfg = (env.method_configs or {}).get(mname)
        if mcfg is None:
            mcfg = getattr(method, "config", {})
        keys = [env.cache.key(self.NAME_SCORES, self.VERSION_SCORES, "scores", mname, getattr(method, "version", "0"),
                              mcfg, self.config["scale"], st.base.fingerprint, st.train.fingerprint, q.id, q.prompt,
                              q.meta.get("seed"), q.meta.get("steps"), int(env.seed)) for q in queries]
        ns = f"{self.NAME_SCORES}/scores"
        out: list = [None] * len(queries)
        todo = []
        for j, k in enumerate(keys):
            got = env.cache.get_arrays(ns, k)
            if got is not None:
                out[j] = np.asarray(got["scores"])
            else:
                todo.append(j)
        if todo:
            ctx = AttributionContext(model=st.base, train_set=st.train, cache=env.cache, device=env.device,
                                     seed=int(env.seed), scale=self.config["scale"], progress=env.progress,
                                     extra={"benchmark": self.NAME, "preset_hint": preset_hint,
                                            "preset_model": self.preset_model})
            s = score(method, ctx, [queries[j] for j in todo])
            for row, j in zip(s, todo):
                env.cache.put_arrays(ns, keys[j], {"scores": row})
                out[j] = row
        return np.stack(out) if out else np.zeros((0, len(st.train)))

    #: The namespace and version the scores are cached under (the leave-K-out names, so both benchmarks share them).
    NAME_SCORES = "leave-k-out"
    VERSION_SCORES = "1"


#: Held-out real images the regime check compares the samples with (at most): enough for a steady 10th percentile of
#: their nearest-neighbour distances.
REGIME_HELDOUT = 1000
#: Generated samples the regime check judges, by scale: a counterfactual benchmark's queries when there are this
#: many, else samples of its own (from held-out captions, seeds of their own; cached with the queries). A model that
#: generates like the held-out reals has a near-copy share of 10 % ± 1.3 % (binomial standard error) at 500
#: samples, ± 4.2 % at 50: 50 samples tell a memorising model (40 %) from a generalising one, 500 tell 13 % from
#: 10 % (the check fails when the share's 95 % interval lies above 10 %).
REGIME_QUERIES = {"tiny": 50, "small": 500, "paper": 500}


def regime_count(scale: str | None) -> int:
    """:data:`REGIME_QUERIES` of ``scale`` (500 for a scale it does not name)."""
    return int(REGIME_QUERIES.get(scale, 500))


def pick_captions(source, n: int, count: int, seed: int, ns: str) -> list[tuple[str, str]]:
    """``count`` held-out captions ``[(source id, caption)]`` of ``source`` beyond its first ``n`` items
    (:func:`genattr.harness.data.heldout`): one caption per item, the items in a seeded order when there are more
    than needed, cycled when there are fewer; every draw from ``(seed, ns)``."""
    import numpy as np

    from genattr.harness.data import heldout
    from genattr.harness.seeding import numpy_rng

    held = heldout(source, n, count)
    rng = numpy_rng(seed, f"{ns}/captions")
    order = rng.permutation(len(held)) if len(held) > count else np.arange(len(held))
    out = []
    for j in range(count):
        src, caps = held[int(order[j % len(held)])]
        out.append((src, caps[int(numpy_rng(seed, f"{ns}/caption", j).integers(len(caps)))]))
    return out


def synthesize(env, base, kind: str, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance,
               batch: int = 1):
    """``len(prompts) × C×H×W`` images ``base`` generates from ``prompts`` with ``seeds``, ``steps`` sampling steps
    and ``guidance`` (None: the model's default), cached in ``leave-k-out/queries`` under ``kind`` (``"queries"``,
    or ``"regime-queries"``): the same for every benchmark with the same base model, captions and sampler.
    ``batch`` images are sampled in one call (each from its own seed, so only floating-point summation order depends
    on it; a benchmark's queries keep 1, the regime check's samples take more)."""
    import torch

    steps = int(steps)
    gkw = {} if guidance is None else {"guidance_scale": float(guidance)}

    def make():
        with torch.no_grad():
            imgs = [img for i in range(0, len(prompts), batch)
                    for img in base.generate(list(prompts[i:i + batch]), list(seeds[i:i + batch]), steps=steps,
                                             **gkw)]
        return {"images": torch.stack(imgs).float().cpu()}

    key = env.cache.key("leave-k-out", "1", kind, base.fingerprint, list(prompts), list(seeds), steps, guidance)
    return env.cache.tensors("leave-k-out/queries", key, make)["images"]


def regime_samples(env, base, picked: Sequence[tuple[str, str]], steps: int, guidance):
    """The regime check's own samples of ``base``: one per picked held-out caption (:func:`pick_captions` with
    namespace ``"regime"``), seeds from ``(run seed, "regime/query", j)``, sampled 50 at a time and cached."""
    prompts = [c for _, c in picked]
    seeds = [int(derive(env.seed, "regime/query", j)) for j in range(len(prompts))]
    return synthesize(env, base, "regime-queries", prompts, seeds, steps, guidance, batch=50)


def warn_if_copying(check: dict, who: str, model: str) -> None:
    """A warning naming the figures when ``check`` (:func:`genattr.harness.regime.regime_check`) failed."""
    from genattr.harness import progress
    from genattr.harness.regime import describe

    if check.get("passed") is False:
        progress.warn(f"genattr.benchmarks.{who}",
                      f"{who}: {model} copies its training images ({describe(check)}; a generalising model has a "
                      "near-copy share whose 95 % interval reaches 10 % and a ratio ≥ 0.9): pixel similarity is "
                      "then closer to optimal attribution than on real models")


def check_base_model(env, base, dataset, who: str, scale: str | None, steps: int, guidance=None) -> dict:
    """The regime check (:mod:`genattr.harness.regime`) of a base model trained on all of ``dataset``, for a
    benchmark whose queries are not θ0's own samples (the Customized Model's base model): the samples
    and held-out reals are what a counterfactual benchmark with the same base model, data and sampler judges (the
    same captions, seeds and cache entries). Needs a dataset with ``heldout(n, count)`` and
    ``heldout_images(n, count)`` (the built-in ``shapes``); otherwise the check is recorded as not run, with the
    reason."""
    from genattr.harness import progress
    from genattr.harness.regime import cached_regime_check

    n = len(dataset)
    own = getattr(dataset, "heldout_images", None)
    if not (callable(own) and callable(getattr(dataset, "heldout", None))):
        return {"passed": None, "reason": f"dataset {getattr(dataset, 'name', '?')!r} has no held-out images "
                                          "(heldout / heldout_images) to compare with"}
    count = regime_count(scale)
    with progress.stage(f"setup {who}: regime check of the base model"):
        picked = pick_captions(dataset, n, count, int(env.seed), "regime")
        samples = regime_samples(env, base, picked, steps, guidance)
        held = own(n, REGIME_HELDOUT).float()
        check = cached_regime_check(env.cache, base, dataset, list(samples), held, seed=int(env.seed))
    warn_if_copying(check, who, "the base model")
    return check


def derive(*keys) -> int:
    from genattr.harness.seeding import derive_seed

    return derive_seed(*keys) % (2**31 - 1)


def preset_config(bench: str, scale: str, overrides: dict, scales: dict, common: dict) -> dict:
    """A deep copy of ``common`` updated with the scale's preset (:func:`genattr.presets.resolve`), after checking
    the scale, every override's name and the values of the boolean options (one-line :class:`UserError` naming
    ``bench`` otherwise). The overrides themselves are applied by :func:`apply_overrides`."""
    from genattr.presets import check_names, check_values, flag_specs, resolve

    cfg = resolve(bench, scale, {}, presets=scales, common=common)
    check_names(bench, overrides, cfg.keys())
    check_values(bench, overrides, flag_specs(common, *scales.values()))
    return cfg


#: The base model θ0 of the counterfactual benchmarks, by name: the dataset, its size and the model's recipe and
#: plan. Leave-K-out, LDS and teacher agreement each take the entry of their scale, so at one scale they train —
#: and find in the cache, whose key is the dataset's fingerprint, the model configuration and the plan — one θ0.
THETA0: dict[str, dict] = {
    # the latent miniature (the ``diffusers`` model's own recipe of the scale, on ``shapes`` with held-out
    # combinations: its N, its VAE, its steps); the pixel-space ``tiny-t2i`` on digits stays available with
    # ``model="tiny-t2i", dataset="digits", n=48``. ``small`` stays the pixel-space digits θ0 the main job's budget
    # was sized for: the latent one trains several times longer per model (docs/results/2026-12-latent-testbed.md,
    # "What it costs").
    "tiny": {"dataset": "shapes", "dataset_config": {}, "n": None, "model": "diffusers", "recipe": "tiny",
             "model_config": None, "train_config": None, "query_steps": 10},
    "small": {"dataset": "digits", "dataset_config": {"resolution": 8}, "n": 300, "model": "tiny-t2i",
              "recipe": "small", "model_config": None, "train_config": {"steps": 400}, "query_steps": 50},
    "paper": {"dataset": "mscoco",
              "dataset_config": {"root": None, "split": "train2017", "annotations": None, "resolution": 128,
                                 "latents": None, "query_split": "val2017", "query_annotations": None},
              "n": None, "model": "diffusers", "recipe": "paper",  # the unlearning paper's COCO latent diffusion
              "model_config": None, "train_config": None, "query_steps": 1000, "guidance_scale": 7.5},
}


def theta0(scale: str, **own) -> dict:
    """The scale's preset of a counterfactual benchmark: the shared :data:`THETA0` entry plus the benchmark's
    ``own`` options (deep-copied, so benchmarks never share a mutable value)."""
    import copy

    return {**copy.deepcopy(THETA0[scale]), **own}


def apply_overrides(cfg: dict, overrides: dict, preset_model) -> dict:
    """``cfg`` with ``overrides`` applied: a ``dataset_config`` dict adjusts the preset's (unless the dataset or the
    model is replaced); a ``model_config`` / ``train_config`` dict adjusts the preset's recipe while the model stays
    ``preset_model`` (another model: replaced, and given with ``model_config`` or ``train_config`` but no ``recipe``,
    the recipe is dropped); every other value replaces the preset's.

    The preset's data and training settings belong to its dataset and model: another ``dataset`` drops the preset's
    ``dataset_config`` and ``n``; another ``model`` also drops its ``model_config`` and ``train_config`` — each unless
    given — so the new model's own recipe sizes the data and the training (the ``small`` preset's 300 digits at
    8 px and 400 steps never reach another model silently)."""
    replaced = "model" in overrides and overrides["model"] != preset_model
    new_data = "dataset" in overrides and overrides["dataset"] != cfg["dataset"]
    for key, value in overrides.items():
        if key == "dataset_config" and isinstance(value, dict) and not (replaced or new_data):
            cfg[key] = {**(cfg[key] or {}), **value}
        elif key in ("model_config", "train_config") and isinstance(value, dict) and isinstance(cfg[key], dict) \
                and not replaced:
            cfg[key] = {**cfg[key], **value}  # adjust the preset's recipe (another model: replace it)
        else:
            cfg[key] = value
    dropped = (("dataset_config", "n") if replaced or new_data else ()) + (
        ("model_config", "train_config") if replaced else ())
    for key in dropped:
        if key not in overrides:
            cfg[key] = None
    if replaced and "recipe" not in overrides and {"model_config", "train_config"} & set(overrides):
        cfg["recipe"] = None  # another model with its own configuration: the preset's recipe scale does not apply
    return cfg
