"""The unlearning update: the query's seeded draws, its gradient, and the Newton (or SGD) steps."""

from __future__ import annotations

from typing import Any, Mapping

from genattr.harness.api import Query


def _device_of(model):
    try:
        return next(model.unet.parameters()).device
    except (AttributeError, StopIteration):
        import torch

        return torch.device("cpu")


class _eval_mode:
    """Put the UNet in eval mode for the duration, restoring its previous mode afterwards."""

    def __init__(self, model):
        self.unet = getattr(model, "unet", None)

    def __enter__(self):
        if self.unet is not None and hasattr(self.unet, "train"):
            self.was_training = bool(getattr(self.unet, "training", False))
            self.unet.eval()
        return self

    def __exit__(self, *exc):
        if self.unet is not None and hasattr(self.unet, "train") and self.was_training:
            self.unet.train()


def query_draws(seed: int, query_id: str, step: int, count: int, num_train_timesteps: int,
                scheme: str = "random") -> list[int]:
    """The timesteps of one unlearning step's ``count`` draws.

    ``"random"`` (the paper: without replacement): consecutive seeded permutations of ``0 … T − 1``, so no timestep
    repeats before every one has been drawn. ``"stratified"``: ``0 … T`` cut into ``count`` equal strata, one seeded
    uniform timestep in each (lower variance of the averaged gradient for the same number of draws; not in the
    paper)."""
    from genattr.harness.seeding import numpy_rng

    if scheme == "stratified":
        u = numpy_rng(seed, "unlearning/query-t-stratified", query_id, step).random(count)
        return [min(int((j + u[j]) * num_train_timesteps / count), num_train_timesteps - 1) for j in range(count)]
    out: list[int] = []
    cycle = 0
    while len(out) < count:
        perm = numpy_rng(seed, "unlearning/query-t", query_id, step, cycle).permutation(num_train_timesteps)
        out.extend(int(x) for x in perm[: count - len(out)])
        cycle += 1
    return out


def query_gradient(model, params: Mapping[str, Any], latents, text_emb, query_id: str, step: int, seed: int,
                   batch: int, accumulation: int, mask=None, timesteps: str = "random", with_loss: bool = False):
    """∇θ of the query's mean noise loss over ``batch × accumulation`` draws (timesteps from :func:`query_draws`,
    noise from (seed, query id, step, draw index)). ``latents``/``text_emb``: ``1 × …``; ``mask``: ``H×W`` or None.
    With ``with_loss``: ``(gradients, mean loss over the draws)``."""
    import torch

    from genattr.harness.seeding import generator

    dev = latents.device
    total = batch * accumulation
    ts = query_draws(seed, query_id, step, total, int(model.num_train_timesteps), timesteps)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    grads = {k: torch.zeros_like(v) for k, v in p.items()}
    total_loss = 0.0
    shape = tuple(latents.shape[1:])
    for a in range(accumulation):
        js = range(a * batch, (a + 1) * batch)
        noise = torch.stack([torch.randn(shape, generator=generator(seed, "unlearning/query-noise", query_id, step, j))
                             for j in js]).to(dev, latents.dtype)
        t = torch.tensor([ts[j] for j in js], device=dev, dtype=torch.long)
        m = None if mask is None else mask.to(dev, latents.dtype)[None].expand(batch, *mask.shape)
        loss = model.denoise_loss(latents.expand(batch, *shape), text_emb.expand(batch, *text_emb.shape[1:]), t,
                                  noise, mask=m, params=p).sum() / total
        gs = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
        total_loss += float(loss.detach())
        for k, g in zip(p, gs):
            if g is not None:
                grads[k] += g
    return (grads, total_loss) if with_loss else grads


#: How the size of each unlearning step is set. ``"fixed"`` is the paper's rule; the others are not in the paper.
STEP_RULES = ("fixed", "fisher-norm", "loss-target")


def preconditioned_norm_sq(g: Mapping[str, Any], precond: Mapping[str, Any]) -> float:
    """``gᵀP⁻¹g`` over every selected tensor (float64)."""
    return float(sum(float((g[k].double() ** 2 / precond[k].double()).sum()) for k in g))


