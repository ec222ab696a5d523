"""Per-sample gradient features and random projections (the host's machinery behind the gradient store,
:mod:`genattr.harness.gradstore`, which TRAK, D-TRAK, JourneyTRAK, DataInf and the unlearning prescreen share).

Per-sample gradients
    :class:`PerSampleGrad` takes gradients of one scalar per example — an *output function* from :data:`OUTPUTS`:
    ``"loss"`` (the model adapter's ``denoise_loss(..., target="loss")``, the DDPM loss) or ``"eps-sq-norm"``
    (``target="eps-sq-norm"``, D-TRAK's ‖ε_θ‖²/d); :func:`register_output` adds others — with
    respect to a parameter selection (``cross-attn-kv`` … ``full``, optionally narrowed by name substrings), using
    ``torch.func.vmap(torch.func.grad(f))`` over the adapter's ``params=`` override (``functional_call``). Examples
    are processed in chunks of ``batch_size`` so memory stays at ``batch_size × P`` gradients plus activations.
    While it runs, a diffusers UNet uses the plain attention processor (SDPA has no CPU batching rule). When
    an operation of the model does not support ``vmap`` it falls back to a per-example ``torch.autograd.grad`` loop
    (same values, slower) and says so once.

Random projection
    :class:`Projector` maps a flat gradient ``g ∈ R^P`` to ``Pᵀg ∈ R^k`` with ``P`` a ``P×k`` matrix of i.i.d.
    Rademacher (±1/√k) or Gaussian (N(0, 1/k)) entries, as TRAK does (Johnson–Lindenstrauss). The matrix is
    generated in row blocks of ``block_rows`` rows (by default 2²⁴/k, 64 MiB), each from its own seed
    ``derive_seed(seed, "projector", kind, P, k, block)``, so the
    whole ``P×k`` matrix never has to exist at once: a matrix up to ``max_cached_bytes`` is kept in memory, a
    larger one is regenerated block by block on every call. ``kind="identity"`` (``k = P``) projects nothing.

    This is a pure-torch projector; ``traker``'s projectors are **not** used. Reasons: no extra dependency (the
    CUDA projector of ``traker`` needs the compiled ``fast_jl`` extension, its CPU ``BasicProjector`` is the same
    dense matrix product as here), seeds derived from genattr's stable keys, and block-wise generation on CPU and
    GPU alike. The same seed gives the same matrix on the same device type (CPU and CUDA generators differ).

Feature extraction
    :func:`gradient_features` computes, for each item, the gradients of several *draws* (timestep, caption index,
    noise key) and reduces them per item (mean or sum) *after* projecting each draw — by linearity this equals
    projecting the reduced gradient (D-TRAK's "average then project"), up to float rounding. The noise of a draw is
    ``seeding.item_noise(seed, noise_key, index, t, latent_shape)`` with the item's id as key (per-item draws) or a
    key shared by every item and query (shared draws, common random numbers) — never batch positions, so features
    do not depend on the batch size.

Draw schemes
    :func:`random_draws` (random timesteps, TRAK / JourneyTRAK / DataInf), :func:`strided_draws` (D-TRAK) and
    :func:`grid_draws` (every scored caption × every given timestep, with the noise of
    ``item_noise(seed, item id, caption index, t)`` — exactly the rows the unlearning score averages).
    :func:`make_draws` builds one from a JSON-able description (what the gradient store keys on).

Nothing here imports a built-in plugin: this is host code.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from genattr.harness.errors import UserError
from genattr.harness.seeding import derive_seed, item_noise

log = logging.getLogger(__name__)

PROJECTION_KINDS = ("rademacher", "gaussian", "identity")


# -- output functions -----------------------------------------------------------------------------------------------
def _denoise_output(target: str):
    def out(model, latents, text_emb, timesteps, noise, mask=None, params=None, probe=None):
        return model.denoise_loss(latents, text_emb, timesteps, noise, mask=mask, params=params, target=target)

    return out


def _eps_probe(model, latents, text_emb, timesteps, noise, mask=None, params=None, probe=None):
    """``vᵀ ε_θ(x_t, t, c) / √d`` for a Rademacher probe ``v`` (the latent's shape, ``d`` its size): its gradient
    ``Jᵀv/√d`` gives unbiased estimates ``E[(Δθᵀ Jᵀv)²]/d = ‖JΔθ‖²/d`` of the Gauss–Newton term of the loss
    (Hutchinson), which the unlearning prescreen's second order uses."""
    import math

    ts = torch.as_tensor(timesteps, device=latents.device).long()
    x_t = model.add_noise(latents, noise, ts) if hasattr(model, "add_noise") else None
    if x_t is None or not hasattr(model, "unet_forward"):
        raise UserError("output 'eps-probe' needs a model adapter with add_noise and unet_forward")
    pred = model.unet_forward(x_t, ts, text_emb, params).float()
    return (pred * probe.to(pred.dtype)).flatten(1).sum(1) / math.sqrt(pred[0].numel())


#: Output functions per-sample gradients can be taken of: ``name -> f(model, latents, text_emb, timesteps, noise,
#: mask=None, params=None) -> B`` values (one scalar per example). Those in :data:`PROBE_OUTPUTS` also take a
#: seeded Rademacher ``probe=`` per draw (:func:`probe_noise`).
OUTPUTS: dict[str, Callable] = {"loss": _denoise_output("loss"), "eps-sq-norm": _denoise_output("eps-sq-norm"),
                                "eps-probe": _eps_probe}
PROBE_OUTPUTS = {"eps-probe"}


def probe_noise(seed: int, key: str, index: int, t: int, probe: int, shape) -> torch.Tensor:
    """The Rademacher (±1) probe of one draw: a function of (seed, noise key, index, t, probe index) only."""
    from genattr.harness.seeding import generator

    g = generator(seed, "probe", key, int(index), int(t), int(probe))
    return torch.randint(0, 2, tuple(shape), generator=g).float().mul_(2).sub_(1)


def register_output(name: str, fn: Callable) -> None:
    """Make ``fn`` (signature as in :data:`OUTPUTS`) available as output function ``name`` (for a gradient store key
    the name must identify the function: register a changed function under a new name)."""
    if name in OUTPUTS and OUTPUTS[name] is not fn:
        raise UserError(f"gradient output function {name!r} is already registered")
    OUTPUTS[name] = fn


# -- parameter selection --------------------------------------------------------------------------------------------
def select_parameters(model, selection: str = "cross-attn-kv", include: Sequence[str] | None = None) -> dict:
    """``{diffusers name: tensor}`` (detached) for ``selection``, optionally narrowed to the names that contain one of
    the ``include`` substrings; names sorted so the flat layout is stable."""
    params = model.parameters(selection)
    names = sorted(params)
    if include:
        names = [n for n in names if any(s in n for s in include)]
    if not names:
        raise UserError(
            f"parameter selection {selection!r} with include={list(include or [])} matches no parameter of the model"
        )
    return {n: params[n].detach() for n in names}


@dataclass(frozen=True)
class Layout:
    """Where each named tensor sits in the flat gradient vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        out = []
        for s in self.shapes:
            n = 1
            for d in s:
                n *= int(d)
            out.append(n)
        return out

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def slices(self) -> list[slice]:
        out, a = [], 0
        for n in self.sizes:
            out.append(slice(a, a + n))
            a += n
        return out


# -- per-sample gradients -------------------------------------------------------------------------------------------
class PerSampleGrad:
    """Per-example gradients of ``model.denoise_loss(..., target=target)`` with respect to ``params``.

    ``__call__(latents, text_emb, timesteps, noise, mask=None)`` returns a ``B×P`` float32 tensor, the gradients of
    each example flattened in :attr:`layout` order."""

    def __init__(self, model, params: Mapping[str, torch.Tensor], target: str = "loss", mode: str = "vmap"):
        if target not in OUTPUTS:
            raise UserError(f"unknown gradient target {target!r}; use one of {', '.join(OUTPUTS)}")
        if mode not in ("vmap", "loop"):
            raise UserError(f"unknown per-sample gradient mode {mode!r}; use 'vmap' or 'loop'")
        self.model = model
        self.params = dict(params)
        self.target = target
        self.mode = mode
        self.layout = Layout(tuple(self.params), tuple(tuple(p.shape) for p in self.params.values()))

    def _f(self, params, latent, emb, t, eps, mask, probe=None):
        m = None if mask is None else mask.unsqueeze(0)
        kw = {} if probe is None else {"probe": probe.unsqueeze(0)}  # only probe outputs take one
        out = OUTPUTS[self.target](self.model, latent.unsqueeze(0), emb.unsqueeze(0), t.unsqueeze(0),
                                   eps.unsqueeze(0), mask=m, params=params, **kw)
        return out.reshape(())

    def _flat(self, grads: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor:
        return torch.cat([grads[n].reshape(batch, -1).float() for n in self.layout.names], dim=1)

    def _vmap(self, latents, text_emb, timesteps, noise, mask, probe=None):
        from torch.func import grad, vmap

        in_dims = (None, 0, 0, 0, 0, None if mask is None else 0, None if probe is None else 0)
        g = vmap(grad(self._f), in_dims=in_dims)(self.params, latents, text_emb, timesteps, noise, mask, probe)
        return self._flat(g, latents.shape[0])

    def _loop(self, latents, text_emb, timesteps, noise, mask, probe=None):
        rows = []
        names = self.layout.names
        for b in range(latents.shape[0]):
            with torch.enable_grad():
                params = {n: p.detach().clone().requires_grad_(True) for n, p in self.params.items()}
                val = self._f(params, latents[b], text_emb[b], timesteps[b], noise[b],
                              None if mask is None else mask[b], None if probe is None else probe[b])
                gs = torch.autograd.grad(val, [params[n] for n in names], allow_unused=True)
            rows.append(torch.cat([
                (torch.zeros_like(params[n]) if g is None else g).reshape(-1).float() for n, g in zip(names, gs)
            ]))
        return torch.stack(rows)

    def __call__(self, latents, text_emb, timesteps, noise, mask=None, probe=None) -> torch.Tensor:
        if self.mode == "vmap":
            try:
                with _plain_attention(getattr(self.model, "unet", None)):
                    return self._vmap(latents, text_emb, timesteps, noise, mask, probe)
            except (RuntimeError, NotImplementedError) as e:  # an op without a batching rule
                warnings.warn(f"per-sample gradients: vmap failed ({str(e).splitlines()[0]}); "
                              "falling back to a per-example loop", RuntimeWarning, stacklevel=2)
                self.mode = "loop"
        return self._loop(latents, text_emb, timesteps, noise, mask, probe)


@contextlib.contextmanager
def _plain_attention(unet):
    """Temporarily give a diffusers UNet the plain (bmm + softmax) attention processor: ``scaled_dot_product_attention``
    has no vmap batching rule on CPU and falls back to a slow per-example loop under ``vmap`` (measured ≈ 2.7× slower
    on the toy UNet). Same values up to float rounding; the original processors are restored afterwards."""
    procs = None
    if unet is not None and hasattr(unet, "attn_processors") and hasattr(unet, "set_attn_processor"):
        try:
            from diffusers.models.attention_processor import AttnProcessor

            procs = dict(unet.attn_processors)
            unet.set_attn_processor(AttnProcessor())
        except Exception:  # pragma: no cover - an exotic UNet: keep its processors
            procs = None
    try:
        yield
    finally:
        if procs is not None:
            unet.set_attn_processor(procs)


# -- random projection ----------------------------------------------------------------------------------------------
class Projector:
    """``x ↦ x @ P`` with ``P`` a seeded ``dim_in × dim_out`` random matrix generated in row blocks (see module doc)."""

    def __init__(self, dim_in: int, dim_out: int, seed: int, kind: str = "rademacher", device: str = "cpu",
                 max_cached_bytes: int = 1 << 28, block_rows: int | None = None):
        if kind not in PROJECTION_KINDS:
            raise UserError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTION_KINDS)}")
        if kind == "identity" and dim_out != dim_in:
            dim_out = dim_in
        if dim_out < 1:
            raise UserError(f"projection dimension must be positive, got {dim_out}")
        self.dim_in, self.dim_out, self.seed, self.kind = int(dim_in), int(dim_out), int(seed), kind
        self.device = torch.device(device)
        # the block layout is part of the matrix's definition (each block has its own seed): it depends only on
        # dim_out unless given, never on how much memory the caller allows
        self.block_rows = int(block_rows) if block_rows else max(1, (1 << 24) // self.dim_out)
        self._full: torch.Tensor | None = None
        if kind != "identity" and self.dim_in * self.dim_out * 4 <= max_cached_bytes:
            self._full = torch.cat([self.block(b) for b in range(self.num_blocks)], dim=0)

    @property
    def num_blocks(self) -> int:
        return -(-self.dim_in // self.block_rows)

    def block(self, b: int) -> torch.Tensor:
        """Rows ``[b·R, (b+1)·R)`` of the matrix (``R = block_rows``)."""
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, "projector", self.kind, self.dim_in, self.dim_out, b))
        scale = self.dim_out ** -0.5
        if self.kind == "gaussian":
            m = torch.randn(rows, self.dim_out, generator=gen, device=self.device)
        else:
            m = torch.randint(0, 2, (rows, self.dim_out), generator=gen, device=self.device).float().mul_(2).sub_(1)
        return m.mul_(scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim_in:
            raise ValueError(f"projector expects {self.dim_in} inputs, got {x.shape[-1]}")
        if self.kind == "identity":
            return x.float()
        x = x.to(self.device, torch.float32)
        if self._full is not None:
            return x @ self._full
        out = torch.zeros(x.shape[0], self.dim_out, device=self.device)
        for b in range(self.num_blocks):
            a = b * self.block_rows
            out += x[:, a:a + self.block_rows] @ self.block(b)
        return out


# -- feature extraction ---------------------------------------------------------------------------------------------
@dataclass
class GradItem:
    """One thing to take gradients of: its stable ``id`` (keys the noise), a ``C×H×W`` pixel image (or, with
    ``is_latent``, a latent), its captions and an optional ``H×W`` mask."""

    id: str
    image: torch.Tensor
    captions: tuple[str, ...]
    mask: torch.Tensor | None = None
    is_latent: bool = False


@dataclass(frozen=True)
class Draw:
    """One gradient sample of an item: DDPM timestep ``t``, caption index, and the key its noise derives from:
    ``item_noise(seed, noise_key, noise_index, t)`` with ``noise_index`` the caption index unless given."""

    t: int
    caption: int
    noise_key: str
    noise_index: int | None = None
    probe: int | None = None  # the Rademacher probe's index, for outputs in PROBE_OUTPUTS

    @property
    def noise_caption(self) -> int:
        return self.caption if self.noise_index is None else self.noise_index


def dataset_items(dataset, indices: Sequence[int] | None = None, flip: bool = False) -> Callable[[int], GradItem]:
    """A loader ``row -> GradItem`` over ``dataset`` (rows index ``indices`` when given); ``flip``: the horizontally
    flipped image under the same id (so it gets the same noise, as the unlearning score's flipped rows do)."""
    idx = list(range(len(dataset))) if indices is None else list(indices)

    def load(row: int) -> GradItem:
        ex = dataset.item(idx[row])
        return GradItem(ex.id, ex.image.flip(-1) if flip else ex.image, tuple(ex.captions))

    load.count = len(idx)  # type: ignore[attr-defined]
    return load


def gradient_features(
    model,
    load: Callable[[int], GradItem],
    count: int,
    draws: Callable[[GradItem], Sequence[Draw]],
    grad_fn: PerSampleGrad,
    projector: Projector | None = None,
    reduce: str = "mean",
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    desc: str = "gradients",
) -> torch.Tensor:
    """``count × k`` features: for each item, ``reduce`` (mean or sum) over its draws of the projected per-sample
    gradients (``k = P`` without a projector). Draws are processed ``batch_size`` at a time, in any grouping."""
    if reduce not in ("mean", "sum"):
        raise ValueError(reduce)
    dim = projector.dim_out if projector is not None else grad_fn.layout.dim
    out = torch.zeros(count, dim, dtype=torch.float64)
    counts = torch.zeros(count, dtype=torch.float64)
    plan: list[tuple[int, Draw]] = []
    items: dict[int, GradItem] = {}
    for row in range(count):
        it = load(row)
        ds = list(draws(it))
        if not ds:
            raise ValueError(f"no gradient draws for item {it.id!r}")
        plan.extend((row, d) for d in ds)
        counts[row] = len(ds)
        # keep only what a chunk needs: re-load lazily below for large sets
        if count <= 4096:
            items[row] = it
    from .progress import bar as progress_bar

    bar = progress_bar(total=len(plan), desc=desc, unit="grad", enabled=progress)
    latent_shape = None
    with torch.no_grad():
        for a in range(0, len(plan), batch_size):
            chunk = plan[a:a + batch_size]
            rows = [r for r, _ in chunk]
            uniq = sorted(set(rows))
            got = {r: items[r] if r in items else load(r) for r in uniq}
            pix = [r for r in uniq if not got[r].is_latent]
            lat_of: dict[int, torch.Tensor] = {}
            if pix:
                imgs = torch.stack([got[r].image for r in pix]).to(device, torch.float32)
                for r, z in zip(pix, model.latents(imgs)):
                    lat_of[r] = z
            for r in uniq:
                if got[r].is_latent:
                    lat_of[r] = got[r].image.to(device, torch.float32)
            latents = torch.stack([lat_of[r] for r in rows])
            if latent_shape is None:
                latent_shape = tuple(latents.shape[1:])
            caps = [got[r].captions[d.caption % len(got[r].captions)] for r, d in chunk]
            emb = model.text_embeddings(caps).to(device)
            ts = torch.tensor([d.t for _, d in chunk], dtype=torch.long, device=device)
            noise = torch.stack([item_noise(seed, d.noise_key, d.noise_caption, d.t, latent_shape) for _, d in chunk]).to(device)
            masks = [got[r].mask for r in rows]
            if any(m is not None for m in masks):
                h, w = next(m for m in masks if m is not None).shape[-2:]
                mask = torch.stack([
                    (m if m is not None else torch.ones(h, w)).float() for m in masks
                ]).to(device)
            else:
                mask = None
            probe = None
            if getattr(grad_fn, "target", None) in PROBE_OUTPUTS:
                probe = torch.stack([probe_noise(seed, d.noise_key, d.noise_caption, d.t, d.probe or 0, latent_shape)
                                     for _, d in chunk]).to(device)
            g = grad_fn(latents, emb, ts, noise, mask) if probe is None else grad_fn(latents, emb, ts, noise, mask, probe)
            if projector is not None:
                g = projector(g)
            out.index_add_(0, torch.tensor(rows), g.detach().to("cpu", torch.float64))
            bar.update(len(chunk))
    bar.close()
    if reduce == "mean":
        out /= counts[:, None]
    return out.float()


def _caption_indices(seed: int, namespace: str, item: GradItem, count: int, captions: str) -> list[int]:
    """Caption index per draw: ``"cycle"`` (draw j uses caption j mod n: every caption weighs the same),
    ``"random"`` (seeded by the item id) or ``"first"``."""
    from genattr.harness.seeding import generator

    n = max(1, len(item.captions))
    if captions == "cycle":
        return [j % n for j in range(count)]
    if captions == "first":
        return [0] * count
    if captions == "random":
        return torch.randint(0, n, (count,), generator=generator(seed, namespace, "captions", item.id)).tolist()
    raise UserError(f"unknown caption choice {captions!r}; use 'cycle', 'random' or 'first'")


def random_draws(seed: int, namespace: str, item: GradItem, count: int, num_train_timesteps: int,
                 shared: bool = False, captions: str = "cycle") -> list[Draw]:
    """``count`` random timesteps (without replacement when possible) and caption indices for one item.

    Per item (``shared=False``): timesteps and noise seeded by ``(seed, namespace, item id)``. Shared
    (``shared=True``, common random numbers): the timesteps and the noise are the same for every item and query —
    seeded by ``(seed, namespace)`` only — so items are compared at identical (t, ε) draws; captions stay per item
    (see :func:`_caption_indices`).
    """
    from genattr.harness.seeding import generator

    g = generator(seed, namespace, "draws", "<shared>" if shared else item.id)
    if count > num_train_timesteps:
        ts = torch.randint(0, num_train_timesteps, (count,), generator=g).tolist()
    else:
        ts = torch.randperm(num_train_timesteps, generator=g)[:count].tolist()
    caps = _caption_indices(seed, namespace, item, count, captions)
    key = f"<shared:{namespace}>" if shared else item.id
    return [Draw(int(t), int(c), key, 0 if shared else None) for t, c in zip(ts, caps)]


def strided_draws(seed: int, namespace: str, item: GradItem, count: int, num_train_timesteps: int,
                  shared: bool = False, captions: str = "cycle") -> list[Draw]:
    """D-TRAK's draws: ``count`` uniformly strided timesteps ``0, s, 2s, …``, one seeded noise per timestep (per item,
    or the same for every item with ``shared``), and a caption index per timestep (:func:`_caption_indices`)."""
    from genattr.harness.seeding import strided_timesteps

    ts = strided_timesteps(count, num_train_timesteps)
    caps = _caption_indices(seed, namespace, item, len(ts), captions)
    key = f"<shared:{namespace}>" if shared else item.id
    return [Draw(int(t), int(c), key, 0 if shared else None) for t, c in zip(ts, caps)]


def grid_draws(item: GradItem, timesteps: Sequence[int], captions: int | None = None) -> list[Draw]:
    """Every (caption, timestep) pair of the item's first ``captions`` captions (all when None) and ``timesteps``,
    each with the noise ``item_noise(seed, item id, caption index, t)`` — the rows the unlearning score averages."""
    n = len(item.captions) if captions is None else min(int(captions), len(item.captions))
    return [Draw(int(t), c, item.id) for c in range(max(n, 1)) for t in timesteps]


DRAW_KINDS = ("random", "strided", "grid")


def make_draws(spec: Mapping, seed: int, num_train_timesteps: int) -> Callable[[GradItem], list[Draw]]:
    """The draw function of a JSON-able description: ``{"kind": "random" | "strided", "count", "namespace",
    "shared", "captions"}`` (:func:`random_draws`, :func:`strided_draws`) or ``{"kind": "grid", "timesteps": [...],
    "captions": k or None}`` (:func:`grid_draws`)."""
    kind = spec.get("kind")
    if kind in ("random", "strided"):
        fn = random_draws if kind == "random" else strided_draws
        count, ns = int(spec["count"]), str(spec["namespace"])
        shared, caps = bool(spec.get("shared", False)), str(spec.get("captions", "cycle"))
        return lambda item: fn(seed, ns, item, count, num_train_timesteps, shared=shared, captions=caps)
    if kind == "grid":
        ts = [int(t) for t in spec["timesteps"]]
        if not ts or min(ts) < 0 or max(ts) >= num_train_timesteps:
            raise UserError(f"grid draws need timesteps in 0..{num_train_timesteps - 1}, got {ts}")
        caps = spec.get("captions")
        return lambda item: grid_draws(item, ts, caps)
    raise UserError(f"unknown draw scheme {kind!r}; choose one of {', '.join(DRAW_KINDS)}")


def kernel_inverse(gram: torch.Tensor, lam: float, rtol: float = 1e-10, dtype=torch.float64) -> torch.Tensor:
    """``(G + λI)⁻¹`` of a symmetric ``k×k`` Gram matrix by an eigendecomposition in ``dtype``; with ``λ = 0`` a
    pseudo-inverse (eigenvalues below ``rtol × max`` dropped)."""
    evals, evecs = torch.linalg.eigh(gram.to(dtype))
    evals = evals + lam
    keep = evals > rtol * evals.abs().max().clamp_min(torch.finfo(dtype).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def kernel_solve(phi: torch.Tensor, lam: float, rtol: float = 1e-10, dtype=torch.float64) -> torch.Tensor:
    """``Φ (ΦᵀΦ + λI)⁻¹`` (``N×k``), by :func:`kernel_inverse` of the ``k×k`` Gram matrix."""
    f = phi.to(dtype)
    return f @ kernel_inverse(f.T @ f, lam, rtol, dtype)
