"""``tiny-t2i``: a small pixel-space text-to-image DDPM built from diffusers and transformers parts.

* UNet: diffusers ``UNet2DConditionModel`` with cross-attention, module names as in Stable Diffusion (so
  ``attn2.to_k`` / ``attn2.to_v`` select the same role as in SD).
* Text encoder: a small transformers ``CLIPTextModel`` from a tiny config, trained jointly with the UNet
  (Stable Diffusion keeps a pretrained CLIP frozen; there are no pretrained weights offline).
* Tokenizer: a word-level ``tokenizers`` tokenizer (lower-cased, split on whitespace and punctuation) whose
  vocabulary is built from the dataset's captions; captions are padded to a fixed length (``max_length``) so the
  embedding of a caption never depends on its batch. New tokens such as ``<v*>`` are added as single tokens.
* Diffusion runs on pixels (``latents(images) = images``); ``DDPMScheduler`` with 1000 steps, ε-prediction.

Sizing (DESIGN.md): blocks (32, 64), one layer per block, cross-attention dim 32, head dim 8 ≈ 0.8 M parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from genattr.harness.errors import UserError

from .common import DDPMAdapter, own_memory

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
PAD, UNK, BOS, EOS = range(4)

ARCH_DEFAULTS: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 8,
    "text_layers": 2,
    "text_heads": 4,
    "text_intermediate": 64,
    "max_length": 16,
    "beta_schedule": "linear",
    "guidance_scale": 1.0,
}


def caption_words(caption: str) -> list[str]:
    """The words of a caption as the tokenizer splits them (lower-cased; whitespace and punctuation)."""
    from tokenizers import pre_tokenizers

    return [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(caption.lower())]


def build_vocab(captions) -> list[str]:
    """Sorted word vocabulary of an iterable of captions (or of caption tuples)."""
    words = set()
    for c in captions:
        for cap in ([c] if isinstance(c, str) else c):
            words.update(caption_words(cap))
    return sorted(words)


def _build_tokenizer(vocab: Sequence[str], max_length: int, added: Sequence[str] = ()):
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors

    table = {t: i for i, t in enumerate(SPECIALS)}
    for w in vocab:
        if w not in table:
            table[w] = len(table)
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
    )
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=PAD, pad_token="<pad>", length=max_length)
    for t in added:
        tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False)])
    return tok


class TinyT2I(DDPMAdapter):
    """A tiny pixel-space text-to-image DDPM (see the module docstring).

    ``TinyT2I(resolution=16, channels=3, vocab=None, **arch)``: ``vocab`` is the list of caption words (build it
    with :meth:`for_dataset`); ``arch`` overrides :data:`ARCH_DEFAULTS` (UNet blocks, text encoder size,
    ``max_length`` tokens per caption including <bos>/<eos>, ``guidance_scale`` for sampling)."""

    name = "tiny-t2i"
    version = "1"
    train_text_encoder_default = True
    init_seed_key = "seed"

    @classmethod
    def recipe(cls, scale: str, dataset: str | None = None) -> dict:
        """The built-in recipes (:mod:`genattr.plugins.models.recipes`): per dataset and scale, the generic one for
        any other dataset."""
        from .recipes import recipe, recipe_customize

        return {**recipe(dataset or "", scale), "customize": recipe_customize(scale)}

    @classmethod
    def build(cls, dataset, config) -> "TinyT2I":
        """An untrained model for ``dataset`` (:meth:`for_dataset`)."""
        return cls.for_dataset(dataset, **dict(config))

    def __init__(self, resolution: int = 16, channels: int = 3, vocab: Sequence[str] | None = None,
                 seed: int = 0, **arch):
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        unknown = set(arch) - set(ARCH_DEFAULTS)
        if unknown:
            raise UserError(f"unknown tiny-t2i option(s): {', '.join(sorted(unknown))}")
        a = {**ARCH_DEFAULTS, **arch}
        for k in ("block_out_channels", "down_block_types", "up_block_types"):
            a[k] = list(a[k])
        self.resolution, self.channels = int(resolution), int(channels)
        self.vocab = sorted(set(vocab or []) - set(SPECIALS))
        self.arch = a
        self.init_seed = int(seed)
        self.tokenizer = _build_tokenizer(self.vocab, int(a["max_length"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            self.unet = UNet2DConditionModel(
                sample_size=self.resolution,
                in_channels=self.channels,
                out_channels=self.channels,
                block_out_channels=tuple(a["block_out_channels"]),
                layers_per_block=int(a["layers_per_block"]),
                down_block_types=tuple(a["down_block_types"]),
                up_block_types=tuple(a["up_block_types"]),
                cross_attention_dim=int(a["cross_attention_dim"]),
                attention_head_dim=int(a["attention_head_dim"]),
                norm_num_groups=int(a["norm_num_groups"]),
            )
            te_config = CLIPTextConfig(
                vocab_size=len(SPECIALS) + len(self.vocab),
                hidden_size=int(a["cross_attention_dim"]),
                intermediate_size=int(a["text_intermediate"]),
                num_hidden_layers=int(a["text_layers"]),
                num_attention_heads=int(a["text_heads"]),
                max_position_embeddings=int(a["max_length"]),
                projection_dim=int(a["cross_attention_dim"]),
                pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
            )
            self.text_encoder = CLIPTextModel(te_config)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=a["beta_schedule"],
                                       prediction_type="epsilon", clip_sample=True)
        self.guidance_scale = float(a["guidance_scale"])
        self._init_common()

    @classmethod
    def for_dataset(cls, dataset, **arch) -> "TinyT2I":
        """A model sized for ``dataset`` (its resolution and channels) with the vocabulary of its captions; the
        caption length ``max_length`` defaults to the longest caption + 2 (at least 8)."""
        n = len(dataset)
        caps = [tuple(dataset.captions(i)) for i in range(n)]
        if "max_length" not in arch:
            longest = max((len(caption_words(c)) for cs in caps for c in cs), default=0)
            arch["max_length"] = max(8, longest + 2 + 2)  # + <bos>/<eos> + room for a new token and a word
        return cls(resolution=dataset.resolution, channels=dataset.channels, vocab=build_vocab(caps), **arch)

    @classmethod
    def pin_config(cls, dataset, config: dict) -> dict:
        """``config`` with what :meth:`for_dataset` would derive from ``dataset`` fixed: the caption length
        ``max_length`` (the longest caption + 4 tokens, at least 8). Benchmarks that retrain on subsets of one
        training set pin it once, from the full set, so a retrain's architecture never depends on which items it
        leaves out."""
        out = dict(config)
        if "max_length" not in out:
            longest = max((len(caption_words(c)) for i in range(len(dataset)) for c in dataset.captions(i)),
                          default=0)
            out["max_length"] = max(8, longest + 4)
        return out

    # -- parts --------------------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"resolution": self.resolution, "channels": self.channels, "vocab": list(self.vocab),
                "seed": self.init_seed, **{k: v for k, v in self.arch.items()}}

    def tokenizer_state(self) -> Any:
        return {"added": list(self.added_tokens), "size": self.tokenizer.get_vocab_size(with_added_tokens=True)}

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer.encode_batch([str(c) for c in captions])
        return torch.tensor([e.ids for e in enc], dtype=torch.long)

    def token_ids(self, word: str) -> list[int]:
        return [i for i in self.tokenizer.encode(word, add_special_tokens=False).ids if i != PAD]

    def _add_token_to_tokenizer(self, token: str) -> int:
        from tokenizers import AddedToken

        self.tokenizer.add_tokens([AddedToken(token, single_word=False, lstrip=False, rstrip=False,
                                              normalized=False)])
        return int(self.tokenizer.token_to_id(token))

    def default_init_word(self) -> str:
        return self.vocab[0] if self.vocab else "<unk>"

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def num_parameters(self) -> dict:
        return {"unet": sum(p.numel() for p in self.unet.parameters()),
                "text_encoder": sum(p.numel() for p in self.text_encoder.parameters())}

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """A diffusers-style directory: ``unet/``, ``text_encoder/`` (safetensors + config.json),
        ``tokenizer/tokenizer.json``, ``scheduler/`` and ``genattr_model.json``."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(p / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(p / "text_encoder", safe_serialization=True)
        (p / "tokenizer").mkdir(exist_ok=True)
        self.tokenizer.save(str(p / "tokenizer" / "tokenizer.json"))
        self.scheduler.save_pretrained(p / "scheduler")
        meta = {"_class_name": "TinyT2I", "model": self.name, "version": self.version, "config": self.config(),
                "added_tokens": list(self.added_tokens), "guidance_scale": self.guidance_scale,
                "base_fingerprint": self.base_fingerprint, "delta_names": list(self.delta_names),
                "history": self.history}
        (p / "genattr_model.json").write_text(json.dumps(meta, indent=1, default=str))

    @classmethod
    def load(cls, path: str) -> "TinyT2I":
        """Load a directory written by :meth:`save` (weights exactly as saved)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from tokenizers import Tokenizer
        from transformers import CLIPTextModel

        p = Path(path)
        if not (p / "genattr_model.json").is_file():
            raise UserError(f"{path} is not a saved tiny-t2i model (no genattr_model.json)")
        meta = json.loads((p / "genattr_model.json").read_text())
        if meta.get("model") != cls.name:
            raise UserError(f"{path} holds a {meta.get('model')!r} model, not {cls.name!r}")
        cfg = dict(meta["config"])
        self = cls.__new__(cls)
        self.resolution, self.channels = int(cfg.pop("resolution")), int(cfg.pop("channels"))
        self.vocab = list(cfg.pop("vocab"))
        self.init_seed = int(cfg.pop("seed", 0))
        self.arch = {**ARCH_DEFAULTS, **cfg}
        self.tokenizer = Tokenizer.from_file(str(p / "tokenizer" / "tokenizer.json"))
        self.unet = UNet2DConditionModel.from_pretrained(p / "unet")
        self.text_encoder = CLIPTextModel.from_pretrained(p / "text_encoder")
        self.scheduler = DDPMScheduler.from_pretrained(p / "scheduler")
        own_memory(self.unet, self.text_encoder)
        self.guidance_scale = float(meta.get("guidance_scale", 1.0))
        self._init_common()
        self.added_tokens = list(meta.get("added_tokens", []))
        self.base_fingerprint = meta.get("base_fingerprint")
        self.delta_names = list(meta.get("delta_names", []))
        self.history = list(meta.get("history", []))
        return self

    def __repr__(self) -> str:
        n = self.num_parameters()
        return (f"<TinyT2I {self.channels}×{self.resolution}px vocab={len(self.vocab)} "
                f"unet={n['unet'] / 1e6:.2f}M text={n['text_encoder'] / 1e6:.2f}M>")
