"""Built-in attribution methods (one plugin; each method lives in its own module, imported lazily)."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.plugins.methods"


@hookimpl
def register_methods(register):
    register("unlearning", lazy(f"{M}.unlearning:Unlearning"), version="1",
             description="Attribution by unlearning the synthesized image: Fisher-preconditioned Newton steps on "
                         "cross-attention K/V, score = training-loss increase (Wang et al. 2024)",
             presets=["tiny", "small", "coco", "customized"], needs_model=True)
    register("random", lazy(f"{M}.baselines:RandomMethod"), version="1",
             description="Uniform random scores, seeded (the chance baseline)", needs_model=False)
    register("pixel", lazy(f"{M}.baselines:PixelMethod"), version="1",
             description="Cosine similarity of flattened pixels (max over horizontal flips)", needs_model=False)
