"""Built-in model adapters: the tiny text-to-image DDPM and the diffusers pipeline adapter."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.plugins.models"


@hookimpl
def register_models(register):
    register("tiny-t2i", lazy(f"{M}.tiny_t2i:TinyT2I"), version="1", capabilities=["trainable", "customizable"],
             description="Tiny pixel-space text-to-image DDPM: diffusers UNet2DConditionModel with cross-attention, "
                         "a small CLIPTextModel and a word-level tokenizer built from the captions")
    register("diffusers", lazy(f"{M}.diffusers_adapter:DiffusersT2I"), version="2",
             capabilities=["trainable", "customizable"],
             description="Any diffusers text-to-image pipeline (SD v1.x/v2.x layout) from a directory or hub id: "
                         "VAE latents × scaling_factor, CLIP text encoder, UNet, DDPM scheduler")
