"""The ``builtin:digits`` / ``builtin:shapes`` encoders: a small CNN trained (seeded, deterministic, well under a
minute on a CPU) on a built-in dataset, its penultimate layer as the embedding — the offline stand-in for CLIP / DINO.

Targets: the digit label (``Digits.labels``) for digits, the scene specification (``Shapes.specs``: every
categorical field of every object, and each object's conjunction of them, as a multi-hot target) for shapes; a
dataset with neither is trained on the bag of words of its captions (:func:`training_targets`). The weights are
cached (safetensors) under the dataset's fingerprint.

torch and safetensors are imported lazily.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from genattr.harness.errors import UserError

from .base import ENCODER_VERSION, Encoder, single_thread

BUILTIN_DATASETS = ("digits", "shapes")


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
