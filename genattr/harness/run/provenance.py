"""Provenance of a run: genattr, Python and library versions, the git checkout, the plugins, the device.

Nothing here imports torch except :func:`resolve_device`.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError

#: Libraries whose versions are recorded in run.json (read from metadata: nothing is imported).
RECORDED_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "numpy", "scikit-learn", "safetensors",
                     "pandas", "ray", "pluggy")


def package_versions(names: Iterable[str] = RECORDED_PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:  # importable without metadata (vendored, on PYTHONPATH)?
            module = sys.modules.get(n.replace("-", "_").replace("scikit_learn", "sklearn"))
            out[n] = getattr(module, "__version__", None) if module is not None else None
    return out


def git_info() -> dict | None:
    """Commit and dirty flag of the git checkout genattr runs from, or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    from genattr import __version__

    return {
        "genattr": __version__,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "packages": package_versions(),
        "git": git_info(),
    }


def plugin_list() -> list[dict]:
    from ..manager import all_plugins

    return [{"name": p.name, "version": p.version, "distribution": p.distribution, "builtin": p.builtin,
             "skipped": p.error.splitlines()[0] if p.error else None} for p in all_plugins(True)]


DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str) -> str:
    """The device to run on: ``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``; ``cuda`` /
    ``cuda:N`` and ``mps`` only when this machine has them. Anything else is a one-line :class:`UserError` (imports
    torch)."""
    import torch

    d = str(device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return "cpu"
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA GPU that torch can use "
                            "(use --device cpu or auto)")
        if d != "cuda":
            idx = d.partition(":")[2]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise UserError(f"--device {device}: no such GPU (torch sees {torch.cuda.device_count()})")
        return d
    if d == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"--device {device}: MPS is not available on this machine (use --device cpu or auto)")
        return d
    raise UserError(f"unknown --device {device!r}; choose one of {', '.join(DEVICE_KINDS)}")


#: Keys of a benchmark's set-up provenance whose values (at any depth) name the artefacts its rows were made with.
ARTEFACT_KEYS = ("datasets", "models")


def artefact_fingerprints(provenance: Any) -> dict[str, str]:
    """Every dataset and model a benchmark's set-up reported (the values under :data:`ARTEFACT_KEYS`, at any depth),
    by path: ``{"model_seeds.1.models.base": "a7de8c…", "datasets.shapes-train": "f69510…"}``."""
    out: dict[str, str] = {}

    def walk(node: Any, path: tuple[str, ...], inside: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (str(k),), inside or k in ARTEFACT_KEYS)
        elif inside and isinstance(node, str):
            out[".".join(path)] = node

    walk(provenance, (), False)
    return out


def check_same_artefacts(benchmark: str, expected: dict[str, str] | None, provenance: Any, out: str) -> None:
    """A resumed run must score on the artefacts the directory's rows were made with: a dataset or model of this
    set-up (``provenance``) that differs from the one ``expected`` records under the same path is a one-line
    :class:`UserError`, before any cell. Models retrained on another machine, with another thread count or with
    changed code can differ bit for bit; their customized models and generated queries then differ too, and the
    leaderboard would pair rows that share only a query's name. Paths on one side only (a model seed added) pass."""
    if not expected:
        return
    got = artefact_fingerprints(provenance)
    differ = [k for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
    if differ:
        k = differ[0]
        more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
        raise UserError(f"{benchmark}: this set-up built {k} = {got[k][:12]}…{more}, but the rows already in {out} "
                        f"were made with {expected[k][:12]}…; adding to them would pair results on different models "
                        "and queries — use a new --out, or import the pack those rows were made with "
                        "(genattr pack import) and re-run")
