"""``diffusers``: the model adapter over a diffusers text-to-image pipeline (Stable Diffusion v1.x / v2.x layout).

``DiffusersT2I(path, ...)`` loads the ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler``
subfolders of a pipeline directory or hub id (the hub is only contacted when a hub id is given and the files are not
cached; tests build tiny pipelines locally). Diffusion runs in the VAE's latent space: ``latents(images)`` is the
VAE posterior mean × ``scaling_factor`` (the deterministic mean, so losses do not depend on a VAE sample);
``decode`` inverts it. The scheduler is a ``DDPMScheduler`` built from the pipeline's scheduler config (its
``prediction_type`` — ``epsilon`` or ``v_prediction`` — is respected). Every operation (loss, generate,
parameters, train, customize, save/load, deltas) is the shared logic of :mod:`genattr.plugins.models.common`;
training fine-tunes the UNet only (VAE and text encoder frozen, as in Stable Diffusion training).

The model is ``trainable`` and ``customizable`` (docs/models.md): :meth:`DiffusersT2I.build` writes a pipeline
directory from configs with SD's component classes (:mod:`genattr.plugins.models.sd_build`; components not built
from scratch come from ``pretrained``) and loads it through the same constructor that loads SD v1.4;
:meth:`DiffusersT2I.recipe` holds the scales' configurations; customization is Custom Diffusion's (cross-attention
K/V plus the modifier token's embedding), its delta saved in Custom Diffusion's layout and read back from either
genattr's ``delta.safetensors`` or the official ``delta.bin``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from genattr.harness.errors import UserError

from .common import DDPMAdapter, own_memory


class DiffusersT2I(DDPMAdapter):
    """Adapter over a diffusers text-to-image pipeline directory or hub id.

    ``path``: directory or hub id; ``revision``, ``variant``: passed to ``from_pretrained``; ``torch_dtype``:
    ``"float32"`` (default) / ``"float16"`` / ``"bfloat16"``; ``device``: where to put the modules;
    ``resolution``: pixel resolution (default: UNet sample size × VAE downsampling factor); ``guidance_scale``:
    default classifier-free guidance of :meth:`generate` (7.5 as the paper's sampling); ``local_files_only``:
    never contact the hub."""

    name = "diffusers"
    version = "2"
    train_text_encoder_default = False
    init_seed_key = "seed"

    @classmethod
    def recipe(cls, scale: str, dataset: str | None = None) -> dict:
        """The scales' recipes (:data:`RECIPES`): ``tiny`` a micro SD built from scratch (8 px data → 4×4×4
        latents); ``paper`` the unlearning paper's COCO model (UNet from scratch, SD-2's text encoder, tokenizer and
        VAE from ``pretrained``, frozen)."""
        import copy

        if scale not in RECIPES:
            raise UserError(f"model 'diffusers' has no recipe for scale {scale!r}; recipes: {', '.join(RECIPES)} "
                            "(or give model_config and train_config with recipe=null)")
        r = copy.deepcopy(RECIPES[scale])
        r["dataset"] = dict(r["dataset"].get(dataset, r["dataset"].get(None, {})))
        return r

    @classmethod
    def build(cls, dataset, config, cache=None) -> "DiffusersT2I":
        """An untrained pipeline for ``dataset`` built from ``config`` (:func:`~.sd_build.write_pipeline`),
        written with ``save_pretrained`` and loaded back with :meth:`__init__` — SD v1.x's own loading path.
        ``cache``: where the VAE of a ``vae_train`` config is found or stored."""
        import tempfile

        from .sd_build import write_pipeline

        with tempfile.TemporaryDirectory(prefix="genattr-sd-") as tmp:
            cfg = write_pipeline(Path(tmp), dataset, config, cache)
            model = cls(tmp, local_files_only=True, resolution=int(cfg.get("resolution") or dataset.resolution),
                        guidance_scale=float(cfg["guidance_scale"]))
        model.source = {"path": None, "built": {k: v for k, v in cfg.items() if k != "words"}, "revision": None,
                        "variant": None, "torch_dtype": "float32"}
        return model

    @classmethod
    def pin_config(cls, dataset, config, cache=None) -> dict:
        """``config`` with the tokenizer's words and caption length fixed from ``dataset`` (the full training set),
        so a retrain on a subset keeps the architecture; with ``vae_train``, the VAE trained once on that set (in
        ``cache``, not loaded here) and named by ``vae_key``, so every retrain uses the same frozen VAE."""
        from .sd_build import build_config, caption_words, longest_caption

        out = dict(config)
        if out.get("vae_train") is not None and out.get("vae_key") is None:
            from .autoencoder import autoencoder_key, store_autoencoder

            cfg = build_config(out)
            if "vae" in cfg["from_scratch"]:
                out["vae_key"] = autoencoder_key(dataset, cfg["vae"], cfg["vae_train"])
                if cache is not None:  # without a cache, build() trains it on the full set it is given
                    store_autoencoder(cache, dataset, cfg["vae"], cfg["vae_train"], out["vae_key"])
        caps = [tuple(dataset.captions(i)) for i in range(len(dataset))]
        if out.get("words") is None:
            out["words"] = caption_words(caps)
        if out.get("max_length") is None:
            out["max_length"] = max(8, longest_caption(caps) + 4)
        return out

    def __init__(self, path: str, revision: str | None = None, variant: str | None = None,
                 torch_dtype: str = "float32", device: str = "cpu", resolution: int | None = None,
                 guidance_scale: float = 7.5, local_files_only: bool = False):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(torch_dtype)
        if dtype is None:
            raise UserError(f"torch_dtype must be float32, float16 or bfloat16, got {torch_dtype!r}")
        kw = {"revision": revision, "local_files_only": local_files_only}
        self.source = {"path": str(path), "revision": revision, "variant": variant, "torch_dtype": torch_dtype}
        try:
            self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=variant,
                                                             torch_dtype=dtype, **kw)
            self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=variant, torch_dtype=dtype, **kw)
            self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=variant,
                                                              torch_dtype=dtype, **kw)
            self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
            self.scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a diffusers text-to-image pipeline from {path!r}: "
                            f"{str(e).splitlines()[0]}") from e
        self._setup(device, resolution, guidance_scale)

    def _setup(self, device, resolution, guidance_scale) -> None:
        own_memory(self.unet, self.vae, self.text_encoder)
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        # SD3 / FLUX's convention of the same config; SD v1.x has none (0)
        self.shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.channels = int(self.vae.config.in_channels)
        self.resolution = int(resolution or self.unet.config.sample_size * self.vae_scale_factor)
        if self.resolution % self.vae_scale_factor:
            raise UserError(f"resolution {self.resolution} is not a multiple of the VAE factor {self.vae_scale_factor}")
        self.guidance_scale = float(guidance_scale)
        self._init_common()
        self.to(device)

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "vae": self.vae}

    def config(self) -> dict:
        """What defines the model besides its weights (the source path is not part of it: the same weights
        loaded from a hub id or a saved copy have the same fingerprint)."""
        return {"torch_dtype": self.source.get("torch_dtype"), "resolution": self.resolution,
                "unet": _public(self.unet.config), "vae": _public(self.vae.config),
                "scheduler": _public(self.scheduler.config)}

    def tokenizer_state(self) -> Any:
        return {"size": len(self.tokenizer), "added": list(self.added_tokens),
                "max_length": int(self.tokenizer.model_max_length)}

    # -- parts --------------------------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def token_ids(self, word: str) -> list[int]:
        return list(self.tokenizer(word, add_special_tokens=False).input_ids)

    def _add_token_to_tokenizer(self, token: str) -> int:
        if self.tokenizer.add_tokens(token) == 0 and token not in self.added_tokens:
            raise UserError(f"token {token!r} already exists in the tokenizer; choose a new one")
        return int(self.tokenizer.convert_tokens_to_ids(token))

    def default_init_word(self) -> str:
        return "object"

    def latent_shape(self) -> tuple[int, int, int]:
        s = self.resolution // self.vae_scale_factor
        return (int(self.unet.config.in_channels), s, s)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(self.device, dtype)).latent_dist
        return (dist.mean - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latents.to(dtype) / self.scaling_factor + self.shift_factor).sample

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """A Stable-Diffusion-layout pipeline directory (``model_index.json`` + component subfolders, safetensors)
        that diffusers' ``StableDiffusionPipeline.from_pretrained`` can also read, plus ``genattr_model.json``."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(p / "unet", safe_serialization=True)
        self.vae.save_pretrained(p / "vae", safe_serialization=True)
        self.text_encoder.save_pretrained(p / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(p / "tokenizer")
        self.scheduler.save_pretrained(p / "scheduler")
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False}
        (p / "model_index.json").write_text(json.dumps(index, indent=1))
        meta = {"model": self.name, "version": self.version, "source": self.source, "resolution": self.resolution,
                "guidance_scale": self.guidance_scale, "added_tokens": list(self.added_tokens),
                "base_fingerprint": self.base_fingerprint, "delta_names": list(self.delta_names),
                "history": self.history}
        (p / "genattr_model.json").write_text(json.dumps(meta, indent=1, default=str))

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "DiffusersT2I":
        """Load a directory written by :meth:`save` (or any pipeline directory)."""
        p = Path(path)
        meta = json.loads((p / "genattr_model.json").read_text()) if (p / "genattr_model.json").is_file() else {}
        src = meta.get("source", {})
        self = cls(str(p), torch_dtype=src.get("torch_dtype", "float32"), device=device,
                   resolution=meta.get("resolution"), guidance_scale=meta.get("guidance_scale", 7.5),
                   local_files_only=True)
        if src:
            self.source = dict(src)
        self.added_tokens = list(meta.get("added_tokens", []))
        self.base_fingerprint = meta.get("base_fingerprint")
        self.delta_names = list(meta.get("delta_names", []))
        self.history = list(meta.get("history", []))
        self._invalidate()
        return self

    def __repr__(self) -> str:
        return f"<DiffusersT2I {self.source['path']} {self.channels}×{self.resolution}px>"


