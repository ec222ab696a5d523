"""Image (and text) encoders shared by the feature-similarity methods and the ΔG-similarity metric.

``get_encoder(spec, cache=None, device="cpu", dataset=None, **options) -> Encoder``

Specs
-----
``builtin:digits`` / ``builtin:shapes``
    A small CNN trained (seeded, deterministic, well under a minute on a CPU) on the built-in dataset, its
    penultimate layer as the embedding — the offline stand-in for CLIP / DINO. Targets: the digit label
    (``Digits.labels``) for digits, the scene specification (``Shapes.specs``: every categorical field of every
    object, and each object's conjunction of them, as a multi-hot target) for shapes; a dataset with neither is
    trained on the bag of words of its captions. The weights are cached (safetensors) under the dataset's
    fingerprint. ``dataset`` (a ``Digits``/``Shapes`` instance or any dataset with ``labels``/``specs`` whose name
    starts with the encoder's kind, e.g. ``shapes…`` for ``builtin:shapes``) selects the training data; without it,
    or with a dataset of another kind, the default built-in dataset is used (``dataset_options`` are passed to its
    constructor). Options: ``dim`` (128), ``steps`` (400), ``batch_size`` (128), ``lr`` (3e-3), ``seed`` (0).
``clip:<hub id or local dir>``
    ``transformers.CLIPModel`` projected image features (``get_image_features``) and text features
    (``get_text_features``). Default ``openai/clip-vit-base-patch32`` (the paper's CLIP ViT-B/32).
``dino:<hub id or local dir>``
    ``transformers.ViTModel`` CLS token of the last hidden state (after the final layer norm). Default
    ``facebook/dino-vitb16``.
``dinov2:<hub id or local dir>``
    ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (whichever the config names) CLS token. Default
    ``facebook/dinov2-with-registers-large`` (the paper's DINOv2 ViT-L/14 with registers).
``pixels[:R]``
    Raw pixels resized to ``R×R`` (default 16), flattened: a trivial encoder with no weights (used in tests and as
    a sanity floor).

A bare ``clip`` / ``dino`` / ``dinov2`` means the default model; how the Hugging Face models are loaded and how
images are preprocessed for them: :mod:`.hf`.

Layout: :mod:`.base` (the :class:`Encoder` interface, described there, and ``pixels``), :mod:`.builtin` (the small
CNN and its training), :mod:`.hf` (CLIP / DINO / DINOv2); this module parses specs and builds encoders, memoised per
process (same spec, options, device and dataset → the same object).

transformers and torch are imported lazily.
"""

from __future__ import annotations

from collections import OrderedDict

from genattr.harness.errors import UserError

from .base import ENCODER_VERSION, Encoder, PixelEncoder, _sha, single_thread
from .builtin import (
    BUILTIN_DATASETS,
    BuiltinEncoder,
    _builtin_encoder,
    train_builtin_encoder,
    training_targets,
)
from .hf import CLIP_MEAN, CLIP_STD, DEFAULT_MODELS, IMAGENET_MEAN, IMAGENET_STD, HFImageEncoder

__all__ = [
    "BUILTIN_DATASETS", "CLIP_MEAN", "CLIP_STD", "DEFAULT_MODELS", "ENCODER_VERSION", "IMAGENET_MEAN", "IMAGENET_STD",
    "BuiltinEncoder", "Encoder", "HFImageEncoder", "PixelEncoder", "get_encoder", "parse_spec", "single_thread",
    "train_builtin_encoder", "training_targets",
]

_MEMO: "OrderedDict[str, Encoder]" = OrderedDict()
_MEMO_SIZE = 4


def parse_spec(spec: str) -> tuple[str, str]:
    """``"clip:openai/clip-vit-base-patch32"`` → ``("clip", "openai/clip-vit-base-patch32")``; a bare family name
    gets its default model."""
    spec = str(spec).strip()
    kind, sep, ref = spec.partition(":")
    kind = kind.strip().lower()
    ref = ref.strip()
    if kind in DEFAULT_MODELS:
        return kind, ref or DEFAULT_MODELS[kind]
    if kind == "builtin":
        if ref not in BUILTIN_DATASETS:
            raise UserError(f"unknown built-in encoder {spec!r}; use one of "
                            + ", ".join(f"builtin:{d}" for d in BUILTIN_DATASETS))
        return kind, ref
    if kind == "pixels":
        try:
            r = int(ref or 16)
        except ValueError:
            raise UserError(f"bad encoder spec {spec!r}: pixels:<resolution> needs an integer") from None
        return kind, str(r)
    raise UserError(f"unknown encoder spec {spec!r}; use builtin:digits, builtin:shapes, clip[:<hub id or dir>], "
                    "dino[:<id or dir>], dinov2[:<id or dir>] or pixels[:<resolution>]")


def get_encoder(spec: str, cache=None, device: str = "cpu", dataset=None, **options) -> Encoder:
    """The encoder named by ``spec`` (see the module docstring). ``cache``: a :class:`~genattr.harness.cache.Cache`
    for trained built-in encoders (default: the user cache); ``dataset``: training data for ``builtin:*`` (ignored
    by the others); ``options``: ``setting`` (the configuration key named in errors, e.g. ``"clip.model"``),
    ``batch_size``, ``dtype`` for transformers encoders; ``dim``, ``steps``, ``batch_size``, ``lr``, ``seed``,
    ``dataset_options`` for built-in ones; ``channels`` for ``pixels``."""
    kind, ref = parse_spec(spec)
    if kind == "builtin" and dataset is not None and not str(getattr(dataset, "name", "")).lower().startswith(ref):
        # builtin:shapes trains on shapes: another dataset (digits, say) is not its training data, so the default
        # dataset of that kind is used (the encoder is then the same one other benchmarks build)
        dataset = None
    ds_key = None
    if kind == "builtin" and dataset is not None and (hasattr(dataset, "labels") or hasattr(dataset, "specs")):
        ds_key = dataset.fingerprint
    root = str(getattr(cache, "root", "")) if cache is not None else ""
    memo_key = _sha([kind, ref, device, options, ds_key, root if kind == "builtin" else ""])
    if memo_key in _MEMO:
        _MEMO.move_to_end(memo_key)
        return _MEMO[memo_key]
    if kind == "builtin":
        enc: Encoder = _builtin_encoder(ref, cache, device, dataset, dict(options))
    elif kind == "pixels":
        unknown = set(options) - {"channels", "setting"}
        if unknown:
            raise UserError(f"pixels encoder: unknown option(s) {sorted(unknown)}")
        enc = PixelEncoder(int(ref), int(options.get("channels", 3)))
    else:
        unknown = set(options) - {"setting", "batch_size", "dtype"}
        if unknown:
            raise UserError(f"{kind} encoder: unknown option(s) {sorted(unknown)}; known: batch_size, dtype, setting")
        enc = HFImageEncoder(kind, ref, device=device, **options)
    _MEMO[memo_key] = enc
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return enc
