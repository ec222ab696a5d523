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

A bare ``clip`` / ``dino`` / ``dinov2`` means the default model. Images are converted to RGB, resized
(shortest edge, bicubic, antialiased) and centre-cropped as the model's image-processor configuration says
(``preprocessor_config.json``; the model config's ``image_size`` and the family's usual statistics when absent),
and normalised with the processor's mean / std. A local directory loads with ``local_files_only=True``; a hub id is
looked up in the local Hugging Face cache first and downloaded only when the hub is reachable. When neither works,
one :class:`~genattr.harness.errors.UserError` line names the setting to change (``setting`` option, e.g.
``clip.model``).

Encoder
-------
``name`` (the canonical spec), ``kind``, ``dim``, ``fingerprint`` (sha256 over the weights and preprocessing;
``id`` is the same), ``supports_text``, ``embed_images(images, batch_size=None)`` (``B×C×H×W`` in ``[-1, 1]`` →
``B×D`` float32 CPU tensor, rows L2-normalised) and ``embed_texts(texts, batch_size=None)`` (``len(texts)×D``,
CLIP only). Encoders are memoised per process (same spec, options, device and dataset → the same object).

transformers and torch are imported lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

from genattr.harness.errors import UserError

#: Bumped whenever an encoder's output for the same weights and inputs changes (it enters every fingerprint).
ENCODER_VERSION = "1"

DEFAULT_MODELS = {
    "clip": "openai/clip-vit-base-patch32",
    "dino": "facebook/dino-vitb16",
    "dinov2": "facebook/dinov2-with-registers-large",
}
BUILTIN_DATASETS = ("digits", "shapes")

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_MEMO: "OrderedDict[str, Encoder]" = OrderedDict()
_MEMO_SIZE = 4


# ------------------------------------------------------------------------------------------------------------------
# base class
# ------------------------------------------------------------------------------------------------------------------
class Encoder:
    """Common interface (see the module docstring)."""

    name: str = ""
    kind: str = ""
    dim: int = 0
    supports_text: bool = False
    batch_size: int = 64

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    @property
    def id(self) -> str:
        return self.fingerprint

    def _embed_batch(self, images):  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_images(self, images, batch_size: int | None = None):
        """``B×C×H×W`` images in ``[-1, 1]`` → ``B×D`` float32 CPU tensor with unit-norm rows."""
        import torch
        import torch.nn.functional as F

        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"embed_images expects B×C×H×W images, got shape {tuple(images.shape)}")
        bs = int(batch_size or self.batch_size)
        out = []
        with torch.no_grad():
            for s in range(0, images.shape[0], bs):
                e = self._embed_batch(images[s : s + bs].float())
                out.append(F.normalize(e.float().cpu(), dim=1, eps=1e-12))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None):
        raise UserError(f"encoder {self.name!r} has no text tower (use a clip:<model> encoder for text)")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"


# ------------------------------------------------------------------------------------------------------------------
# pixels
# ------------------------------------------------------------------------------------------------------------------
class PixelEncoder(Encoder):
    kind = "pixels"

    def __init__(self, resolution: int = 16, channels: int = 3):
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.name = f"pixels:{self.resolution}"
        self.dim = self.channels * self.resolution**2
        self.batch_size = 1024

    @property
    def fingerprint(self) -> str:
        return _sha({"encoder": "pixels", "v": ENCODER_VERSION, "r": self.resolution, "c": self.channels})

    def _embed_batch(self, images):
        from genattr.plugins.methods.baselines import match_format

        x = match_format(images, self.channels, self.resolution)
        return x.reshape(x.shape[0], -1)


