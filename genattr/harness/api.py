"""Component protocols: the public contract between the host and its plugins.

Every component has a ``name`` and a ``version`` (a string; bump it whenever the component's output for the same
inputs changes, because caches and result files are keyed on it).

Conventions used throughout genattr
-----------------------------------
* Images are float32 tensors, channels first (``C×H×W`` or ``B×C×H×W``), values in ``[-1, 1]``.
* Masks are float tensors ``H×W`` (or ``B×H×W``) in ``{0, 1}``; 1 marks the pixels that count.
* Timesteps are integer DDPM indices in ``0 … num_train_timesteps − 1`` (1000 steps unless a model says otherwise).
* Losses are the DDPM noise-prediction loss ``‖ε − ε_θ(x_t, t, c)‖²`` *averaged* over the latent's elements
  (channels × height × width, or over the masked elements when a mask is given), one value per example.
* Attribution scores are ``numpy.ndarray`` of dtype float, shape ``(queries, training items)`` in the order of
  the training set (or of ``candidates`` when given); **higher = more influential**.
* All randomness derives from the run seed and a stable key (``genattr.harness.seeding``), never from batch
  positions, so results do not depend on batch sizes.

Heavy libraries (torch, diffusers) are only imported for type checking here: importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from .cache import Cache

#: Parameter selections every model adapter supports (Stable Diffusion / diffusers naming).
#: ``cross-attn-kv``: ``attn2.to_k`` and ``attn2.to_v`` weights (the paper's default);
#: ``cross-attn``: every ``attn2`` weight; ``attn``: every ``attn1`` and ``attn2`` weight; ``full``: the whole UNet.
PARAMETER_SELECTIONS = ("cross-attn-kv", "cross-attn", "attn", "full")

#: Scales of every built-in benchmark and preset (see DESIGN.md).
SCALES = ("tiny", "small", "paper")


@dataclass(frozen=True)
class Example:
    """One training (or pool) item.

    ``id``: a stable string id (unique within its dataset, unchanged by ``subset``).
    ``image``: float32 tensor ``C×H×W`` in ``[-1, 1]``.
    ``captions``: one or more captions (COCO has five per image); never empty.
    """

    id: str
    image: "torch.Tensor"
    captions: tuple[str, ...]


@dataclass
class Query:
    """A synthesized image to attribute.

    ``image``: ``C×H×W`` in ``[-1, 1]`` at the model's pixel resolution; ``prompt``: the text it was generated
    from; ``mask``: optional ``H×W`` {0, 1} region (spatially-localised attribution — only the masked pixels
    count in the query loss); ``meta``: free JSON-able information (seed, concept, …).
    """

    id: str
    image: "torch.Tensor"
    prompt: str
    mask: "torch.Tensor | None" = None
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Dataset(Protocol):
    """A captioned image dataset.

    ``item(i)`` returns the i-th :class:`Example`; ``ids`` lists every id in order; ``fingerprint`` is a sha256
    hex digest over ids, captions and image content (it changes when any of them changes, and only then);
    ``subset(ids)`` returns a dataset with just those ids (order of ``ids``), keeping the ids.
    ``resolution`` and ``channels`` describe the images. ``images(indices)`` returns a ``B×C×H×W`` batch.
    """

    name: str
    version: str
    resolution: int
    channels: int

    def __len__(self) -> int: ...

    def item(self, i: int) -> Example: ...

    @property
    def ids(self) -> list[str]: ...

    @property
    def fingerprint(self) -> str: ...

    def subset(self, ids: Sequence[str]) -> "Dataset": ...

    def images(self, indices: Sequence[int]) -> "torch.Tensor": ...

    def captions(self, i: int) -> tuple[str, ...]: ...


@runtime_checkable
class T2IModel(Protocol):
    """A text-to-image diffusion model adapter (ε-prediction DDPM).

    Attributes: ``resolution``/``channels`` of the pixel images it takes and generates; ``unet`` (a diffusers
    ``UNet2DConditionModel``, module names as in Stable Diffusion); ``scheduler`` (a diffusers ``DDPMScheduler``);
    ``num_train_timesteps``; ``fingerprint`` (sha256 over config and weights).

    * ``latents(images)`` — pixels → the space diffusion runs in (identity for pixel-space models; VAE mean ×
      ``scaling_factor`` for latent diffusion). Shape ``B×c×h×w``.
    * ``text_embeddings(captions)`` — ``B×L×D`` encoder hidden states.
    * ``denoise_loss(latents, text_emb, timesteps, noise, mask=None, params=None, target="loss")`` — per-example
      values ``B``: ``target="loss"`` the mean of ``(ε − ε_θ(x_t, t, c))²``; ``target="eps-sq-norm"`` the mean of
      ``ε_θ(x_t, t, c)²`` (D-TRAK's output function). ``params`` optionally overrides UNet tensors by name
      (``torch.func.functional_call``), which is how per-sample gradients are taken (``vmap(grad(...))``).
      ``mask`` (``B×H×W`` in pixels) is resized to the latent size and the mean runs over masked elements only.
    * ``loss(images, captions, timesteps, noise, mask=None)`` — the same from pixels and strings.
    * ``generate(prompts, seeds, steps)`` — images ``B×C×H×W`` in ``[-1, 1]``; each image's initial noise and
      sampler noise derive from its own seed only (batch-independent).
    * ``parameters(selection)`` — ``{diffusers name: nn.Parameter}`` for one of :data:`PARAMETER_SELECTIONS`.
    * ``train(dataset, config)``, ``customize(exemplars, token, config) -> T2IModel`` (a new model),
      ``save(path)``, ``load(path)`` (classmethod) with safetensors.
    """

    name: str
    version: str
    resolution: int
    channels: int
    num_train_timesteps: int

    @property
    def fingerprint(self) -> str: ...

    def latents(self, images: "torch.Tensor") -> "torch.Tensor": ...

    def text_embeddings(self, captions: Sequence[str]) -> "torch.Tensor": ...

    def denoise_loss(
        self,
        latents: "torch.Tensor",
        text_emb: "torch.Tensor",
        timesteps: "torch.Tensor",
        noise: "torch.Tensor",
        mask: "torch.Tensor | None" = None,
        params: "Mapping[str, torch.Tensor] | None" = None,
        target: str = "loss",
    ) -> "torch.Tensor": ...

    def loss(
        self,
        images: "torch.Tensor",
        captions: Sequence[str],
        timesteps: "torch.Tensor",
        noise: "torch.Tensor",
        mask: "torch.Tensor | None" = None,
    ) -> "torch.Tensor": ...

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], steps: int = 50) -> "torch.Tensor": ...

    def parameters(self, selection: str = "cross-attn-kv") -> "dict[str, torch.nn.Parameter]": ...

    def train(self, dataset: Dataset, config: Mapping[str, Any]) -> dict: ...

    def customize(self, exemplars: Sequence[Example], token: str, config: Mapping[str, Any]) -> "T2IModel": ...

    def save(self, path: str) -> None: ...


@dataclass
class AttributionContext:
    """What a method sees: the model that generated the queries, its training set (the retrieval pool), a cache,
    the device, the run seed, the scale, whether to show progress bars, and ``extra`` information a benchmark may
    offer (for example ``training_concepts`` for methods that learn, never test data)."""

    model: "T2IModel | None"
    train_set: Dataset
    cache: "Cache"
    device: str = "cpu"
    seed: int = 0
    scale: str = "tiny"
    progress: bool = False
    extra: dict = field(default_factory=dict)


@runtime_checkable
class AttributionMethod(Protocol):
    """An attribution method.

    ``prepare(ctx)`` computes (and caches through ``ctx.cache``) anything that does not depend on the queries
    (θ0 training losses, the Fisher diagonal, training-set features). ``attribute(ctx, queries, candidates=None)``
    returns float scores ``(len(queries), N)`` — or ``(len(queries), len(candidates))`` when a candidate subset of
    training indices is given — higher = more influential. ``needs_model`` is False for model-free methods
    (pixel, feature similarity), which then also work where no model weights exist. ``config`` is the resolved
    configuration (recorded in every result row and hashed into its ``config_hash``).

    Optional: ``resolve_config(scale, preset_hint=None) -> dict`` — the configuration the method will run with at
    ``scale`` for a benchmark whose :attr:`Benchmark.preset_hint` is ``preset_hint`` (for example ``"customized"``
    for the Customized Model benchmark, whose protocol the paper ran with other hyperparameters). The runner calls
    it once per (benchmark, method) on a fresh instance before the first cell, records and hashes what it returns,
    and workers call it again before their cells; it must set ``config`` to the value it returns. Methods whose
    configuration does not depend on the scale need not define it. A benchmark also offers its hint to the method
    as ``ctx.extra["preset_hint"]``. A method whose ``resolve_config`` also takes a ``model`` keyword is given the
    registered name of the model the benchmark scores with (:attr:`Benchmark.preset_model`, also offered as
    ``ctx.extra["preset_model"]``), so it can apply values calibrated for that model (unlearning's α on the
    ``diffusers`` miniature); :func:`resolve_method_config` is the call every caller makes.

    Optional: ``required_extra(config) -> Sequence[str]`` — the ``ctx.extra`` keys the method cannot run without
    under the resolved ``config`` (abc-clip without a mappers file: ``"training_concepts"``). The runner checks
    them against each benchmark's ``provides_extra`` before any cell runs, so a pairing that cannot work fails
    at once instead of after the other methods' cells.

    Optional: ``check_benchmark(benchmark, benchmark_config, config) -> None`` — raise a
    :class:`~genattr.harness.errors.UserError` when the method under its resolved ``config`` cannot run on the
    benchmark named ``benchmark`` with the resolved ``benchmark_config`` (abc-clip with a mappers file trained on
    another built-in backbone than the benchmark's dataset selects). Called with ``required_extra``, before any
    cell runs; it must be cheap (no model, no dataset).
    """

    name: str
    version: str
    needs_model: bool
    config: dict

    def prepare(self, ctx: AttributionContext) -> None: ...

    def attribute(
        self, ctx: AttributionContext, queries: Sequence[Query], candidates: "Sequence[int] | None" = None
    ) -> "np.ndarray": ...


@runtime_checkable
class Metric(Protocol):
    """A metric. ``kind`` is ``"retrieval"`` — ``metric(scores, positives) -> float`` with ``scores`` a float
    array over the pool and ``positives`` the pool indices of the true sources — or ``"counterfactual"`` —
    ``metric(base_model, retrained_model, query, **options) -> float``. ``higher_is_better`` says which way is good."""

    name: str
    version: str
    kind: str
    higher_is_better: bool

    def __call__(self, *args: Any, **kwargs: Any) -> float: ...


@dataclass(frozen=True)
class Cell:
    """One unit of benchmark work, small enough to run on one worker.

    ``id`` is stable across runs (for example ``"unlearning/style-stripes/q03"``) and unique within a benchmark
    run; ``method`` the method's registered name; ``params`` JSON-able (concept, query index, K, …);
    ``group`` the JSON-able keys the leaderboard groups by (for example ``{"split": "artist-style"}`` or
    ``{"K": 8}``); ``batch`` (optional) a key shared by cells that are cheaper together: the runner sends the
    unfinished cells of one (method, batch) as one task, and a benchmark with ``run_cells`` scores their queries in
    one ``attribute`` call. Rows, resume and ids stay per cell."""

    id: str
    method: str
    params: dict = field(default_factory=dict)
    group: dict = field(default_factory=dict)
    batch: str | None = None


@dataclass
class RunEnv:
    """The environment a benchmark runs in: cache, device, seed, scale, progress bars, the methods' resolved
    configurations (``{method name: config dict}``) and the run directory ``out`` (where pictures of attributions
    go, see :mod:`genattr.harness.media`; None outside a run)."""

    cache: "Cache"
    device: str = "cpu"
    seed: int = 0
    scale: str = "tiny"
    progress: bool = False
    method_configs: dict = field(default_factory=dict)
    out: str | None = None


@runtime_checkable
class Benchmark(Protocol):
    """A benchmark protocol.

    ``config`` is the resolved configuration (scale included). ``setup(env)`` builds or loads (from the cache)
    datasets, models and queries and returns provenance (``{"datasets": {name: fingerprint}, "models": {...}}``);
    ``cells(methods)`` enumerates the cells; ``run_cell(cell, method, env)`` runs one and returns its metrics
    ``{metric name: float}`` (plus optional ``"extra"`` JSON); ``metrics`` maps each reported metric column name to
    its ``higher_is_better`` bool (for example ``{"recall@10": True, "ap": True}``). Benchmarks must be
    reconstructible from ``(name, config)`` in another process (executors send cells to workers).

    Optional: ``metric_info`` — ``{column: {"metric": registered metric name, "display": label, "unit": str or
    None, "higher_is_better": bool}}``, recorded in ``run.json`` for the leaderboard (the built-in benchmarks build
    it from the metric registry entries they resolve with ``genattr.get_metric``); ``preset_hint`` — a string
    handed to every method's ``resolve_config`` (see :class:`AttributionMethod`); ``preset_model`` — the registered
    name of the model the benchmark's cells score with, handed to a ``resolve_config`` that takes ``model``;
    ``run_cells(cells, method, env)`` — a generator of ``(cell, metrics)`` for cells sharing a ``batch`` key, in any order (the runner writes
    each row as it comes); ``summarize(rows)``; ``provides_extra`` — every ``ctx.extra`` key the benchmark's
    contexts may carry (a superset: a key may still be absent for some data), checked against the methods'
    ``required_extra`` before the run (not checked when the benchmark does not declare it)."""

    name: str
    version: str
    config: dict
    metrics: dict

    def setup(self, env: RunEnv) -> dict: ...

    def cells(self, methods: Sequence[str]) -> list[Cell]: ...

    def run_cell(self, cell: Cell, method: AttributionMethod, env: RunEnv) -> dict: ...


@runtime_checkable
class Executor(Protocol):
    """Runs tasks. ``map(fn, tasks)`` calls the module-level function ``fn(task)`` for each JSON-able task dict and
    yields ``(task, result)`` pairs as they finish (any order). ``local`` runs in process; ``ray`` on a cluster.
    A task is a group of cells (see :class:`Cell` ``batch``); an executor that runs tasks in the driver's own process
    sets ``in_process = True``, and the runner then writes each cell's row as soon as it is finished instead of
    when the group ends."""

    name: str
    version: str

    def map(self, fn: Callable[[dict], Any], tasks: Iterable[dict]) -> Iterator[tuple[dict, Any]]: ...


def resolve_method_config(method: Any, scale: str, preset_hint: str | None = None, model: str | None = None):
    """``method.resolve_config(scale, preset_hint)`` — with ``model=model`` when the method's ``resolve_config``
    takes a ``model`` keyword (or ``**kwargs``), so methods written before the keyword existed keep working. None
    when the method has no ``resolve_config`` (its ``config`` does not depend on the scale)."""
    import inspect

    resolve = getattr(method, "resolve_config", None)
    if not callable(resolve):
        return None
    try:
        params = inspect.signature(resolve).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin or C callable
        params = ()
    takes_model = any(p.name == "model" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                      or p.kind == p.VAR_KEYWORD for p in params)
    return resolve(scale, preset_hint, model=model) if takes_model else resolve(scale, preset_hint)
