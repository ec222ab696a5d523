"""Verification: does each customized model reproduce its concept? (Checked before any measurement.)

The built-in concepts know the scene behind each query prompt: the *render* check draws that scene as every concept
of the split would show it and as plain base data, and counts a query for its concept when its own rendering is the
nearest (pixel MSE); a concept passes when more of its queries land on it than chance (1 / (concepts + 1)). Also
recorded (and used as the verdict where no scenes are known): the concept (of the split) whose exemplars each query is
most similar to, in flattened pixels (cosine, max over a horizontal flip) and in a layout-free style descriptor (the
Gram matrix of 3×3 pixel patches, plus channel means), against chance 1 / concepts; and the similarity lift of the
customized samples over the base model's samples for the same prompts without ``<v*>``. A failure is one warning
(``verify="error"`` raises instead, ``verify="off"`` skips the check).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from genattr.harness.api import RunEnv
from genattr.harness.errors import UserError

log = logging.getLogger("genattr.benchmarks.customized_model")


def _stack(images):
    import torch

    return torch.stack([i.float() for i in images])


def pixel_features(images):
    """Flattened pixels, L2-normalised; ``(B, D)`` and the features of the horizontal flips."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    f = F.normalize(x.reshape(x.shape[0], -1), dim=1)
    ff = F.normalize(torch.flip(x, dims=[-1]).reshape(x.shape[0], -1), dim=1)
    return f, ff