def step_scale(rule: str, gpg: float, *, alpha: float, n_train: int, steps: int, step_norm: float,
               loss_target: float, loss: float) -> float:
    """The scalar c of one step ``Δθ = c · P⁻¹ g`` (``P`` the clamped Fisher for Newton, 1 for SGD; ``gpg`` =
    ``gᵀP⁻¹g``, :func:`preconditioned_norm_sq`).

    * ``"fixed"`` (the paper): ``c = α / N`` for Newton (``α`` for SGD, where ``n_train`` is passed as 1) — the same
      for every query.
    * ``"fisher-norm"``: ``c = ε / √(gᵀP⁻¹g)``, so every step has the same length ``‖Δθ‖_P = √(Δθᵀ P Δθ) = ε``
      (``step_norm``) whatever the size of the query's gradient: a trust region in the Fisher metric.
    * ``"loss-target"``: ``c = (ρ^{1/steps} − 1) · L / (gᵀP⁻¹g)``, the step whose linearised loss change
      ``gᵀΔθ`` raises the query's mean loss ``L`` on the step's own draws by the factor ``ρ^{1/steps}``
      (``loss_target`` = ρ), so that the ``steps`` steps together aim at ``L / L₀ ≈ ρ`` for every query."""
    if rule == "fixed":
        return alpha / n_train
    if not gpg > 0:
        return 0.0
    if rule == "fisher-norm":
        return step_norm / gpg ** 0.5
    if rule == "loss-target":
        return (loss_target ** (1.0 / max(int(steps), 1)) - 1.0) * max(loss, 0.0) / gpg
    raise ValueError(f"unknown step rule {rule!r}")


def unlearn(model, query: Query, fisher: Mapping[str, Any] | None, *, selection: str, steps: int, alpha: float,
            n_train: int, batch: int, accumulation: int, seed: int, variant: str = "newton",
            fisher_floor: float = 1e-6, timesteps: str = "random", step_rule: str = "fixed",
            step_norm: float = 1.0, loss_target: float = 2.0, trace: list | None = None) -> dict:
    """The unlearned weights ``{name: tensor}`` (detached copies of the ``selection``) after ``steps`` updates
    ``θ ← θ + (α/N) F⁻¹ ∇θ L(ẑ, θ)`` (``variant="newton"``) or ``θ ← θ + α ∇θ L(ẑ, θ)`` (``"sgd"``). The model
    itself is not modified. ``step_rule`` other than ``"fixed"`` sets each step's size per query instead of α/N
    (:func:`step_scale`); ``trace``, when given, receives per step the query's mean loss on the step's draws, c,
    the step's Fisher length ``c·√(gᵀP⁻¹g)`` and its linearised loss rise ``c·gᵀP⁻¹g``."""
    import torch

    from .fisher import clamp_fisher

    dev = _device_of(model)
    theta = {k: v.detach().clone() for k, v in model.parameters(selection).items()}
    if variant == "newton":
        if fisher is None:
            raise ValueError("variant 'newton' needs a Fisher diagonal")
        missing = sorted(set(theta) - set(fisher))
        if missing or any(tuple(fisher[k].shape) != tuple(theta[k].shape) for k in theta):
            from genattr.harness.errors import UserError

            raise UserError(f"unlearning: the Fisher does not cover the model's {selection!r} weights "
                            f"({missing[0] if missing else 'shapes differ'}); with fisher_model 'base' the base "
                            "model must have the customized model's architecture")
        fc = clamp_fisher(fisher, fisher_floor)
        precond = {k: fc[k].to(dev, theta[k].dtype) for k in theta}
    else:
        precond = {k: torch.ones_like(theta[k]) for k in theta}
        n_train = 1
    with _eval_mode(model):
        with torch.no_grad():
            lat = model.latents(query.image[None].to(dev))
            emb = model.text_embeddings([query.prompt])
        mask = None
        if query.mask is not None:
            mask = torch.as_tensor(query.mask, dtype=lat.dtype)
            if mask.ndim == 3:
                mask = mask[0]
        for s in range(steps):
            g, loss = query_gradient(model, theta, lat, emb, str(query.id), s, seed, batch, accumulation, mask=mask,
                                     timesteps=timesteps, with_loss=True)
            with torch.no_grad():
                gpg = preconditioned_norm_sq(g, precond)
                c = step_scale(step_rule, gpg, alpha=alpha, n_train=n_train, steps=steps, step_norm=step_norm,
                               loss_target=loss_target, loss=loss)
                for k in theta:
                    theta[k] = theta[k] + (c / precond[k]) * g[k]
            if trace is not None:
                trace.append({"step": s, "loss": loss, "scale": c, "fisher_length": c * gpg ** 0.5,
                              "predicted_rise": c * gpg})
    return theta
