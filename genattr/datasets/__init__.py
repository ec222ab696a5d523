"""Built-in datasets: digits and shapes (no download), mscoco and abc (real data from local paths).

Each dataset lives in its own module, imported only when the dataset is created (no torch import here).
"""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.datasets"

# name, target, version, builtin (no download), description
DATASETS = [
    ("digits", "digits:Digits", "1", True,
     "scikit-learn's bundled handwritten digits (1797 images, 8×8 grey) resized to 16 px, 5 captions per image"),
    ("shapes", "shapes:Shapes", "1", True,
     "Procedural captioned scenes: 1–3 coloured circles/squares/triangles at named positions, RGB 16 px "
     "(the offline MSCOCO stand-in); also renders novel-glyph and novel-style concepts"),
    ("mscoco", "mscoco:MSCOCO", "1", False,
     "MSCOCO 2017 from a local directory: captions_{split}.json + images, 5 captions per image, optional latents"),
    ("abc", "abc:AbCPool", "1", False,
     "The public AbC benchmark's retrieval pool (dataset/laion_subset) from a local directory"),
]


@hookimpl
def register_datasets(register):
    for name, target, version, builtin, description in DATASETS:
        register(name, lazy(f"{M}.{target}"), version=version, builtin=builtin, description=description)
