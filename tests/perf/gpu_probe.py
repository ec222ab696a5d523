"""Measure genattr's GPU path in one short run (the figures in docs/performance.md, "GPU").

    PYTHONPATH=. python tests/perf/gpu_probe.py --out probe.json            # on a CUDA machine, ~6 min
    PYTHONPATH=. python tests/perf/gpu_probe.py --quick --device cpu        # a smoke test of the script itself

Two models:

* the built-in ``small`` recipe (tiny-t2i, shapes, 16 px RGB, UNet blocks (32, 64)): training images/s by batch
  size in fp32 and under bf16 autocast, loss-evaluation samples/s, sampling images/s, and unlearning per query
  (small preset, 2,000-item pool, 8 queries scored together) exhaustive vs the linear prescreen;
* the paper's MSCOCO latent-diffusion UNet (blocks 128/256/256/256, two layers, cross-attention dim 1024, 16×16×4
  latents; PAPER_NOTES §2) on random latents and text embeddings: training images/s at batch 128, loss-evaluation
  samples/s, per-sample K/V gradients/s — and what they imply for the paper's costs (200 epochs of COCO; one
  exhaustive unlearning query's 118,287 × 20 timesteps × 5 captions loss evaluations).

Every timing is the median of repeated runs after warm-up, synchronised; each section stops early when it has used
its time budget. Results: one JSON document (``--out``) and a printed summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeats=5, warmup=2, budget=30.0):
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` (fewer when ``budget`` runs out)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    t_end = time.perf_counter() + budget
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return statistics.median(times)


def autocast(device, bf16: bool):
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


# -- the built-in small recipe ------------------------------------------------------------------------------------
def probe_small(device, quick: bool, out: dict) -> None:
    import torch

    import genattr
    from genattr.plugins.models.recipes import recipe
    from genattr.plugins.models.tiny_t2i import TinyT2I

    r = recipe("shapes", "small")
    n = 64 if quick else 2000
    data = genattr.get_dataset("shapes", **{**r["dataset"], "n": n})
    model = TinyT2I.for_dataset(data, **r["model"]).to(device)
    res = {"parameters": sum(p.numel() for p in model.unet.parameters()),
           "kv_parameters": sum(p.numel() for p in model.parameters("cross-attn-kv").values())}
    unet = model.unet
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    train = {}
    for bs in ([64] if quick else [64, 256, 1024]):
        x = data.images(list(range(min(bs, n))))
        x = x.repeat(-(-bs // x.shape[0]), 1, 1, 1)[:bs].to(device)
        caps = [data.captions(i % n)[0] for i in range(bs)]
        emb = model.text_embeddings(caps).detach()
        for bf16 in ((False,) if quick else (False, True)):
            def step():
                t = torch.randint(0, 1000, (bs,), device=device)
                eps = torch.randn_like(x)
                with autocast(device, bf16):
                    loss = model.denoise_loss(model.latents(x), emb, t, eps).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            s = timed(step, device, repeats=3 if quick else 10, budget=20)
            train[f"b{bs}-{'bf16' if bf16 else 'fp32'}"] = round(bs / s, 1)
    res["train_images_per_s"] = train
    loss = {}
    for bs in ([256] if quick else [256, 1024, 4096, 16384]):
        x = data.images([i % n for i in range(min(bs, 4096))])
        x = x.repeat(-(-bs // x.shape[0]), 1, 1, 1)[:bs].to(device)
        emb = model.text_embeddings([data.captions(i % n)[0] for i in range(min(bs, 4096))]).detach()
        emb = emb.repeat(-(-bs // emb.shape[0]), 1, 1)[:bs]
        t = torch.randint(0, 1000, (bs,), device=device)
        eps = torch.randn_like(x)
        for bf16 in ((False,) if quick else (False, True)):
            def ev():
                with torch.inference_mode(), autocast(device, bf16):
                    model.denoise_loss(model.latents(x), emb, t, eps)

            loss[f"b{bs}-{'bf16' if bf16 else 'fp32'}"] = round(bs / timed(ev, device, budget=15), 1)
    res["loss_samples_per_s"] = loss
    k = 16 if quick else 256
    steps = 5 if quick else 50
    s = timed(lambda: model.generate(["a red circle on the left"] * k, list(range(k)), steps=steps), device,
              repeats=2, warmup=1, budget=30)
    res["sampling_images_per_s"] = {f"b{k}-{steps}steps": round(k / s, 1)}
    # unlearning per query, 8 queries scored together, exhaustive vs linear prescreen
    from genattr.harness.api import AttributionContext, Query
    from genattr.harness.cache import Cache

    import tempfile

    qs = [Query(id=f"q{j}", image=data.images([j])[0], prompt=data.captions(j)[0]) for j in range(8)]
    unl = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("none", "linear"):
            quick_opts = dict(fisher_samples=32, batch=4, accumulation=1, steps=1) if quick else {}
            m = genattr.get_method("unlearning", preset="small", prescreen=mode, refine=16 if quick else 100,
                                   **quick_opts)
            ctx = AttributionContext(model=model, train_set=data, cache=Cache(tmp), device=str(device), seed=0,
                                     scale="small")
            t0 = time.perf_counter()
            m.prepare(ctx)
            m.attribute(ctx, qs[:1])  # one-off costs (Fisher, θ0 losses, gradient store)
            _sync(device)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            m.attribute(ctx, qs)
            _sync(device)
            unl[mode] = {"one_off_s": round(first, 2), "per_query_s": round((time.perf_counter() - t0) / len(qs), 3)}
    res["unlearning_small_pool"] = {"pool": n, **unl}
    out["small_recipe"] = res


# -- the paper's MSCOCO UNet --------------------------------------------------------------------------------------
def probe_paper_unet(device, quick: bool, out: dict) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from genattr.plugins.models.diffusers_adapter import RECIPES

    cfg = dict(RECIPES["paper"]["model"]["unet"])
    if quick:
        cfg.update(block_out_channels=[32, 32, 32, 32], attention_head_dim=[2, 2, 2, 2], cross_attention_dim=64)
    unet = UNet2DConditionModel(**cfg).to(device)
    d = cfg["cross_attention_dim"]
    res = {"parameters": sum(p.numel() for p in unet.parameters()),
           "kv_parameters": sum(p.numel() for n_, p in unet.named_parameters()
                                if "attn2" in n_ and ("to_k" in n_ or "to_v" in n_))}
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def batch(bs):
        x = torch.randn(bs, 4, 16, 16, device=device)
        return x, torch.randn(bs, 77, d, device=device), torch.randint(0, 1000, (bs,), device=device)

    train = {}
    bs = 16 if quick else 128
    x, emb, t = batch(bs)
    for bf16 in (False, True):
        def step():
            with autocast(device, bf16):
                pred = unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]
                loss = ((pred.float() - x) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train[f"b{bs}-{'bf16' if bf16 else 'fp32'}"] = round(bs / timed(step, device, repeats=5, budget=40), 1)
    res["train_images_per_s"] = train
    loss = {}
    for bs in ([16] if quick else [256, 1024]):
        x, emb, t = batch(bs)
        for bf16 in (False, True):
            def ev():
                with torch.inference_mode(), autocast(device, bf16):
                    unet(x, t, encoder_hidden_states=emb, return_dict=False)

            loss[f"b{bs}-{'bf16' if bf16 else 'fp32'}"] = round(bs / timed(ev, device, budget=20), 1)
    res["loss_samples_per_s"] = loss
    # per-sample gradients over the cross-attention K/V weights (torch.func, as the gradient store takes them)
    from torch.func import functional_call, grad, vmap

    names = [n_ for n_, _ in unet.named_parameters() if "attn2" in n_ and ("to_k" in n_ or "to_v" in n_)]
    params = {n_: p.detach() for n_, p in unet.named_parameters() if n_ in names}

    def f(p, xi, ei, ti):
        pred = functional_call(unet, p, (xi[None], ti[None]), {"encoder_hidden_states": ei[None], "return_dict": False})
        return ((pred[0] - xi[None]) ** 2).mean()

    bs = 4 if quick else 32
    x, emb, t = batch(bs)
    try:
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())  # SDPA has no batching rule
        s = timed(lambda: vmap(grad(f), in_dims=(None, 0, 0, 0))(params, x, emb, t), device, repeats=3, budget=30)
        res["per_sample_kv_grads_per_s"] = {f"b{bs}": round(bs / s, 1)}
    except Exception as exc:  # noqa: BLE001 - report, do not fail the probe
        res["per_sample_kv_grads_per_s"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    best_train = max(res["train_images_per_s"].values())
    best_loss = max(res["loss_samples_per_s"].values())
    n_coco, epochs = 118_287, 200
    res["implied"] = {
        "coco_training_hours_200_epochs": round(n_coco * epochs / best_train / 3600, 1),
        "exhaustive_unlearning_scoring_hours_per_query": round(n_coco * 20 * 5 / best_loss / 3600, 2),
        "note": "UNet only (latents and text embeddings precomputed); the paper: 16 h training, 20 h of loss "
                "evaluation per query on an A100 (PAPER_NOTES §1)",
    }
    out["paper_unet"] = res


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=("paper_unet", "small_recipe"), default=None)
    a = ap.parse_args(argv)
    out = {"device": a.device, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    t0 = time.perf_counter()
    for name, fn in (("paper_unet", probe_paper_unet), ("small_recipe", probe_small)):
        if a.only and name != a.only:
            continue
        ts = time.perf_counter()
        try:
            fn(a.device, a.quick, out)
        except Exception as exc:  # noqa: BLE001 - keep what the other section measured
            import traceback

            out[name] = {"error": traceback.format_exc()[-1500:]}
        out.setdefault(name, {})["section_s"] = round(time.perf_counter() - ts, 1)
        print(json.dumps({name: out[name]}, indent=1), flush=True)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
