"""Stable Diffusion pipelines built from configs for the ``diffusers`` model: every component is one of SD's own
classes (``AutoencoderKL``, ``UNet2DConditionModel``, ``CLIPTextModel`` + ``CLIPTokenizer``, ``DDPMScheduler``),
written with ``save_pretrained`` into a pipeline directory and loaded back by the same code that loads SD v1.x.

* :func:`clip_tokenizer_files` — a byte-pair vocabulary for ``CLIPTokenizer`` in which every caption word is one
  token (letters and digits as single tokens too), so captions of a dataset tokenize without a downloaded
  vocabulary. Stable Diffusion's own tokenizer comes from ``pretrained``.
* :func:`write_pipeline` — the directory: components named in ``from_scratch`` are built from their configs
  (initialised from ``seed``), the rest are copied from ``pretrained`` (a pipeline directory or hub id). With
  ``vae_train`` (a plan) the built VAE is trained once on the full training set and frozen
  (:mod:`.autoencoder`; ``vae_key`` names the cached result), as SD's VAE is pretrained before any diffusion
  training.

Only imported through the lazily loaded adapter (it imports torch).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from genattr.harness.errors import UserError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

#: What :func:`write_pipeline` builds when the config does not say (a micro SD: 8 px RGB → 4×4×4 latents).
BUILD_DEFAULTS: dict[str, Any] = {
    "pretrained": None,
    "from_scratch": list(COMPONENTS),
    "seed": 0,
    "guidance_scale": 1.0,
    "words": None,  # caption words of the tokenizer (pin_config fixes them from the full training set)
    "max_length": None,  # tokens per caption with start/end; None: the longest caption + 4 (at least 8)
    "vae_train": None,  # a plan (autoencoder.AUTOENCODER_DEFAULTS) to train the built VAE once on the dataset
    "vae_key": None,  # the cache key of that trained VAE (pin_config fixes it from the full training set)
    "unet": {"block_out_channels": [16, 32], "layers_per_block": 1,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 8, "norm_num_groups": 8},
    "vae": {"block_out_channels": [16, 32], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]},
    "text_encoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012, "clip_sample": False, "prediction_type": "epsilon"},
}

_PIECES = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")


def caption_pieces(caption: str) -> list[str]:
    """The pieces a caption's words split into for the built vocabulary (lower-cased letter runs, digits, other
    characters)."""
    return _PIECES.findall(str(caption).lower())


def caption_words(captions: Iterable) -> list[str]:
    """Sorted distinct pieces of an iterable of captions (or caption tuples)."""
    words: set[str] = set()
    for c in captions:
        for cap in ([c] if isinstance(c, str) else c):
            words.update(caption_pieces(cap))
    return sorted(words)


def longest_caption(captions: Iterable) -> int:
    return max((len(caption_pieces(cap)) for c in captions for cap in ([c] if isinstance(c, str) else c)),
               default=0)


def clip_tokenizer_files(folder: Path, words: Iterable[str], max_length: int):
    """A ``CLIPTokenizer`` saved in ``folder`` whose vocabulary holds every character of ``words`` and each word as
    one token (merges left to right, the last piece carrying ``</w>``)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    words = sorted(set(words))
    for ch in sorted({ch for w in words for ch in w} | set("abcdefghijklmnopqrstuvwxyz0123456789")):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[str] = []
    for w in words:
        cur = w[0]
        for k, ch in enumerate(w[1:], 1):
            nxt = ch + ("</w>" if k == len(w) - 1 else "")
            merges.append(f"{cur} {nxt}")
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    merges = list(dict.fromkeys(merges))
    tmp = folder / "_files"
    tmp.mkdir(exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=int(max_length))
    tok.save_pretrained(str(folder))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return tok


def build_config(config: Mapping[str, Any]) -> dict:
    """``config`` over :data:`BUILD_DEFAULTS` (component tables merged key by key); unknown keys are one line."""
    unknown = set(config) - set(BUILD_DEFAULTS) - {"resolution"}
    if unknown:
        raise UserError(f"diffusers: unknown build option(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(sorted(set(BUILD_DEFAULTS) | {'resolution'}))}")
    out = {k: (dict(v) if isinstance(v, dict) else (list(v) if isinstance(v, list) else v))
           for k, v in BUILD_DEFAULTS.items()}
    for k, v in config.items():
        out[k] = {**out[k], **dict(v)} if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    bad = [c for c in out["from_scratch"] if c not in COMPONENTS]
    if bad:
        raise UserError(f"diffusers: from_scratch names {bad[0]!r}; components: {', '.join(COMPONENTS)}")
    if out["pretrained"] is None and set(out["from_scratch"]) != set(COMPONENTS):
        raise UserError("diffusers: components not built from scratch need pretrained=<pipeline directory or hub id>")
    return out


