"""Training and sampling images/s of the built-in recipes under the CPU settings torch offers: thread count,
channels-last memory format, bf16 autocast, ``torch.compile``. Measured only: the recipes keep their settings (any
change to trained weights would be a new recipe version, see docs/models.md)."""

from __future__ import annotations

import pytest

import perfkit

#: (dataset, recipe scale, training steps timed, sampled images, sampling steps) per suite scale.
SIZES = {
    "tiny": [("digits", "tiny", 2, 8, 2)],
    "small": [("digits", "small", 20, 64, 20), ("shapes", "small", 10, 64, 20)],
}
SETTINGS = {"tiny": ["threads-1", "bf16-autocast"], "small": list(perfkit.CPU_SETTINGS)}


def _cases():
    out = []
    for scale in ("tiny", "small"):
        for ds, rscale, steps, images, ssteps in SIZES[scale]:
            for setting in SETTINGS[scale]:
                marks = [pytest.mark.slow, pytest.mark.small] if scale == "small" else []
                out.append(pytest.param(ds, rscale, steps, images, ssteps, setting, marks=marks,
                                        id=f"{scale}-{ds}-{setting}"))
    return out


@pytest.mark.parametrize("dataset,rscale,steps,images,ssteps,setting", _cases())
def test_training_and_sampling_images_per_second(dataset, rscale, steps, images, ssteps, setting, benchmark, figures):
    import torch

    threads = torch.get_num_threads()
    out = {}

    def run():
        try:
            out.update(perfkit.throughput(dataset, rscale, perfkit.CPU_SETTINGS[setting], train_steps=steps,
                                          sample_images=images, sample_steps=ssteps))
        except Exception as exc:  # e.g. torch.compile without a working compiler: record, do not fail the suite
            out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert torch.get_num_threads() == threads  # the setting is undone
    if "error" in out:
        figures(error=out["error"])
        pytest.skip(out["error"])
    figures(train_images_per_s=out["train_images_per_s"], sample_images_per_s=out["sample_images_per_s"],
            sample_unet_evals_per_s=out["sample_unet_evals_per_s"])
    assert out["train_images_per_s"] > 0 and out["sample_images_per_s"] > 0
