"""Prescreen + exact refinement: a cheap ranking of the whole pool, the exact score on its head.

* ``linear`` — the Taylor expansion of τ at θ0 in ``Δθ = θ₋ẑ − θ0``. First order (``prescreen_order=1``):
  ``g_zᵀΔθ`` with ``g_z = ∇θ L(z, θ0)`` over the updated weights, taken with exactly the scoring settings (the same
  strided timesteps, the noise ``item_noise(seed, id, caption, t)``, the same captions, the image and — with flips —
  its mirror image as two views combined by ``flip`` like the exact score). Second order (``prescreen_order=2``,
  the default): plus the Gauss–Newton term ``(1/R) Σ_r ‖J_r Δθ‖²/d`` of the noise-prediction loss (``J_r`` the
  Jacobian of ε_θ at row r of the item's R scoring rows, d the latent size), estimated without bias by Hutchinson
  probes: ``w_s = Σ_r J_rᵀ v_{r,s}/√d`` with seeded Rademacher ``v`` (output function ``eps-probe``), so
  ``E[(w_sᵀΔθ)²] = Σ_r ‖J_r Δθ‖²/d``, averaged over ``prescreen_probes`` = S probes. Measured on the leave-K-out
  ``small`` digits model (docs/methods/unlearning.md): the calibrated step is far from the linear regime — every
  item's loss rises, so the ranking follows the curvature term and the first-order term alone has Spearman
  ρ ≈ 0–0.4 with τ; with the exact Gauss–Newton term ρ ≈ 0.7–0.9. Not in the paper (which scores exhaustively); the
  paper's own remark is that one infinitesimal step with a linearised loss is an influence function.
  The per-item vectors come from the gradient store (:mod:`genattr.harness.gradstore`): computed once per (model,
  dataset, weights, scoring settings, seed), on disk, memory-mapped, optionally randomly projected (then ``Δθ`` is
  projected with the same matrix: ``(Pᵀg)ᵀ(PᵀΔθ) ≈ gᵀΔθ``) and stored in float16 or float32. One-off cost: ``(1 + S)``
  per-sample gradients per scoring row; it pays off where many queries share one model.
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


def linear_spec(cfg: Mapping, timesteps: Sequence[int], seed: int, second: bool = False):
    """The gradient-store spec of the linear prescreen: the scoring rows' loss gradients over the updated weights
    (``second``: the Hutchinson probe vectors of its second-order term)."""
    from genattr.harness.gradstore import GradientSpec

    proj = cfg["prescreen_projection"]
    return GradientSpec(
        selection=cfg["selection"], output="eps-probe" if second else "loss",
        draws={"kind": "grid", "timesteps": [int(t) for t in timesteps], "captions": cfg["captions"]},
        flips=cfg["flip"] != "none", reduce="sum" if second else "mean", projection=proj,
        proj_dim=None if proj == "identity" else int(cfg["prescreen_dim"]), proj_seed=int(seed),
        dtype=cfg["prescreen_dtype"], seed=int(seed), probes=int(cfg["prescreen_probes"]) if second else 0,
        batch_size=int(cfg["fisher_batch"]), grad_mode=cfg["per_sample"],
    )


def _deltas(store, stored, model, spec, thetas, device):
    import torch

    theta0 = store.parameters(model, spec)
    deltas = torch.stack([flat_delta(th, theta0, stored.names) for th in thetas])  # Q × P
    proj = store.projector(model, spec, device)
    if proj is not None:
        deltas = proj(deltas.float()).double().cpu()
    return deltas


def linear_scores(store, stored, model, spec, thetas: Sequence[Mapping], rows: Sequence[int] | None, flip: str,
                  device="cpu", second=None):
    """``Q × len(rows)`` Taylor scores (combined over views by ``flip``) from the stored vectors, one streamed pass
    for every query: ``g_zᵀΔθ_q``, plus with ``second = (stored probes, their spec, rows per item)`` the
    Gauss–Newton term ``mean_s (w_{z,s}ᵀΔθ_q)² / R_z``."""
    import numpy as np

    deltas = _deltas(store, stored, model, spec, thetas, device)
    tau = stored.dot(deltas, rows=rows)  # rows × views × Q
    if second is not None:
        stored_q, spec_q, counts = second
        S = max(1, int(spec_q.probes))
        w = stored_q.dot(deltas, rows=rows)  # rows × (flips · S) × Q
        quad = (w.reshape(w.shape[0], -1, S, w.shape[2]) ** 2).mean(2)
        tau = tau + quad / np.asarray(counts, dtype=np.float64)[:, None, None]
    return np.stack([combine_flips(tau[:, :, q], flip) for q in range(len(thetas))])


def rows_per_item(dataset, captions: int | None, timesteps: int, rows: Sequence[int] | None = None):
    """The number of scoring rows R_z (captions scored × timesteps) of each item (``rows``: those items only)."""
    import numpy as np

    idx = range(len(dataset)) if rows is None else rows
    caps = [len(dataset.captions(int(i))) for i in idx]
    return np.asarray([(c if captions is None else min(int(captions), c)) * int(timesteps) for c in caps])


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