def style_features(images):
    """A layout-free style descriptor: channel means plus the (upper triangle of the) Gram matrix of 3×3 pixel
    patches, L2-normalised. Flip-invariant up to the patch orientation."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    b, c = x.shape[:2]
    patches = F.unfold(x, kernel_size=3, padding=1)  # B × 9C × HW
    gram = patches @ patches.transpose(1, 2) / patches.shape[-1]
    iu = torch.triu_indices(gram.shape[1], gram.shape[2])
    feats = torch.cat([x.mean(dim=(2, 3)), gram[:, iu[0], iu[1]]], dim=1)
    feats = feats - feats.mean(dim=1, keepdim=True)
    return F.normalize(feats, dim=1), None


def _similarity(space: str, queries, exemplars):
    """``Q × E`` similarity of queries to exemplars in one feature space."""
    if space == "pixel":
        qf, qff = pixel_features(queries)
        ef, _ = pixel_features(exemplars)
        return (qf @ ef.T).maximum(qff @ ef.T)
    qf, _ = style_features(queries)
    ef, _ = style_features(exemplars)
    return qf @ ef.T


def verify_cases(cases: Sequence[Any], env: RunEnv, base_model=None, steps: int = 50) -> dict:
    """Check that every customized model reproduces its concept (see the module docstring). Sets
    ``case.verification`` and returns ``{"concepts": {id: figures}, "passed": bool, "failed": [ids]}``."""
    import torch

    out = {}
    by_split: dict = {}
    for k in cases:
        by_split.setdefault(k.split, []).append(k)
    for split, ks in by_split.items():
        chance = 1.0 / len(ks)
        for k in ks:
            q = _stack([x.image for x in k.queries])
            fig: dict = {"chance": chance}
            ok = False
            for space in ("pixel", "style"):
                sims = torch.stack([_similarity(space, q, o.exemplars.images()).amax(dim=1) for o in ks], dim=1)
                own_col = [o.id for o in ks].index(k.id)
                acc = float((sims.argmax(dim=1) == own_col).float().mean())
                own = float(sims[:, own_col].mean())
                others = [float(sims[:, j].mean()) for j in range(len(ks)) if j != own_col]
                fig[space] = {"nearest_own": acc, "sim_own": own,
                              "sim_other": (sum(others) / len(others)) if others else None}
                if len(ks) > 1 and acc > chance:
                    ok = True
            if k.concept is not None and all(_renders_scenes(o.concept) for o in ks):
                # the strongest check available decides on its own
                fig["render"] = _render_check(k, ks, q)
                ok = fig["render"]["nearest_own"] > fig["render"]["chance"]
            if base_model is not None:
                prompts = [p.replace(k.token, " ").replace("  ", " ").strip() for p in k.prompts]
                from .cases import synthesize

                base_imgs = synthesize(env, base_model, prompts, k.seeds, steps)
                lift = {}
                for space in ("pixel", "style"):
                    s_cust = _similarity(space, q, k.exemplars.images()).amax(dim=1).mean()
                    s_base = _similarity(space, base_imgs, k.exemplars.images()).amax(dim=1).mean()
                    lift[space] = float(s_cust - s_base)
                fig["lift_over_base"] = lift
                if len(ks) == 1 and "render" not in fig and max(lift.values()) > 0:
                    ok = True
            fig["passed"] = ok
            k.verification = fig
            out[k.id] = fig
    failed = sorted(i for i, f in out.items() if not f["passed"])
    return {"concepts": out, "passed": not failed, "failed": failed,
            "rule": "built-in concepts: render check above chance; otherwise nearest-concept accuracy above chance "
                    "in pixel or style space (single concept in a split: closer to its exemplars than the base "
                    "model's samples)"}


def _render_check(case, split_cases: Sequence[Any], queries) -> dict:
    """Concepts that know the scene behind each query prompt (``query_specs``, with ``render(spec, resolution)`` and
    ``render_plain(spec, resolution)``): render that scene as every concept of the split would show it, and as the
    plain base data shows it; a query counts for its concept when the concept's rendering is its nearest (pixel MSE,
    min over a horizontal flip). Chance: 1 / (concepts in the split + 1)."""
    specs = case.concept.query_specs
    scenes = [specs[qi % len(specs)] for qi in range(queries.shape[0])]
    nearest = nearest_renderings(case, split_cases, scenes, queries)
    return {"nearest_own": sum(n == case.id for n in nearest) / len(nearest),
            "chance": 1.0 / (len(split_cases) + 1)}


def nearest_renderings(case, split_cases: Sequence[Any], scenes: Sequence[dict], images) -> list[str]:
    """For each image, the rendering of its scene (``scenes[i]``) nearest to it — the id of a concept of the split,
    or ``"plain"`` for the base data's rendering (``case``'s ``render_plain``) — by pixel MSE, min over a horizontal
    flip of the image. The render check counts the images whose nearest is their own concept."""
    import torch

    labels = [o.id for o in split_cases] + ["plain"]
    res = images.shape[-1]
    out = []
    for spec, x in zip(scenes, images):
        cands = [o.concept.render(spec, res) for o in split_cases]
        cands.append(case.concept.render_plain(spec, res))
        cands = torch.stack(cands).float()
        x = x.float()
        d = torch.minimum(((cands - x) ** 2).mean(dim=(1, 2, 3)),
                          ((cands - torch.flip(x, dims=[-1])) ** 2).mean(dim=(1, 2, 3)))
        out.append(labels[int(d.argmin())])
    return out


def _renders_scenes(concept) -> bool:
    return bool(getattr(concept, "query_specs", None)) and callable(getattr(concept, "render", None)) and \
        callable(getattr(concept, "render_plain", None))


def failure_reason(concept_id: str, fig: dict) -> str:
    """Why one concept failed its verification, in words and figures: the render check's share against its chance,
    and whether its queries are nonetheless nearest its own exemplars in pixels or style (then the model copies the
    concept but does not compose the prompted scene — longer customization does not fix that); without a render
    check, the nearest-concept shares."""
    near = {s: fig[s]["nearest_own"] for s in ("pixel", "style") if isinstance(fig.get(s), dict)}
    shares = ", ".join(f"{s} {v:.2f}" for s, v in near.items())
    if "render" in fig:
        r = fig["render"]
        out = (f"{concept_id}: {r['nearest_own']:.2f} of its queries show the prompted scene in its concept "
               f"(render check, chance {r['chance']:.2f})")
        if any(v > fig["chance"] for v in near.values()):
            out += (f", yet more than chance ({fig['chance']:.2f}) are nearest its own exemplars ({shares}): it "
                    "reproduces the concept but not the prompt's composition")
        return out
    return f"{concept_id}: nearest-concept share {shares} (chance {fig['chance']:.2f})"


def act_on_verification(verification: dict, mode: str) -> None:
    """One line naming every failed concept and why (:func:`failure_reason`); a warning, or with
    ``mode="error"`` a :class:`UserError`."""
    if not verification.get("failed"):
        return
    figs = verification.get("concepts", {})
    reasons = "; ".join(failure_reason(c, figs[c]) if c in figs else c for c in verification["failed"])
    msg = (f"customized-model: {len(verification['failed'])} customized model(s) fail the concept check, so their "
           f"attribution results measure nothing and the leaderboard leaves them out (--include-unverified keeps "
           f"them) — {reasons}. At scale tiny the customization is short and most concepts are not learned; a model "
           "that reproduces its concept but not the prompt's composition is not fixed by longer customization "
           "(docs/benchmarks/customized-model.md, Verification).")
    if mode == "error":
        raise UserError(msg)
    log.warning(msg)
