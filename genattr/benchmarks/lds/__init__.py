"""The linear datamodeling score (LDS) benchmark (PAPER_NOTES §5–6; Park et al. 2023 "TRAK"; for diffusion D-TRAK,
Zheng et al. ICLR 2024).

Leave-K-out retrains once per (method, query, K). LDS trains a fixed family of subset models **once** and then
scores any number of methods and queries without further training.

Protocol
--------
1. θ0 is trained on the N training items and the queries are synthesized by θ0 from held-out captions exactly as in
   leave-K-out (:mod:`genattr.benchmarks._counterfactual`: same cache entries, so both benchmarks share θ0, the
   queries and the methods' cached scores). ``num_real_queries`` adds held-out **real** images as queries: the
   dataset's items after the training set (the dataset built with size ``n + num_real_queries``; items already in
   the training set are skipped), each with one of its captions (``numpy_rng(run seed, "lds/real-caption", j)``).
2. **Subsets.** ``S_j`` for ``j = 0 … M−1`` (``subsets`` = M) is
   ``sorted(numpy_rng(run seed, "lds/subset", j).choice(N, ⌊β·N⌋, replace=False))`` — training indices, a function
   of the run seed, j, N and β only (a larger M keeps the first subsets, and so their trained models).
3. **Subset models.** One model per subset and training seed, trained with θ0's recipe through the model cache
   (:func:`genattr.harness.models.load_or_train`, via ``Counterfactual._train``); the key depends on the
   subset, the recipe, the seed and the retraining mode — never on a method or a query — so every method, query and
   run shares them. ``retrain`` (:data:`RETRAIN_MODES`): ``independent`` (default, the standard: train from scratch
   on the subset) or ``coupled`` (θ0's batch sequence over the full set with the items outside the subset weighted
   0, as leave-K-out's ``coupled``). Training seed ``r = 0`` is the run's training seed (θ0's); seed ``r ≥ 1`` is
   ``derive_seed(train seed, "lds/seed", r)``, which for an adapter whose constructor takes ``seed`` (tiny-t2i) also
   re-seeds the initialisation. ``train_seeds`` (R) seeds per subset are trained and their outputs averaged.
4. **Model output.** ``f(z; θ_S)`` = the diffusion loss of query z under θ_S: the mean over the strided timesteps
   ``t = 0, s, 2s, …`` (``loss_stride`` s) of :func:`~genattr.harness.counterfactual.query_loss`, whose
   noise for timestep t is ``item_noise(run seed, "query:<id>", 0, t)`` — the same timesteps and noise for every
   model (as D-TRAK). Outputs are cached per (subset model, queries, stride, seed).
5. **Prediction and score.** ``g(z, S) = Σ_{i∈S} τ(z, i)`` from the method's scores at θ0 (higher = more helpful).
   A subset full of helpful items should give a *low* loss, so
   ``LDS(z) = Spearman((g(z, S_j))_j, (−f(z; θ_{S_j}))_j)`` (the registered metric ``lds``,
   the registered metric ``lds``): higher is better, random scores give 0 in expectation. The benchmark reports
   the mean over queries ± standard error.
6. **Ceiling** (``ceiling = true``): models are also trained with a second seed (seed r = 1; free when
   ``train_seeds ≥ 2``), and per query the Spearman correlation over the M subsets between the two seeds' outputs is
   recorded (provenance ``ceiling``; each row's ``extra.ceiling``): ρ, the reliability of one training run's outputs.
   ρ itself is not the upper bound of LDS: under the classical model (output = expected output + independent seed
   noise) the best possible prediction, the expected output, correlates √ρ with one seed's outputs (Spearman's
   correction for attenuation), and √(Rρ/(1+(R−1)ρ)) with R averaged seeds (Spearman-Brown). The provenance's
   ``ceiling.bound`` and :meth:`LDSBenchmark.summarize` report that bound beside ρ.

Cells are ``method × query`` (``id = "<method>/q<jjj>"`` for generated, ``"<method>/r<jjj>"`` for real queries;
``params = {"query": id, "source": "generated" | "real"}``; ``group = {"source": ...}``). ``group`` (``method``,
default): a method's cells are one task whose queries are scored in one ``attribute`` call; ``query``: one task per
cell (spreads an expensive method's queries over a cluster's workers). Scores are cached per (method, config, θ0,
query) — shared with leave-K-out — so a resumed run re-scores nothing. Rows carry ``extra``: the query, this query's
``predictions`` g(S_j) and ``outputs`` f(θ_{S_j}) (LDS can be recomputed from the row alone), ``ceiling``, M, N, β.

Configuration keys (``get_benchmark("lds", **config)``; unspecified keys come from the scale preset): ``scale``,
``dataset``, ``dataset_config``, ``n``, ``model``, ``recipe``, ``model_config``, ``train_config``, ``train_seed``,
``num_queries``, ``query_steps``, ``guidance_scale``, ``loss_stride`` (as leave-K-out), ``num_real_queries``,
``subsets`` (M), ``beta`` (β), ``train_seeds`` (R), ``ceiling``, ``retrain``, ``metrics`` (datamodeling metrics
through the metric registry: names or ``{name = ..., options}``; default ``lds``), ``group``.

Setup trains every subset model the cache lacks; in several processes sharing one cache (a cluster's workers) each
process visits the subset models in its own order (seeded by host and process id) and looks in the cache again
before training one, so the trainings spread over the workers; two workers can still train the same model at the
same moment (there is no lock; the second copy is discarded).

Deviations from D-TRAK / TRAK at the built-in scales: tiny models and datasets (N = 48 / 300), fewer subsets
(M = 6 / 32 instead of 64) and one training seed per subset instead of three; subset models train the same number
of steps as θ0 (so an ``independent`` subset model sees each of its items 1/β times as often); the queries are images
generated by θ0 (D-TRAK scores held-out real samples; ``num_real_queries`` adds those); a constant prediction or
output vector gets LDS 0 (scipy's Spearman gives NaN).

Layout: :mod:`.config` (name, version, presets, validation, metric columns), :mod:`.subsets` (the subset draw, seeds,
query digests, the attenuation bound), :mod:`.benchmark` (:class:`LDSState`, :class:`LDSBenchmark`).
"""

from .._counterfactual import RETRAIN_MODES, Counterfactual, CounterfactualState
from .benchmark import LDSBenchmark, LDSState
from .config import (
    BOUND_ROW, CEILING_ROW, COMMON, DEFAULT_METRICS, GROUPS, METRIC_KIND, NAME, PAPER_BETA, PAPER_SEEDS, PAPER_SUBSETS,
    SCALES, VERSION, _validate, resolve_metrics,
)
from .subsets import _spearman, attenuation_bound, draw_subsets, query_digest, seed_for, subset_size

__all__ = [
    "LDSBenchmark", "LDSState", "BOUND_ROW", "CEILING_ROW", "COMMON", "DEFAULT_METRICS", "GROUPS", "METRIC_KIND",
    "NAME", "PAPER_BETA", "PAPER_SEEDS", "PAPER_SUBSETS", "SCALES", "VERSION", "resolve_metrics", "attenuation_bound",
    "draw_subsets", "query_digest", "seed_for", "subset_size", "RETRAIN_MODES", "Counterfactual", "CounterfactualState",
    "_spearman", "_validate",
]
