"""The cost of the latent miniature's pieces against the pixel-space ones, measured in one process: seconds per
training step (batch 64) of each base model, per customization step, and per autoencoder step, each times its
recipe's step count — the set-up cost of a benchmark on either test bed, before any method runs.

Rows: ``tiny-t2i`` on digits (leave-K-out / LDS θ0 at ``small``: 8 px, 400 steps), ``tiny-t2i`` on shapes (the
Customized Model base at ``small``: 16 px, 1,500 steps; whole-UNet customization) and the ``diffusers`` ``small``
recipe (32 px → 8×8×4 latents, 1,600 steps; Custom Diffusion customization; its VAE). Untrained weights: the cost of
a step does not depend on them.

    OMP_NUM_THREADS=2 python tests/perf/latent_cost.py --steps 12
    python tests/perf/latent_cost.py --table results/perf/latent-cost.json
"""
from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore")

from perfkit import read_result, result_options, write_result  # noqa: E402


def table(doc) -> str:
    lines = ["| piece | model | data | s / step | recipe steps | s per recipe | × tiny-t2i θ0 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    ref = next(r["s_per_step"] * r["steps"] for r in doc["rows"] if r["piece"] == "θ0" and r["model"] == "tiny-t2i"
               and r["data"].startswith("digits"))
    for r in doc["rows"]:
        total = r["s_per_step"] * r["steps"]
        lines.append(f"| {r['piece']} | `{r['model']}` | {r['data']} | {r['s_per_step']:.3f} | {r['steps']} "
                     f"| {total:.0f} | {total / ref:.2f} |")
    theta = {r["model"]: r["s_per_step"] * r["steps"] for r in doc["rows"] if r["piece"] == "θ0"
             and (r["model"] != "tiny-t2i" or r["data"].startswith("digits"))}
    designs = "; ".join(
        f"{what}: {count * theta['tiny-t2i'] / 60:.0f} min on the `tiny-t2i` digits θ0's recipe, "
        f"{count * theta['diffusers'] / 60:.0f} min on the latent recipe"
        for what, count in DESIGNS) if {"tiny-t2i", "diffusers"} <= set(theta) else ""
    return "\n".join(lines) + f"\n\n{doc['threads']} torch thread(s); per step: a run of " \
                              f"{doc['measured_steps']} + 2 steps minus a run of 2 (once-per-call costs cancel)." \
        + (f" Trainings alone (θ0 recipe × count) — {designs}." if designs else "")


#: Training counts of the counterfactual designs the table's footer prices (θ0 included).
DESIGNS = (("leave-K-out `small` (15 trainings: θ0 + 14 retrains)", 15),
           ("LDS with M = 32 subset models (33)", 33),
           ("leave-K-out at 21 queries: θ0 + 21 × 2 K × 2 ranked methods + random's 4 draws × 2 K (93)", 93))


def _time(fn, steps: int) -> float:
    """Seconds per step: a run of ``steps + 2`` steps minus a run of 2, over ``steps`` — what a call pays once
    (encoding the training set, cloning the model, the autoencoder's statistics) cancels out."""
    fn(1)  # warm-up (allocations, first-call overheads)
    t0 = time.perf_counter()
    fn(2)
    t1 = time.perf_counter()
    fn(steps + 2)
    t2 = time.perf_counter()
    return max((t2 - t1) - (t1 - t0), 0.0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    result_options(ap, "results/perf/latent-cost.json")
    args = ap.parse_args(argv)
    if args.table:
        print(table(read_result(args.table)))
        return 0

    import torch

    import genattr
    from genattr.harness.models import model_recipe, model_type, pin_model_config
    from genattr.plugins.models.autoencoder import train_autoencoder

    genattr.load_plugins()
    rows = []
    n = args.steps

    def base(model: str, dataset: str, scale: str = "small", dataset_kw=None, drop_vae_train=False):
        r = model_recipe(model, scale, dataset)
        kw = {**r["dataset"], **(dataset_kw or {})}
        ds = genattr.get_dataset(dataset, **kw)
        cfg = dict(r["model"])
        if drop_vae_train:
            cfg.pop("vae_train", None)  # the VAE's weights do not change a UNet step's cost
        cfg = pin_model_config(model, ds, cfg)
        return ds, model_type(model).build(ds, cfg), r

    # θ0 / base-model training steps
    for model, dataset, kw, steps, label in (
            ("tiny-t2i", "digits", {"resolution": 8}, 400, "digits 8 px (leave-K-out θ0)"),
            ("tiny-t2i", "shapes", {}, None, "shapes 16 px (Customized Model base)"),
            ("diffusers", "shapes", {}, None, "shapes 32 px → 8×8×4 latents")):
        ds, m, r = base(model, dataset, dataset_kw=kw, drop_vae_train=model == "diffusers")
        plan = {**r["train"], "batch_size": 64}

        def run(k, m=m, ds=ds, plan=plan):
            m.train(ds, {**plan, "steps": k, "warmup": 0})

        rows.append({"piece": "θ0", "model": model, "data": label, "s_per_step": _time(run, n),
                     "steps": int(steps or r["train"]["steps"])})
        if dataset == "shapes":
            exemplars = ds.subset(ds.ids[:4])
            cust = {**r["customize"], "reg_dataset": ds}

            def cust_run(k, m=m, exemplars=exemplars, cust=cust):
                m.customize(exemplars, "<v*>", {**cust, "steps": k})

            rows.append({"piece": "customization", "model": model,
                         "data": f"{r['customize']['weights']}, batch {cust['batch_size']} + "
                                 f"{cust.get('reg_batch_size') or cust['batch_size']} regularisation",
                         "s_per_step": _time(cust_run, n), "steps": int(r["customize"]["steps"])})
        if model == "diffusers":
            from diffusers import AutoencoderKL

            vplan = dict(r["model"]["vae_train"])
            vae = AutoencoderKL(in_channels=3, out_channels=3, sample_size=32, **r["model"]["vae"])
            images = ds.images()

            def vae_run(k, vae=vae, images=images, vplan=vplan):
                train_autoencoder(vae, images, {**vplan, "steps": k}, normalise=False)

            rows.append({"piece": "VAE (once per dataset)", "model": model,
                         "data": f"batch {vplan['batch_size']}", "s_per_step": _time(vae_run, n),
                         "steps": int(vplan["steps"])})
    doc = {"what": "seconds per step of each test bed's pieces (one process)", "threads": torch.get_num_threads(),
           "measured_steps": n, "genattr": genattr.__version__, "rows": rows}
    write_result(args.out, doc)
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
