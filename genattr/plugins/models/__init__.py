"""Built-in model adapters: the tiny text-to-image DDPM and the diffusers pipeline adapter."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.plugins.models"


@hookimpl
def register_models(register):
    pass
