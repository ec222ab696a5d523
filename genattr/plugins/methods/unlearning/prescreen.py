"""Prescreen + exact refinement: a cheap ranking of the whole pool, the exact score on its head.

* ``linear`` — the first-order term of τ: ``τ_lin(ẑ, z) = g_zᵀ Δθ`` with ``g_z = ∇θ L(z, θ0)`` over the updated
  weights, taken with exactly the scoring settings (the same strided timesteps, the noise
  ``item_noise(seed, id, caption, t)``, the same captions, the image and — with flips — its mirror image as two
  views combined by ``flip`` like the exact score), and ``Δθ = θ₋ẑ − θ0``. The per-item gradients come from the
  gradient store (:mod:`genattr.harness.gradstore`): computed once per (model, dataset, weights, scoring settings,
  seed), on disk, memory-mapped, optionally randomly projected (then ``Δθ`` is projected with the same matrix:
  ``(Pᵀg)ᵀ(PᵀΔθ) ≈ gᵀΔθ``) and stored in float16 or float32. It pays off where queries share one model.
* ``coarse`` — the exact score with a strided subset of the scoring timesteps (``coarse_timesteps``), over the
  pool; its θ0 losses are cached like the full ones.

:func:`merge_head` then gives the top ``refine`` items of the prescreen their exact score and keeps the rest in
prescreen order strictly below the head.
"""

from __future__ import annotations

from typing import Mapping, Sequence


def coarse_subset(scoring: Sequence[int], coarse) -> list[int]:
    """The coarse prescreen's timesteps: an explicit list (each must be a scoring timestep), or a count ``k`` — every
    ``(T // k)``-th scoring timestep from the first, ``k`` of them (so t = 0 and the stride are kept)."""
    from genattr.harness.errors import UserError

    scoring = [int(t) for t in scoring]
    if isinstance(coarse, (list, tuple)):
        bad = [int(t) for t in coarse if int(t) not in scoring]
        if bad:
            raise UserError(f"unlearning: coarse_timesteps {bad} are not scoring timesteps {scoring}")
        return sorted({int(t) for t in coarse})
    k = min(int(coarse), len(scoring))
    step = len(scoring) // k
    return [scoring[i * step] for i in range(k)]


def combine_flips(tau, flip: str):
    """``N × views`` → ``N`` as the exact score combines the image and its mirror image."""
    if flip == "none":
        return tau[:, 0]
    return tau.max(1) if flip == "max" else tau.mean(1)


def flat_delta(theta: Mapping, theta0: Mapping, names: Sequence[str]):
    """``θ − θ0`` flattened in the order of ``names`` (the gradient store's layout), float64."""
    import torch

    return torch.cat([(theta[n].detach().double() - theta0[n].detach().double()).reshape(-1).cpu() for n in names])


def linear_spec(cfg: Mapping, timesteps: Sequence[int], seed: int):
    """The gradient-store spec of the linear prescreen: the scoring rows' loss gradients over the updated weights."""
    from genattr.harness.gradstore import GradientSpec

    proj = cfg["prescreen_projection"]
    return GradientSpec(
        selection=cfg["selection"], output="loss",
        draws={"kind": "grid", "timesteps": [int(t) for t in timesteps], "captions": cfg["captions"]},
        flips=cfg["flip"] != "none", reduce="mean", projection=proj,
        proj_dim=None if proj == "identity" else int(cfg["prescreen_dim"]), proj_seed=int(seed),
        dtype=cfg["prescreen_dtype"], seed=int(seed), batch_size=int(cfg["fisher_batch"]), grad_mode=cfg["per_sample"],
    )


def linear_scores(store, stored, model, spec, thetas: Sequence[Mapping], rows: Sequence[int] | None, flip: str,
                  device="cpu"):
    """``Q × len(rows)`` first-order scores ``g_zᵀΔθ_q`` (combined over views by ``flip``) from the stored
    gradients; one streamed pass for every query."""
    import numpy as np
    import torch

    theta0 = store.parameters(model, spec)
    deltas = torch.stack([flat_delta(th, theta0, stored.names) for th in thetas])  # Q × P
    proj = store.projector(model, spec, device)
    if proj is not None:
        deltas = proj(deltas.float()).double().cpu()
    dots = stored.dot(deltas, rows=rows)  # rows × views × Q
    return np.stack([combine_flips(dots[:, :, q], flip) for q in range(len(thetas))])


def heads(pre, m: int):
    """Per query, the positions of the ``m`` highest prescreen scores (ties by position)."""
    import numpy as np

    order = np.argsort(-np.asarray(pre), axis=1, kind="stable")
    return order[:, :m]


def merge_head(pre, head, exact):
    """Scores of one query: the head's exact scores; every other item its prescreen score shifted to lie strictly
    below the head's minimum (order among them preserved)."""
    import numpy as np

    pre = np.asarray(pre, dtype=np.float64)
    out = pre.copy()
    rest = np.ones(len(pre), dtype=bool)
    rest[head] = False
    exact = np.asarray(exact, dtype=np.float64)
    if rest.any() and len(exact):
        top = float(pre[rest].max())
        scale = max(float(np.abs(exact).max()), float(np.abs(pre[rest]).max()), 1e-300)
        gap = 1e-9 * scale
        out[rest] = pre[rest] - top + float(exact.min()) - gap
    out[head] = exact
    return out