def write_pipeline(folder: Path, dataset, config: Mapping[str, Any], cache=None) -> dict:
    """Write a pipeline directory for ``dataset`` (its resolution and channels; its caption words when the
    tokenizer is built) into ``folder``; returns the resolved build config. ``cache``: where a trained VAE
    (``vae_train``) is found or stored."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = build_config(config)
    scratch = set(cfg["from_scratch"])
    pre = cfg["pretrained"]
    folder = Path(folder)
    caps = [tuple(dataset.captions(i)) for i in range(len(dataset))]
    if cfg["words"] is None:
        cfg["words"] = caption_words(caps)
    if cfg["max_length"] is None:
        cfg["max_length"] = max(8, longest_caption(caps) + 4)
    resolution = int(cfg.get("resolution") or dataset.resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["seed"]))
        if "tokenizer" in scratch:
            tok = clip_tokenizer_files(folder / "tokenizer", cfg["words"], int(cfg["max_length"]))
        else:
            tok = CLIPTokenizer.from_pretrained(pre, subfolder="tokenizer")
            tok.save_pretrained(str(folder / "tokenizer"))
        if "vae" in scratch and cfg["vae_train"] is not None:
            vae = trained_vae(dataset, cfg, cache)
        elif "vae" in scratch:
            vae = AutoencoderKL(in_channels=int(dataset.channels), out_channels=int(dataset.channels),
                                sample_size=resolution, **cfg["vae"])
        else:
            vae = AutoencoderKL.from_pretrained(pre, subfolder="vae")
        vae.save_pretrained(folder / "vae", safe_serialization=True)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if "text_encoder" in scratch:
            te_cfg = dict(cfg["text_encoder"])
            te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=int(tok.model_max_length),
                                              projection_dim=int(te_cfg["hidden_size"]), bos_token_id=0,
                                              eos_token_id=1, pad_token_id=1, **te_cfg))
        else:
            te = CLIPTextModel.from_pretrained(pre, subfolder="text_encoder")
        te.save_pretrained(folder / "text_encoder", safe_serialization=True)
        if "unet" in scratch:
            ucfg = {"sample_size": resolution // factor, "in_channels": int(vae.config.latent_channels),
                    "out_channels": int(vae.config.latent_channels),
                    "cross_attention_dim": int(te.config.hidden_size), **cfg["unet"]}
            unet = UNet2DConditionModel(**ucfg)
        else:
            unet = UNet2DConditionModel.from_pretrained(pre, subfolder="unet")
        unet.save_pretrained(folder / "unet", safe_serialization=True)
    if "scheduler" in scratch:
        DDPMScheduler(**cfg["scheduler"]).save_pretrained(folder / "scheduler")
    else:
        DDPMScheduler.from_pretrained(pre, subfolder="scheduler").save_pretrained(folder / "scheduler")
    return cfg


def trained_vae(dataset, cfg: Mapping[str, Any], cache):
    """The VAE of a build config with ``vae_train``: the one ``vae_key`` names in ``cache`` when stored (it was
    trained on the full training set, whatever subset ``dataset`` is now), else trained on ``dataset`` — which must
    then be the set the key was made for."""
    from .autoencoder import autoencoder_key, pretrained_autoencoder, stored_autoencoder

    key = cfg.get("vae_key")
    if key is not None:
        vae = stored_autoencoder(cache, key)
        if vae is not None:
            return vae
        if autoencoder_key(dataset, cfg["vae"], cfg["vae_train"]) != key:
            raise UserError("diffusers: the autoencoder this configuration pins (vae_key) is not in the cache and "
                            "this dataset is not the one it was trained on; run the benchmark's set-up (which "
                            "trains it on the full training set) or import its pack")
    return pretrained_autoencoder(cache, dataset, cfg["vae"], cfg["vae_train"], key)