def _public(config) -> dict:
    """A diffusers config without its bookkeeping keys (``_name_or_path``, ``_diffusers_version``, …)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


#: The ``small`` recipe's shapes data: every background texture, and three (colour, shape) combinations held out
#: of training (one per shape and colour) that leave-K-out and LDS queries are generated from — scenes of two or more
#: objects: a single object on a background comes from a few hundred layouts, most of them repeated in a training
#: set of thousands, so its nearest training image is a near-duplicate of any rendering of it (measured:
#: docs/benchmarks/leave-k-out.md, regime check).
SHAPES_BACKGROUNDS = ("plain", "grey", "striped", "dotted", "gradient")
SHAPES_HOLDOUT = ("red triangle", "blue circle", "yellow square")
#: The ``small`` recipe's object jitter (``shapes``' largest): no two scenes share a layout.
SHAPES_JITTER = 0.06

#: Recipes per scale: ``model`` (:meth:`DiffusersT2I.build`), ``train``, ``dataset`` (keyword arguments per dataset
#: name, None for any other), ``customize`` (Custom Diffusion: cross-attention K/V + the modifier token).
RECIPES: dict[str, dict] = {
    "tiny": {
        # the VAE trained a few steps once per dataset (the latent miniature's path, in seconds)
        "model": {"guidance_scale": 1.0, "vae_train": {"steps": 20, "batch_size": 16}},
        "train": {"steps": 40, "batch_size": 16, "lr": 2e-3, "flip": False, "caption_dropout": 0.0,
                  "train_text_encoder": True},
        "dataset": {"digits": {"resolution": 8, "captions_per_image": 2, "limit": 120},
                    "shapes": {"n": 120, "resolution": 8, "holdout": list(SHAPES_HOLDOUT)}, None: {}},
        "customize": {"weights": "cross-attn-kv", "steps": 10, "lr": 1e-3, "batch_size": 4, "flip": False,
                      "reg_weight": 1.0},
    },
    "small": {
        # the built-in latent miniature: a small Stable Diffusion on 32 px RGB → 8×8×4 latents; the VAE trained once
        # per dataset and frozen (autoencoder.py); UNet cross-attention at 4×4 (the down block after the first
        # downsampling, the mid block and the first up block); the text encoder trained jointly (no pretrained CLIP
        # offline). Its regime check, verification and cost: docs/results/2026-12-latent-testbed.md.
        "model": {
            "guidance_scale": 2.0,
            "vae": {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": 4,
                    "norm_num_groups": 16,
                    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3},
            "vae_train": {"steps": 350, "batch_size": 32, "lr": 2e-3},
            "unet": {"block_out_channels": [64, 128], "layers_per_block": 1,
                     "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                     "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8,
                     "norm_num_groups": 16},
            "text_encoder": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4},
        },
        # 1,600 steps (≈ 26 epochs of 4,000 scenes): at 800 one base-model seed of three fails the regime check
        # narrowly; at 1,600 all three pass (docs/benchmarks/leave-k-out.md, regime check)
        "train": {"steps": 1600, "batch_size": 64, "lr": 2e-3, "flip": False, "caption_dropout": 0.1,
                  "guidance_scale": 2.0, "train_text_encoder": True},
        # 4,000 jittered scenes: without jitter the scene space is discrete (a fifth of 4,000 scenes have an exact
        # pixel duplicate) and 2,000, 4,000 or 8,000 scenes at 800 steps give more near-copies than unseen reals
        "dataset": {"shapes": {"n": 4000, "resolution": 32, "backgrounds": list(SHAPES_BACKGROUNDS),
                               "holdout": list(SHAPES_HOLDOUT), "heldout_min_objects": 2, "jitter": SHAPES_JITTER},
                    None: {"resolution": 32}},
        # Custom Diffusion: cross-attention K/V + the modifier token, as the paper and AbC. Deviation: no resize
        # augmentation (augment="custom-diffusion": Custom Diffusion's random rescale and placement with "very
        # small" / "zoomed in" caption prefixes and a loss masked to the placed image; the `paper` recipe has it):
        # the built-in captions name each object's size and position, which a rescaled, moved exemplar would
        # contradict; measured with it, fewer object concepts verify (docs/benchmarks/customized-model.md)
        "customize": {"weights": "cross-attn-kv", "steps": 800, "lr": 5e-3, "batch_size": 8, "flip": False,
                      "reg_weight": 1.0, "reg_batch_size": 8},
    },
    "paper": {
        # the unlearning paper's MSCOCO model: SD-2's frozen text encoder, tokenizer and VAE; the UNet from scratch
        "model": {
            "pretrained": "stabilityai/stable-diffusion-2",
            "from_scratch": ["unet"],
            "resolution": 128,
            "guidance_scale": 7.5,
            "unet": {
                "sample_size": 16, "in_channels": 4, "out_channels": 4,
                "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
            },
        },
        "train": {"steps": 184824, "lr": 1e-4, "batch_size": 128, "flip": True, "caption_dropout": 0.1,
                  "guidance_scale": 7.5},  # 200 epochs of 118,287 images at batch 128
        "dataset": {None: {}},
        # Custom Diffusion's own training: its resize augmentation (on by default in its script) and flips
        "customize": {"weights": "cross-attn-kv", "steps": 250, "lr": 1e-5, "batch_size": 8, "flip": True,
                      "reg_weight": 1.0, "augment": "custom-diffusion"},
    },
}
