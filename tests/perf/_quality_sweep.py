"""Temporary measurement script (device run)."""
import json, sys, time, os, importlib.util
import torch
spec = importlib.util.spec_from_file_location("q", os.path.join(os.path.dirname(__file__), "test_model_quality.py"))
q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
mode = sys.argv[1]
out = os.environ.get("OUT", "/tmp")
def log(rec):
    print(json.dumps(rec), flush=True)
    with open(os.path.join(out, f"{mode}.jsonl"), "a") as f: f.write(json.dumps(rec) + "\n")
if mode == "smoke":
    for name in ("digits", "shapes"):
        ds, m, r = q.train_small(name, {"train": {"steps": 2, "batch_size": 8}})
        acc = q.digits_accuracy(m, per_digit=1, steps=2) if name == "digits" else q.shapes_accuracy(m, per_combo=1, steps=2)
        log({"name": name, "secs": r["seconds"], **acc})
elif mode.startswith("cpu"):
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    name = mode.split("-")[1]
    ds, m, r = q.train_small(name)
    log({"name": name, "threads": 2, "train_seconds": r["seconds"], "ips": r["images_per_second"], "loss_last": r["losses"][-1]})
    acc = q.digits_accuracy(m) if name == "digits" else q.shapes_accuracy(m)
    log({"name": name, "threads": 2, "train_seconds": r["seconds"], **acc})
elif mode == "gpu":
    for steps, bs, lr in [(600, 64, 2e-3), (1200, 64, 2e-3), (2400, 64, 2e-3), (1200, 128, 2e-3)]:
        for name in ("digits", "shapes"):
            t0 = time.time()
            ds, m, r = q.train_small(name, {"train": {"steps": steps, "batch_size": bs, "lr": lr}}, device="cuda")
            for g in (1.0, 2.0, 4.0):
                acc = q.digits_accuracy(m, guidance_scale=g) if name == "digits" else q.shapes_accuracy(m, guidance_scale=g)
                log({"name": name, "steps": steps, "bs": bs, "lr": lr, "guidance": g, "gpu_train_s": r["seconds"], "loss_last": sum(r["losses"][-20:])/20, **{k: v for k, v in acc.items() if k != "per_digit"}})
