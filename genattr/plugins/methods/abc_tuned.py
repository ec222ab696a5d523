"""AbC-tuned feature baselines ``abc-clip`` and ``abc-dino`` (Wang, Efros, Zhu, Zhang, "Evaluating Data Attribution
for Text-to-Image Models", ICCV 2023; PAPER_NOTES §4; Table 1 rows "CLIP (AbC)", "DINO (AbC)").

AbC never released its training code; this is written from the paper's description:

* a **frozen** backbone ``f`` (CLIP image encoder for ``abc-clip``, DINO for ``abc-dino``) gives L2-normalised
  features;
* two linear mappers ``M_real``, ``M_syn`` = ``Linear(d, d)``, **initialised to the identity** (zero bias), map real
  (training / exemplar) images and synthesized (query) images respectively; outputs are L2-normalised:
  ``u(x) = M_real f(x) / ‖·‖``, ``v(ẑ) = M_syn f(ẑ) / ‖·‖``;
* they are trained **contrastively** (InfoNCE with temperature ``T``) so a synthesized image lands near its own
  exemplars: for a synthesized image ``s`` of concept ``c`` and the exemplars ``e_j`` of every training concept,
  ``L(s) = −log Σ_{j ∈ c} exp(⟨v(s), u(e_j)⟩ / T) / Σ_j exp(⟨v(s), u(e_j)⟩ / T)`` (the multi-positive form: a concept
  may have several exemplars), averaged over a minibatch of synthesized images. Negatives are the other training
  concepts' exemplars (AbC also used LAION images as negatives; the benchmark supplies none here, so this is a
  documented simplification). An optional ``reg`` adds ``reg · (‖W_real − I‖² + ‖W_syn − I‖²)`` to stay near the
  untuned features;
* training uses the Customized Model benchmark's **training concepts only**, which the benchmark hands over as
  ``ctx.extra["training_concepts"]`` (a list of ``{"id", "exemplars": E×C×H×W, "synthesized": S×C×H×W}`` in
  ``[-1, 1]``) — never test concepts;
* score: ``τ(ẑ, z_i) = ⟨v(ẑ), u(x_i)⟩``.

Hyperparameters are ours (AbC trained on its large training split with its own schedule): ``temperature`` 0.07,
``steps`` 300, ``lr`` 1e-3 (Adam), ``batch_size`` 64 synthesized images per step, ``reg`` 0, ``seed`` 0.
Because the backbone is frozen, features are computed once and training touches only the mappers (seconds on a
CPU). The trained mappers are cached as safetensors, keyed on the backbone fingerprint, the training concepts'
content and the training configuration.

Trained mappers travel as a file, so tuned features can serve another benchmark (the paper's Table 1 scores the
AbC-tuned features on MSCOCO leave-K-out, with mappers trained on AbC's customized models): ``save_mappers=PATH``
writes the mappers a run trained (or loaded) to a safetensors file whose metadata names the backbone (name and
fingerprint), the training concepts and the training configuration; ``mappers=PATH`` loads such a file instead of
training, so no training concepts are needed. The backbone must be the one the file was trained on (same
fingerprint), else a one-line error names the backbone to set. The method's configuration (and so the run's
``config_hash``) records the file's sha256 (``mappers_sha256``), not its path.

Backbone: ``backbone`` config — default ``"auto"``: the built-in encoder (``builtin:digits`` / ``builtin:shapes``)
when the training set is a built-in dataset (the offline miniatures have no CLIP/DINO weights), else
``clip:openai/clip-vit-base-patch32`` (abc-clip) / ``dino:facebook/dino-vitb16`` (abc-dino). Any encoder spec of
:mod:`genattr.plugins.encoders` is accepted (``clip:/path/to/clip``, ``builtin:shapes``, ``pixels:16``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from genattr.harness.api import AttributionContext, Query
from genattr.harness.errors import UserError
from genattr.plugins.methods.baselines import _candidate_indices, query_images

MAPPER_NS = "methods/abc-mappers"
MAPPER_FORMAT = "genattr.abc-mappers/1"
MAPPER_KEYS = ("real.weight", "real.bias", "synthesized.weight", "synthesized.bias")


def concepts_digest(concepts: Sequence[dict]) -> str:
    """sha256 over every training concept's id, exemplar and synthesized pixels (in the given order)."""
    h = hashlib.sha256()
    for c in concepts:
        h.update(str(c["id"]).encode() + b"\x00")
        for part in ("exemplars", "synthesized"):
            t = c[part].detach().float().contiguous().cpu()
            h.update(f"{part}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def mappers_hint(who: str) -> str:
    """How to run ``who`` where no training concepts are offered."""
    return f"pass trained mappers with {who}.mappers=FILE (written by {who}.save_mappers=FILE on customized-model)"


def validate_concepts(concepts, who: str) -> list[dict]:
    if not concepts:
        raise UserError(f"{who} needs the benchmark's training concepts (ctx.extra['training_concepts']), which only "
                        f"the customized-model benchmark supplies; elsewhere {mappers_hint(who)}")
    out = []
    for c in concepts:
        try:
            cid, ex, syn = str(c["id"]), c["exemplars"], c["synthesized"]
        except (KeyError, TypeError):
            raise UserError(f"{who}: each training concept needs 'id', 'exemplars' and 'synthesized'") from None
        if ex.ndim != 4 or syn.ndim != 4 or ex.shape[0] == 0 or syn.shape[0] == 0:
            raise UserError(f"{who}: training concept {cid!r} needs non-empty E×C×H×W exemplars and S×C×H×W "
                            "synthesized images")
        out.append({"id": cid, "exemplars": ex, "synthesized": syn})
    if len(out) < 2:
        raise UserError(f"{who}: contrastive training needs at least 2 training concepts, got {len(out)}")
    return out


def identity_mappers(dim: int) -> dict:
    """The initial mapper weights: ``W = I``, ``b = 0`` for both mappers."""
    import torch

    eye = torch.eye(dim)
    return {"real.weight": eye.clone(), "real.bias": torch.zeros(dim),
            "synthesized.weight": eye.clone(), "synthesized.bias": torch.zeros(dim)}


def save_mappers_file(path, mappers: dict, *, method: str, backbone: str, backbone_fingerprint: str,
                      training_concepts: Sequence[str], config: dict) -> None:
    """Write the four mapper tensors to ``path`` (safetensors, atomically) with the provenance in its metadata."""
    import json
    import os

    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": MAPPER_FORMAT, "method": method, "backbone": backbone,
            "backbone_fingerprint": backbone_fingerprint, "training_concepts": json.dumps(list(training_concepts)),
            "config": json.dumps(config, sort_keys=True)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({k: mappers[k].detach().float().contiguous().cpu() for k in MAPPER_KEYS}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{method}: cannot write save_mappers file {str(path)!r}: {e.strerror or e}") from None


def load_mappers_file(path, who: str) -> tuple[dict, dict]:
    """``(mappers, metadata)`` from a file written by :func:`save_mappers_file`; a malformed file is a UserError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
            if meta.get("format") != MAPPER_FORMAT or not set(MAPPER_KEYS) <= keys:
                raise UserError(f"{who}: {str(path)!r} is not an AbC mappers file (write one with "
                                f"{who}.save_mappers=FILE)")
            mappers = {k: f.get_tensor(k) for k in MAPPER_KEYS}
    except UserError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise UserError(f"{who}: cannot read mappers file {str(path)!r}: {e}") from None
    d = mappers["real.weight"].shape[0]
    shapes = {"real.weight": (d, d), "real.bias": (d,), "synthesized.weight": (d, d), "synthesized.bias": (d,)}
    if any(tuple(mappers[k].shape) != v for k, v in shapes.items()):
        raise UserError(f"{who}: mappers file {str(path)!r} holds inconsistent shapes "
                        f"{ {k: tuple(v.shape) for k, v in mappers.items()} }")
    return mappers, meta


def apply_mapper(state: dict, which: str, features):
    """``normalise(W f + b)`` for ``which`` in ``{"real", "synthesized"}``."""
    import torch.nn.functional as F

    w, b = state[f"{which}.weight"], state[f"{which}.bias"]
    return F.normalize(features.float() @ w.T.float() + b.float(), dim=1, eps=1e-12)


def contrastive_loss(state: dict, syn_feats, syn_concept, ex_feats, ex_concept, temperature: float):
    """Mean multi-positive InfoNCE of synthesized features against every exemplar (see the module docstring)."""
    import torch

    v = apply_mapper(state, "synthesized", syn_feats)
    u = apply_mapper(state, "real", ex_feats)
    logits = v @ u.T / float(temperature)
    pos = syn_concept[:, None] == ex_concept[None, :]
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def concept_features(encoder, concepts: Sequence[dict]):
    """Backbone features: ``(syn_feats, syn_concept, ex_feats, ex_concept)`` with integer concept indices."""
    import torch

    ex, exc, syn, sync = [], [], [], []
    for k, c in enumerate(concepts):
        e = encoder.embed_images(c["exemplars"].float())
        s = encoder.embed_images(c["synthesized"].float())
        ex.append(e)
        syn.append(s)
        exc.append(torch.full((e.shape[0],), k, dtype=torch.long))
        sync.append(torch.full((s.shape[0],), k, dtype=torch.long))
    return torch.cat(syn), torch.cat(sync), torch.cat(ex), torch.cat(exc)


def train_mappers(syn_feats, syn_concept, ex_feats, ex_concept, temperature: float = 0.07, steps: int = 300,
                  lr: float = 1e-3, batch_size: int = 64, reg: float = 0.0, seed: int = 0):
    """Train the two mappers from the identity; returns ``(state, history)`` with ``history`` the full-data loss
    before and after training. Minibatches of synthesized images derive from ``seed``."""
    import torch

    from genattr.harness.seeding import generator
    from genattr.plugins.encoders import single_thread

    d = syn_feats.shape[1]
    params = {k: torch.nn.Parameter(v) for k, v in identity_mappers(d).items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    g = generator(seed, "abc-mappers")
    eye = torch.eye(d)
    with torch.no_grad():
        initial = float(contrastive_loss(params, syn_feats, syn_concept, ex_feats, ex_concept, temperature))
    with single_thread():
        _train_loop(params, opt, g, eye, syn_feats, syn_concept, ex_feats, ex_concept, temperature, int(steps),
                    int(batch_size), float(reg))
    state = {k: v.detach().clone() for k, v in params.items()}
    with torch.no_grad():
        final = float(contrastive_loss(state, syn_feats, syn_concept, ex_feats, ex_concept, temperature))
    return state, {"initial_loss": initial, "final_loss": final}


def _train_loop(params, opt, g, eye, syn_feats, syn_concept, ex_feats, ex_concept, temperature, steps, batch_size,
                reg):
    import torch

    n = syn_feats.shape[0]
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: min(int(batch_size), n)]
        loss = contrastive_loss(params, syn_feats[idx], syn_concept[idx], ex_feats, ex_concept, temperature)
        if reg > 0:
            loss = loss + reg * ((params["real.weight"] - eye).pow(2).sum()
                                 + (params["synthesized.weight"] - eye).pow(2).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class _AbcMethod:
    name = ""
    version = "1"
    needs_model = False
    family = ""

    def __init__(self, backbone: str = "auto", temperature: float = 0.07, steps: int = 300, lr: float = 1e-3,
                 batch_size: int = 64, reg: float = 0.0, seed: int = 0, encoder_batch_size: int = 32,
                 mappers: str | None = None, save_mappers: str | None = None):
        if float(temperature) <= 0:
            raise UserError(f"{self.name}: temperature must be positive, got {temperature}")
        if int(steps) < 0 or int(batch_size) < 1:
            raise UserError(f"{self.name}: steps must be >= 0 and batch_size >= 1")
        self.config = {"backbone": str(backbone or "auto"), "temperature": float(temperature), "steps": int(steps),
                       "lr": float(lr), "batch_size": int(batch_size), "reg": float(reg), "seed": int(seed),
                       "encoder_batch_size": int(encoder_batch_size)}
        self.mappers_path = None
        if mappers:
            p = Path(str(mappers)).expanduser().resolve()
            if not p.is_file():
                raise UserError(f"{self.name}: mappers file {str(mappers)!r} not found (write one with "
                                f"{self.name}.save_mappers=FILE on the customized-model benchmark)")
            # the file's content identifies the configuration (and the run's config_hash); its path is kept out
            # of it, so the same mappers give the same hash wherever the file lies
            self.config["mappers_sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
            self.mappers_path = str(p)
        # an output path: kept out of the configuration, it does not change any score
        self.save_mappers = str(save_mappers) if save_mappers else None
        self._state = None
        self.training_info: dict = {}

    # -- backbone --------------------------------------------------------------------------------------------
    def backbone_spec(self, ctx: AttributionContext) -> str:
        from genattr.plugins.encoders import DEFAULT_MODELS
        from genattr.plugins.methods.features import builtin_encoder_for

        spec = self.config["backbone"]
        if spec == "auto":
            spec = builtin_encoder_for(ctx.train_set.name) or f"{self.family}:{DEFAULT_MODELS[self.family]}"
        return spec

    def encoder(self, ctx: AttributionContext):
        from genattr.plugins.encoders import get_encoder
        from genattr.plugins.methods.features import builtin_dataset_for_encoder

        spec = self.backbone_spec(ctx)
        if spec.startswith("builtin:"):
            return get_encoder(spec, cache=ctx.cache, device=ctx.device,
                               dataset=builtin_dataset_for_encoder(ctx.train_set))
        if spec.startswith("pixels"):
            return get_encoder(spec, cache=ctx.cache, device=ctx.device)
        return get_encoder(spec, cache=ctx.cache, device=ctx.device, setting=f"{self.name}.backbone",
                           batch_size=self.config["encoder_batch_size"])

    @property
    def required_extra_hint(self) -> str:
        return mappers_hint(self.name)

    def required_extra(self, config: dict) -> tuple[str, ...]:
        """Training the mappers needs the benchmark's training concepts; a mappers file needs nothing."""
        return () if "mappers_sha256" in config else ("training_concepts",)

    def _backbone_mismatch(self, trained_on, this_run) -> UserError:
        return UserError(f"{self.name}: the mappers in {self.mappers_path!r} were trained on backbone "
                         f"{trained_on!r}, but this run's backbone is {this_run!r}; set {self.name}.backbone to the "
                         f"backbone the mappers were trained on")

    def check_benchmark(self, benchmark: str, benchmark_config: dict, config: dict) -> None:
        """Before any cell: a mappers file trained on one built-in encoder, with ``backbone="auto"``, on a
        benchmark whose built-in dataset selects another (shapes mappers on the digits leave-K-out) fails here,
        not at the first abc cell after the other methods' cells. Other backbones are checked by fingerprint in
        :meth:`prepare` (that needs the encoder)."""
        from genattr.plugins.methods.features import builtin_encoder_for

        dataset = (benchmark_config or {}).get("dataset")
        if not self.mappers_path or config.get("backbone") != "auto" or not isinstance(dataset, str):
            return
        this_run = builtin_encoder_for(dataset)
        trained_on = load_mappers_file(self.mappers_path, self.name)[1].get("backbone")
        if this_run and trained_on != this_run:
            raise self._backbone_mismatch(trained_on, this_run)

    # -- protocol --------------------------------------------------------------------------------------------
    def prepare(self, ctx: AttributionContext) -> None:
        from genattr.harness.cache import Cache

        if self.mappers_path:
            return self._prepare_from_file(ctx)
        concepts = validate_concepts((ctx.extra or {}).get("training_concepts"), self.name)
        enc = self.encoder(ctx)
        digest = concepts_digest(concepts)
        train_cfg = {k: self.config[k] for k in ("temperature", "steps", "lr", "batch_size", "reg", "seed")}
        key = Cache.key("abc-mappers", self.version, enc.fingerprint, digest, train_cfg)
        state_key = (key, ctx.train_set.fingerprint)
        if self._state is not None and self._state[0] == state_key:
            return
        import torch

        def compute():
            feats = concept_features(enc, concepts)
            state, hist = train_mappers(*feats, **train_cfg)
            return {**state, **{f"history.{k}": torch.tensor(v) for k, v in hist.items()}}

        meta = {"backbone": enc.name, "concepts": [c["id"] for c in concepts], "config": train_cfg}
        mappers = ctx.cache.tensors(MAPPER_NS, key, compute, meta=meta)
        self.training_info = {"backbone": enc.name, "training_concepts": [c["id"] for c in concepts],
                              **{k.split(".", 1)[1]: float(v) for k, v in mappers.items() if k.startswith("history.")}}
        self._adopt(ctx, state_key, enc, mappers, train_cfg)

    def _prepare_from_file(self, ctx: AttributionContext) -> None:
        """Mappers from ``mappers=FILE`` (see the module docstring): no training, no training concepts."""
        import json

        state_key = ("file", self.config["mappers_sha256"], ctx.train_set.fingerprint)
        if self._state is not None and self._state[0] == state_key:
            return
        mappers, meta = load_mappers_file(self.mappers_path, self.name)
        enc = self.encoder(ctx)
        if meta.get("backbone_fingerprint") != enc.fingerprint:
            raise self._backbone_mismatch(meta.get("backbone"), enc.name)
        self.training_info = {"backbone": enc.name, "mappers_file": self.mappers_path,
                              "training_concepts": json.loads(meta.get("training_concepts", "[]"))}
        self._adopt(ctx, state_key, enc, mappers, json.loads(meta.get("config", "{}")))

    def _adopt(self, ctx: AttributionContext, state_key, enc, mappers: dict, train_cfg: dict) -> None:
        """Write ``save_mappers`` when asked, map the pool's features once, keep the state for ``attribute``."""
        from genattr.plugins.methods.features import train_image_embeddings

        if self.save_mappers:
            save_mappers_file(self.save_mappers, mappers, method=self.name, backbone=enc.name,
                              backbone_fingerprint=enc.fingerprint,
                              training_concepts=self.training_info["training_concepts"], config=train_cfg)
        pool = apply_mapper(mappers, "real", train_image_embeddings(enc, ctx.train_set, ctx.cache))
        self._state = (state_key, enc, mappers, pool)

    def attribute(self, ctx: AttributionContext, queries: Sequence[Query], candidates=None) -> np.ndarray:
        import torch

        idx = _candidate_indices(len(ctx.train_set), candidates)
        if len(queries) == 0:
            return np.zeros((0, idx.size))
        self.prepare(ctx)
        _, enc, mappers, pool = self._state
        q = apply_mapper(mappers, "synthesized", enc.embed_images(query_images(queries)))
        return (q.double() @ pool[torch.as_tensor(idx, dtype=torch.long)].double().T).numpy()


class AbcClipMethod(_AbcMethod):
    """AbC-tuned CLIP: frozen CLIP ViT-B/32 image encoder + contrastively trained linear mappers (see module)."""

    name = "abc-clip"
    family = "clip"


class AbcDinoMethod(_AbcMethod):
    """AbC-tuned DINO: frozen DINO ViT-B/16 + contrastively trained linear mappers (see module)."""

    name = "abc-dino"
    family = "dino"
