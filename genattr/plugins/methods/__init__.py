"""Built-in attribution methods (one plugin; each method lives in its own module, imported lazily)."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.plugins.methods"

# name, target, version, needs_model, description
METHODS = [
    ("unlearning", "unlearning:Unlearning", "3", True,
     "Attribution by unlearning the synthesized image: Fisher-preconditioned Newton steps on cross-attention K/V; "
     "score = training-loss increase (Wang et al. 2024); optional prescreen (coarse timesteps or a second-order "
     "expansion) with exact scores on the head; presets: tiny, small, customized-tiny, customized-small, coco, customized"),
    ("random", "baselines:RandomMethod", "1", False, "Uniform random scores, seeded (the chance baseline)"),
    ("pixel", "baselines:PixelMethod", "1", False, "Cosine similarity of flattened pixels (max over horizontal flips)"),
    ("features", "features:BuiltinFeatureMethod", "1", False,
     "Cosine similarity of embeddings from a small encoder trained on the built-in data (offline stand-in for CLIP/DINO)"),
    ("clip", "features:ClipImageMethod", "1", False, "Cosine similarity of CLIP image embeddings (ViT-B/32 by default)"),
    ("clip-text", "features:ClipTextMethod", "1", False,
     "Cosine similarity of the CLIP text embedding of training captions vs the query prompt"),
    ("dino", "features:DinoMethod", "1", False, "Cosine similarity of DINO ViT-B/16 embeddings"),
    ("dinov2", "features:Dinov2Method", "1", False, "Cosine similarity of DINOv2 ViT-L/14 (with registers) embeddings"),
    ("abc-clip", "abc_tuned:AbcClipMethod", "1", False,
     "AbC-tuned CLIP: frozen backbone + contrastively trained linear mappers (Wang et al. 2023)"),
    ("abc-dino", "abc_tuned:AbcDinoMethod", "1", False,
     "AbC-tuned DINO: frozen backbone + contrastively trained linear mappers (Wang et al. 2023)"),
    ("trak", "trak:TrakMethod", "1", True, "TRAK: projected DDPM-loss gradients with the (ΦᵀΦ+λI)⁻¹ kernel (Park et al. 2023)"),
    ("dtrak", "trak:DTrakMethod", "1", True,
     "D-TRAK: TRAK with the ‖ε_θ‖² output and uniformly strided timesteps (Zheng et al. 2024)"),
    ("journeytrak", "trak:JourneyTrakMethod", "1", True,
     "JourneyTRAK: TRAK features along the query's sampling trajectory (Georgiev et al. 2023)"),
    ("datainf", "datainf:DataInfMethod", "1", True, "DataInf: closed-form influence approximation (Kwon et al. 2024)"),
    ("das", "das:DASMethod", "2", True,
     "DAS: influence through the change of the predicted noise, linearised and projected (Lin et al. 2025)"),
    ("retrac", "retrac:ReTracMethod", "2", True,
     "Diffusion-ReTrac: re-normalised gradient similarity without the timestep norm bias (Xie et al. 2024)"),
    ("distilled", "distilled:DistilledMethod", "3", False,
     "Distilled attribution (FastGDA): a feature MLP trained on unlearning rankings, cosine search (Wang et al. 2025)"),
]


@hookimpl
def register_methods(register):
    for name, target, version, needs_model, description in METHODS:
        register(name, lazy(f"{M}.{target}"), version=version, needs_model=needs_model, description=description)
