"""Training and customization recipes of the built-in tiny model per dataset and scale.

``recipe(dataset_name, scale)`` returns ``{"model": TinyT2I kwargs, "train": train config, "dataset": dataset
kwargs}``; ``recipe_customize(scale)`` the customization config. Scales (DESIGN.md): ``tiny`` trains in seconds
(tests, CI) and learns little; ``small`` is a model that really learns, sized to train in a few minutes on a 2-core
CPU (measured times in docs/models.md).

Deviations from the paper, for tiny models: AdamW with lr 1e-3–2e-3 and a cosine schedule instead of lr 1e-4 for
200 epochs; no random horizontal flips for the built-in datasets because their captions are not flip-invariant
(digits are not mirror-symmetric; ``shapes`` captions name left/right positions); the text encoder is trained
jointly (no pretrained CLIP offline); customization fine-tunes the whole UNet (``"full"``) at ``small`` scale
because cross-attention K/V + token was measured too weak to learn a concept at this size (DESIGN.md).
"""

from __future__ import annotations

import copy

from genattr.harness.errors import UserError

DATASETS = ("digits", "shapes")
RECIPE_SCALES = ("tiny", "small")

#: A micro architecture for tests: 8 px, ≈ 0.1 M parameters.
TINY_ARCH = {
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "cross_attention_dim": 16,
    "attention_head_dim": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "text_layers": 1,
    "text_heads": 2,
    "text_intermediate": 32,
}

#: The small architecture (DESIGN.md sizing: blocks (32, 64), one layer per block, cross-attention dim 32, head
#: dim 8). Cross-attention sits at 8×8 (second down block, mid block, first up block) — about 3× faster per step
#: than attention at 16×16 on a CPU.
SMALL_ARCH = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "text_layers": 2,
    "text_heads": 4,
    "text_intermediate": 64,
}

_RECIPES = {
    ("digits", "tiny"): {
        "model": {**TINY_ARCH},
        "train": {"steps": 40, "batch_size": 16, "lr": 2e-3, "flip": False, "caption_dropout": 0.0},
        "dataset": {"resolution": 8, "captions_per_image": 2, "limit": 120},
    },
    ("shapes", "tiny"): {
        "model": {**TINY_ARCH},
        "train": {"steps": 40, "batch_size": 16, "lr": 2e-3, "flip": False, "caption_dropout": 0.0},
        "dataset": {"n": 120, "resolution": 8},
    },
    ("digits", "small"): {
        "model": {**SMALL_ARCH, "guidance_scale": 2.0},
        "train": {"steps": 800, "batch_size": 64, "lr": 2e-3, "flip": False, "caption_dropout": 0.1,
                  "guidance_scale": 2.0},
        # the originals are 8×8: 16 px holds no more information and costs 4× more per step
        "dataset": {"resolution": 8, "captions_per_image": 5},
    },
    ("shapes", "small"): {
        "model": {**SMALL_ARCH, "guidance_scale": 2.0},
        "train": {"steps": 1500, "batch_size": 64, "lr": 2e-3, "flip": False, "caption_dropout": 0.1,
                  "guidance_scale": 2.0},
        "dataset": {"n": 2000, "resolution": 16},
    },
}

_CUSTOMIZE = {
    "tiny": {"weights": "cross-attn-kv", "steps": 10, "lr": 1e-3, "batch_size": 4, "flip": False,
             "reg_weight": 1.0},
    "small": {"weights": "full", "steps": 300, "lr": 2e-4, "batch_size": 8, "flip": False, "reg_weight": 1.0,
              "reg_batch_size": 8},
}


#: The recipe of a dataset without one of its own (a third-party dataset): the scale's architecture and the shapes
#: training schedule; no dataset keyword arguments (give them with the benchmark's ``dataset_config``).
_GENERIC = {
    "tiny": {"model": {**TINY_ARCH}, "train": dict(_RECIPES[("shapes", "tiny")]["train"]), "dataset": {}},
    "small": {"model": {**SMALL_ARCH, "guidance_scale": 2.0}, "train": dict(_RECIPES[("shapes", "small")]["train"]),
              "dataset": {}},
}


def recipe(dataset_name: str, scale: str) -> dict:
    """``{"model": ..., "train": ..., "dataset": ...}`` for a dataset at a scale (a fresh copy): the built-in
    datasets' own recipes, the generic one for any other dataset."""
    if scale not in RECIPE_SCALES:
        raise UserError(f"no model recipe for scale {scale!r}; choose one of {', '.join(RECIPE_SCALES)}")
    if dataset_name not in DATASETS:
        return copy.deepcopy(_GENERIC[scale])
    return copy.deepcopy(_RECIPES[(dataset_name, scale)])


def recipe_customize(scale: str) -> dict:
    """The customization config (for ``model.customize``) at a scale; add ``reg_dataset`` yourself."""
    if scale not in RECIPE_SCALES:
        raise UserError(f"no customization recipe for scale {scale!r}; choose one of {', '.join(RECIPE_SCALES)}")
    return copy.deepcopy(_CUSTOMIZE[scale])