# ------------------------------------------------------------------------------------------------------------------
# built-in CNN encoder
# ------------------------------------------------------------------------------------------------------------------
def _build_cnn(in_channels: int, dim: int, n_out: int):
    import torch.nn as nn

    class SmallCNN(nn.Module):
        """conv(16)–conv(32, /2)–conv(64, /2) → 2×2 average pool → Linear(256, dim) = the embedding; a cosine
        classifier (scale 10, plus a bias) on the normalised embedding is the training head."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            )
            self.embed = nn.Linear(256, dim)
            self.head = nn.Linear(dim, n_out)

        def forward(self, x):
            return self.embed(self.body(x))

        def logits(self, x):
            import torch.nn.functional as F

            e = F.normalize(self.forward(x), dim=1)
            return 10.0 * e @ F.normalize(self.head.weight, dim=1).T + self.head.bias

    return SmallCNN()


def _flatten_spec(spec: Any) -> list[str]:
    """Categorical tokens of one scene specification: ``key=value`` for every string/bool/int leaf of every object,
    every pair of an object's leaves (``colour=red&shape=circle``) and the conjunction of all of them (so a red
    circle next to a blue square differs from a blue circle next to a red square)."""
    import dataclasses

    def as_obj(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        if hasattr(v, "_asdict"):
            return v._asdict()
        return v

    tokens: list[str] = []

    def visit(v, prefix: str):
        v = as_obj(v)
        if isinstance(v, dict):
            leaves = []
            for k in sorted(v):
                x = as_obj(v[k])
                if isinstance(x, (str, bool, int)) and not isinstance(x, float):
                    leaves.append(f"{k}={x}")
                else:
                    visit(x, f"{prefix}{k}.")
            tokens.extend(prefix + t for t in leaves)
            if len(leaves) > 2:
                tokens.extend(prefix + a + "&" + b for i, a in enumerate(leaves) for b in leaves[i + 1 :])
            if len(leaves) > 1:
                tokens.append(prefix + "&".join(leaves))
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x, prefix)
        elif isinstance(v, (str, bool, int)):
            tokens.append(f"{prefix}{v}")

    visit(spec, "")
    return sorted(set(tokens))


def _caption_tokens(captions: Sequence[str]) -> list[str]:
    import re

    return sorted({w for c in captions for w in re.findall(r"[a-z0-9]+", c.lower())})


def training_targets(dataset) -> tuple[str, list[list[str]]]:
    """``(kind, tokens per item)``: ``("labels", …)`` one token each (cross-entropy) from ``dataset.labels``,
    ``("specs", …)`` multi-hot from ``dataset.specs``, else ``("captions", …)`` multi-hot caption words."""
    n = len(dataset)
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == n:
        return "labels", [[str(v)] for v in labels]
    specs = getattr(dataset, "specs", None)
    if specs is not None and len(specs) == n:
        return "specs", [_flatten_spec(s) for s in specs]
    caps = [dataset.captions(i) for i in range(n)]
    return "captions", [_caption_tokens(c) for c in caps]


class BuiltinEncoder(Encoder):
    """The small CNN of :func:`_build_cnn` trained on a built-in dataset (see the module docstring)."""

    kind = "builtin"

    def __init__(self, name: str, net, channels: int, resolution: int, fingerprint: str, device: str = "cpu"):
        self.name = name
        self.net = net.to(device).eval()
        self.channels = int(channels)
        self.resolution = int(resolution)
        self.dim = int(net.embed.out_features)
        self.device = device
        self._fingerprint = fingerprint
        self.batch_size = 512

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _embed_batch(self, images):
        from genattr.plugins.methods.baselines import match_format

        x = match_format(images, self.channels, self.resolution).to(self.device)
        return self.net(x)


def _augment(x, g):
    """Random shifts of up to 1/8 of the side (edge padding), contrast/brightness jitter (±10 %) and Gaussian noise
    (σ = 0.05), all from the generator ``g``."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(max=h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(max=w + 2 * pad - 1)
    xs = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
            rows[:, None, :, None], cols[:, None, None, :]]
    scale = 1 + 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    shift = 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    return (xs * scale + shift + 0.05 * torch.randn(xs.shape, generator=g)).clamp(-1, 1)


