"""The Customized Model benchmark (AbC; Wang et al., ICCV 2023), the first protocol of the unlearning paper.

A test case is a model customized from a base text-to-image model on a few **exemplar** images of a new concept
(token ``<v*>``). Queries are images that customized model synthesizes; an attribution method ranks a retrieval
pool that contains the exemplars, and the exemplars are the positives. Metrics per query: Recall@5/10/100 and AP
(mean over queries = mAP), summarised per split — ``object-centric`` and ``artist-style`` — as mean ± standard
error over queries.

Two data sources:

* **built-in miniature** (``scale`` ``tiny`` / ``small``, no ``data_root``): a base model (option ``model``, any
  registered model with the ``trainable`` and ``customizable`` capabilities, default ``tiny-t2i``) trained on a
  registered dataset (option ``dataset``, default ``shapes``; the model's own ``recipe(scale, dataset)``, through
  the host's model cache); concepts from the ``concepts``
  function of a registered dataset's class (option ``concepts``; default: the dataset's own, else ``shapes``, whose
  ``make_concepts(split="test")`` gives — object-centric (one exemplar: a
  novel glyph object) and artist-style (several exemplars: a novel rendering style over ordinary scenes); each
  customized with its ``<v*>`` token (the recipe's ``customize`` plan); queries synthesized from each concept's prompt
  templates. Training concepts (``make_concepts(split="train")``), customized the same way, are offered to methods
  that learn as ``ctx.extra["training_concepts"]`` (built lazily, on first access); test concepts are never shown.
  The base model's regime check (:mod:`genattr.harness.regime`, as the counterfactual benchmarks check θ0) is
  recorded in the provenance (``regime``).
* **the public AbC layout** (``data_root=...``, scale ``paper``): ``dataset/json/test_*.json`` through
  ``genattr.datasets.abc``; queries are the benchmark's synthesized images, the pool a LAION subset; customized
  models are Custom-Diffusion deltas over Stable Diffusion v1.4 in ``weights_dir``, applied with the base model's
  ``apply_delta`` (the base model: ``base_model``, a directory loaded by the registered model ``model`` —
  ``diffusers`` by default — or by the model its ``genattr_model.json`` names). Models without weights are listed in the provenance
  and their cells are not enumerated for methods with ``needs_model=True`` (model-free methods still run).

Pools. AbC ranks the base set plus the customized model's **own** exemplars: that is the headline variant (metric
columns ``recall@10``, ``recall@5``, ``recall@100``, ``ap`` — the retrieval metrics of option ``metrics``, resolved
through the metric registry, each reporting under its ``column``). The harder variant ranks the pool with **all** test
concepts' exemplars (other concepts' exemplars are distractors; columns with the suffix ``/all``). Both come from
one attribution: the method sees the ``all`` pool as its training set (``ctx.train_set``) and the ``own`` scores
are the same score vector restricted to the base items plus the concept's exemplars. For methods whose scores of
one item depend on which other items are in the pool (a Fisher estimated over the pool, N in a Newton step) this
is an approximation of running on the smaller pool; the difference is a handful of items out of hundreds.
Exemplars are scored with the captions they were customized with (including ``<v*>``).

Verification. Before any measurement, ``setup`` checks that every customized model reproduces its concept. The
built-in concepts know the scene behind each query prompt: the *render* check draws that scene as every concept of
the split would show it and as plain base data, and counts a query for its concept when its own rendering is the
nearest (pixel MSE); a concept passes when more of its queries land on it than chance (1 / (concepts + 1)). Also
recorded (and used as the verdict where no scenes are known): the concept (of the split) whose exemplars each query
is most similar to, in flattened pixels (cosine, max over a horizontal flip) and in a layout-free style descriptor
(the Gram matrix of 3×3 pixel patches, plus channel means), against chance 1 / concepts; and the similarity lift
of the customized samples over the base model's samples for the same prompts without ``<v*>``. Figures and verdicts go to the
provenance and to every row's ``extra``; a failure is a loud warning (``verify="error"`` raises instead,
``verify="off"`` skips the check).

Layout: :mod:`.config` (defaults, validation, columns), :mod:`.cases` (cases and how the built-in miniature builds
them), :mod:`.pools` (pools and per-query metric columns), :mod:`.verification`, :mod:`.abc_data` (the public AbC
layout), :mod:`.calibration`, :mod:`.benchmark` (the class).
"""

from .benchmark import CustomizedModelBenchmark
from .calibration import _calibration_rng, calibrate
from .cases import BuiltinData, ConceptCase, LazyExtra, State, synthesize
from .config import DEFAULT_METRICS, POOLS, SPLIT_ORDER, SPLITS, benchmark_config, mean_se, metric_columns
from .pools import assemble_pool, base_pool, pool_name, resolve_metrics, score_pools
from .verification import pixel_features, style_features, verify_cases

__all__ = [
    "CustomizedModelBenchmark", "calibrate", "BuiltinData", "ConceptCase", "LazyExtra", "State", "synthesize",
    "DEFAULT_METRICS", "POOLS", "SPLIT_ORDER", "SPLITS", "benchmark_config", "mean_se", "metric_columns",
    "assemble_pool", "base_pool", "pool_name", "resolve_metrics", "score_pools", "pixel_features", "style_features",
    "verify_cases", "_calibration_rng",
]