def train_builtin_encoder(images, tokens: Sequence[Sequence[str]], kind: str, dim: int = 128, steps: int = 300,
                          batch_size: int = 64, lr: float = 3e-3, seed: int = 0):
    """Train the small CNN on ``images`` (``N×C×H×W`` in [-1, 1]) with per-item target ``tokens``: cross-entropy
    when ``kind == "labels"`` (one token each), else multi-hot binary cross-entropy. Returns ``(net, vocab,
    final training loss)``. Deterministic: initialisation, batches and augmentations all derive from ``seed``."""
    import torch
    import torch.nn.functional as F

    from genattr.harness.seeding import derive_seed, generator

    vocab = sorted({t for ts in tokens for t in ts})
    if kind != "labels":
        # keep informative tokens only: present in at least 2 items and not in (almost) all of them
        counts = {t: 0 for t in vocab}
        for ts in tokens:
            for t in ts:
                counts[t] += 1
        n = len(tokens)
        vocab = [t for t in vocab if 2 <= counts[t] <= 0.95 * n] or vocab
    index = {t: k for k, t in enumerate(vocab)}
    n = images.shape[0]
    if kind == "labels":
        target = torch.tensor([index[ts[0]] for ts in tokens], dtype=torch.long)
    else:
        target = torch.zeros(n, len(vocab))
        for i, ts in enumerate(tokens):
            for t in ts:
                if t in index:
                    target[i, index[t]] = 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "builtin-encoder-init"))
        net = _build_cnn(images.shape[1], dim, len(vocab))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    g = generator(seed, "builtin-encoder-train")
    net.train()
    with single_thread():  # tiny convolutions: one thread is faster than several contending ones
        _train_loop(net, opt, sched, images, target, kind, int(steps), int(batch_size), g)
    net.eval()
    with torch.no_grad():
        idx = torch.arange(min(n, 512))
        logits = net.logits(images[idx].float())
        loss = (F.cross_entropy(logits, target[idx]) if kind == "labels"
                else F.binary_cross_entropy_with_logits(logits, target[idx]))
    return net, vocab, float(loss)


def _train_loop(net, opt, sched, images, target, kind, steps, batch_size, g):
    import torch
    import torch.nn.functional as F

    n = images.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        x = _augment(images[idx].float(), g)
        logits = net.logits(x)
        if kind == "labels":
            loss = F.cross_entropy(logits, target[idx])
        else:
            loss = F.binary_cross_entropy_with_logits(logits, target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def _default_builtin_dataset(which: str, options: dict):
    import importlib

    cls_name = {"digits": "Digits", "shapes": "Shapes"}[which]
    try:
        mod = importlib.import_module(f"genattr.datasets.{which}")
        cls = getattr(mod, cls_name)
    except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the installed tree
        raise UserError(f"builtin:{which} encoder: cannot load the {which} dataset ({e})") from None
    return cls(**options)


def _builtin_encoder(which: str, cache, device: str, dataset, options: dict) -> BuiltinEncoder:
    from safetensors.torch import load_file, save_file

    from genattr.harness.cache import Cache

    opts = {"dim": 128, "steps": 300, "batch_size": 64, "lr": 3e-3, "seed": 0, "resolution": 16}
    unknown = set(options) - set(opts) - {"dataset_options", "setting"}
    if unknown:
        raise UserError(f"builtin:{which} encoder: unknown option(s) {sorted(unknown)}; known: {sorted(opts)}")
    for k in opts:
        if k in options:
            opts[k] = type(opts[k])(options[k])
    if dataset is None or not (hasattr(dataset, "labels") or hasattr(dataset, "specs")):
        dataset = _default_builtin_dataset(which, dict(options.get("dataset_options") or {}))
    from genattr.plugins.methods.baselines import match_format

    res = int(opts["resolution"])
    images = match_format(dataset.images(list(range(len(dataset)))).float(), dataset.channels, res)
    kind, tokens = training_targets(dataset)
    train_opts = {k: v for k, v in opts.items() if k != "resolution"}
    cache = cache if cache is not None else Cache()
    key = Cache.key("builtin-encoder", ENCODER_VERSION, which, opts, dataset.fingerprint, kind,
                    hashlib.sha256(json.dumps(tokens).encode()).hexdigest())
    meta = {"encoder": f"builtin:{which}", "options": opts, "dataset": dataset.fingerprint, "targets": kind}

    def create(tmp: Path):
        net, vocab, loss = train_builtin_encoder(images, tokens, kind, **train_opts)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp / "weights.safetensors"))
        (tmp / "info.json").write_text(json.dumps({"vocab": vocab, "final_loss": loss, **meta}))

    path = cache.get_or_create("encoders/builtin", key, create, meta=meta)
    state = load_file(str(path / "weights.safetensors"))
    net = _build_cnn(images.shape[1], int(state["embed.weight"].shape[0]), int(state["head.weight"].shape[0]))
    net.load_state_dict(state)
    h = hashlib.sha256(f"builtin:{which}:{ENCODER_VERSION}:{images.shape[1]}:{images.shape[-1]}".encode())
    for k in sorted(state):
        h.update(k.encode() + state[k].numpy().tobytes())
    enc = BuiltinEncoder(f"builtin:{which}", net, images.shape[1], images.shape[-1], h.hexdigest(), device)
    enc.training_info = json.loads((path / "info.json").read_text())
    return enc


# ------------------------------------------------------------------------------------------------------------------
# transformers encoders
# ------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread():
    """Run tiny tensor work (small convolutions, d×d mappers) on one intra-op thread, restoring the setting after:
    on a shared CPU, several threads contending for tiny kernels can be tens of times slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint)
    try:
        with socket.create_connection((u.hostname or "huggingface.co", u.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_pretrained(cls, kind: str, ref: str, setting: str, **kwargs):
    """``cls.from_pretrained(ref)``: a directory with ``local_files_only``; a hub id from the local cache first,
    then the hub when reachable. Any failure becomes one UserError line naming ``setting``."""
    hint = f"set {setting.split('.')[-1]}=/path/to/{kind} (e.g. --set {setting}=DIR)"
    p = Path(ref).expanduser()
    looks_like_path = p.is_absolute() or ref.startswith((".", "~")) or p.exists()
    if looks_like_path:
        if not p.is_dir():
            raise UserError(f"{kind} weights directory {ref!r} does not exist; {hint}")
        try:
            return cls.from_pretrained(str(p), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load {kind} weights from {ref!r} ({msg}); {hint}") from None
    try:
        return cls.from_pretrained(ref, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise UserError(f"{kind} weights {ref!r} not found locally and the hub is unreachable; {hint}")
    try:
        return cls.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {kind} weights {ref!r} ({msg}); {hint}") from None


def _processor_config(ref: str) -> dict:
    """The ``preprocessor_config.json`` of a local directory or a cached hub snapshot ({} when absent)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        f = p / "preprocessor_config.json"
        return json.loads(f.read_text()) if f.is_file() else {}
    try:
        from transformers.utils import cached_file

        f = cached_file(ref, "preprocessor_config.json", local_files_only=True,
                        _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - any lookup failure means "no processor config"
        f = None
    if f and Path(f).is_file():
        return json.loads(Path(f).read_text())
    return {}


def _size_of(v, default: int) -> tuple[str, int]:
    """(mode, size) from a processor ``size`` / ``crop_size`` value: ``("shortest", s)`` or ``("exact", s)``."""
    if v is None:
        return "exact", default
    if isinstance(v, (int, float)):
        return "shortest", int(v)
    if isinstance(v, dict):
        if "shortest_edge" in v:
            return "shortest", int(v["shortest_edge"])
        if "height" in v:
            return "exact", int(v["height"])
    return "exact", default


class HFImageEncoder(Encoder):
    """A transformers vision model (CLIP / DINO ViT / DINOv2) as an image encoder (text too for CLIP)."""

    def __init__(self, kind: str, ref: str, device: str = "cpu", setting: str | None = None,
                 batch_size: int = 32, dtype: str = "float32"):
        import torch

        self.kind = kind
        self.ref = ref
        self.name = f"{kind}:{ref}"
        self.device = device
        self.batch_size = int(batch_size)
        self.setting = setting or f"{kind}.model"
        self.dtype = getattr(torch, dtype)
        self.tokenizer = None
        if kind == "clip":
            from transformers import CLIPModel

            self.model = _load_pretrained(CLIPModel, kind, ref, self.setting)
            vcfg = self.model.config.vision_config
            mean, std = CLIP_MEAN, CLIP_STD
            self.dim = int(self.model.config.projection_dim)
            self.supports_text = True
        elif kind == "dino":
            from transformers import ViTModel

            self.model = _load_pretrained(ViTModel, kind, ref, self.setting, add_pooling_layer=False)
            vcfg = self.model.config
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            self.dim = int(vcfg.hidden_size)
        elif kind == "dinov2":
            from transformers import AutoModel

            self.model = _load_pretrained(AutoModel, kind, ref, self.setting)
            if self.model.config.model_type not in ("dinov2", "dinov2_with_registers"):
                raise UserError(f"dinov2 weights {ref!r} are a {self.model.config.model_type!r} model, not DINOv2; "
                                f"set {self.setting}=DIR")
            vcfg = self.model.config
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            self.dim = int(vcfg.hidden_size)
        else:  # pragma: no cover - guarded by get_encoder
            raise UserError(f"unknown encoder kind {kind!r}")
        self.model.to(device=device, dtype=self.dtype).eval()
        self.model.requires_grad_(False)
        self.native_size = int(getattr(vcfg, "image_size", 224))
        pc = _processor_config(ref)
        self.image_mean = tuple(float(v) for v in pc.get("image_mean", mean))
        self.image_std = tuple(float(v) for v in pc.get("image_std", std))
        do_resize = pc.get("do_resize", True)
        mode, size = _size_of(pc.get("size"), self.native_size) if do_resize else ("exact", self.native_size)
        crop = _size_of(pc.get("crop_size"), size)[1] if pc.get("do_center_crop", bool(pc.get("crop_size"))) else None
        if mode == "shortest" and crop is None:
            crop = size
        self.resize_mode, self.resize_size, self.crop_size = mode, size, crop
        resample = int(pc.get("resample", 3))
        self.interp = {2: "bilinear", 3: "bicubic"}.get(resample, "bicubic")
        self._fingerprint: str | None = None

    # -- identity --------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            import torch

            h = hashlib.sha256()
            h.update(json.dumps({"encoder": self.kind, "v": ENCODER_VERSION, "class": type(self.model).__name__,
                                 "mean": self.image_mean, "std": self.image_std, "resize": self.resize_mode,
                                 "size": self.resize_size, "crop": self.crop_size, "interp": self.interp,
                                 "dtype": str(self.dtype)}, sort_keys=True).encode())
            h.update(self.model.config.to_json_string(use_diff=False).encode())
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
            if self.tokenizer is not None or self.kind == "clip":
                tok = self._get_tokenizer(required=False)
                if tok is not None:
                    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # -- images ----------------------------------------------------------------------------------------------
    def preprocess(self, images):
        """``B×C×H×W`` in [-1, 1] → the model's ``pixel_values`` (RGB, resized, cropped, normalised)."""
        import torch
        import torch.nn.functional as F

        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"{self.kind} encoder needs 1- or 3-channel images, got {x.shape[1]}")
        h, w = x.shape[-2:]
        if self.resize_mode == "shortest":
            s = self.resize_size / min(h, w)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
        else:
            nh = nw = self.resize_size
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=self.interp, align_corners=False, antialias=True).clamp(0, 1)
        if self.crop_size is not None and (nh, nw) != (self.crop_size, self.crop_size):
            c = self.crop_size
            top, left = max(0, (nh - c) // 2), max(0, (nw - c) // 2)
            x = x[..., top : top + c, left : left + c]
            if x.shape[-2:] != (c, c):  # smaller than the crop: pad like the processors do
                x = F.pad(x, (0, c - x.shape[-1], 0, c - x.shape[-2]))
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (x - mean) / std

    def _embed_batch(self, images):
        pv = self.preprocess(images).to(device=self.device, dtype=self.dtype)
        interp = pv.shape[-1] != self.native_size
        if self.kind == "clip":
            out = self.model.get_image_features(pixel_values=pv, interpolate_pos_encoding=interp)
            return out if hasattr(out, "ndim") else out.pooler_output
        if self.kind == "dino":
            out = self.model(pixel_values=pv, interpolate_pos_encoding=interp)
        else:
            out = self.model(pixel_values=pv)
        return out.last_hidden_state[:, 0]

    # -- texts -----------------------------------------------------------------------------------------------
    def _get_tokenizer(self, required: bool = True):
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = _load_pretrained(AutoTokenizer, "clip tokenizer", self.ref, self.setting)
            except UserError:
                if required:
                    raise
                return None
        return self.tokenizer

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None):
        """Captions → ``len(texts)×D`` projected CLIP text features, rows L2-normalised (truncated to the model's
        context length)."""
        import torch
        import torch.nn.functional as F

        if self.kind != "clip":
            return super().embed_texts(texts, batch_size)
        tok = self._get_tokenizer()
        max_len = int(self.model.config.text_config.max_position_embeddings)
        bs = int(batch_size or 256)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), bs):
                enc = tok(list(texts[s : s + bs]), padding=True, truncation=True, max_length=max_len,
                          return_tensors="pt")
                feats = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                                     attention_mask=enc["attention_mask"].to(self.device))
                feats = feats if hasattr(feats, "ndim") else feats.pooler_output
                out.append(F.normalize(feats.float().cpu(), dim=1, eps=1e-12))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


# ------------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------------
def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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
