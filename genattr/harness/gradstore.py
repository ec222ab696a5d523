"""The gradient store: per-item gradients computed once, on disk, memory-mapped, shared by every gradient method.

TRAK, D-TRAK, JourneyTRAK (training side), DataInf and the unlearning prescreen each need, for every training item,
the gradient of one output function over chosen weights, reduced over a few draws (timestep, caption, noise) and
optionally randomly projected. :class:`GradientStore` computes such an array once per
:class:`GradientSpec` and model/dataset pair and keeps it in the cache:

* **Key**: the store version, the model and dataset fingerprints and everything in the spec that changes a value —
  weights (``selection`` + ``include``), output function, draw scheme (timesteps or their count, namespace, shared
  or per-item draws, captions), flips, per-draw normalisation (only when not ``"none"``, so entries written before
  the option existed keep their keys), reduction, projection kind + dimension + seed (and the device type a random
  projection is generated on: CPU and CUDA generators differ), storage dtype and noise seed
  (:meth:`GradientSpec.key_parts`). Batch size, vmap/loop mode and progress bars are not in it (they change
  nothing but float rounding).
* **Per-draw normalisation** (``normalize="unit"``): every per-sample gradient (one draw: one timestep, caption and
  noise) is scaled to unit L2 norm over the selected weights *before* it is projected and reduced — the
  re-normalisation of diffusion-ReTrac (Xie et al., TMLR 2024), which removes the timestep-dominated "dominating norm
  effect"; DAS's public code normalises its per-timestep gradients the same way. :class:`UnitNormGrad` applies it
  to any per-sample gradient function (for query-side features with the same normalisation).
* **Layout**: one raw ``grads.npy`` of shape ``N × V × k`` (``V`` views: the image and, with ``flips``, its
  horizontal flip, each once or — for an output function with probes, ``probes`` = S — once per seeded Rademacher
  probe, view ``flip × S + probe``; ``k`` the projection dimension or the number of selected weights), float32 or
  float16,
  plus ``layout.json`` (parameter names and shapes, evaluations spent). Written with
  ``numpy.lib.format.open_memmap`` and read back with ``numpy.load(..., mmap_mode="r")``: no pickle, and peak memory
  stays at one chunk whatever the pool size (after each chunk the mapped pages are released with
  ``madvise(MADV_DONTNEED)``, so they do not accumulate in the resident set either).
* **Resumable**: the array is filled chunk by chunk in a staging folder under the cache root
  (``.staging/gradients/<key>/``, one process at a time through a lock file); ``progress.json`` records the rows
  finished after each flushed chunk, so a killed computation restarts at its last finished chunk. The finished
  array is then moved into a regular cache entry (``Cache.writing``: manifest + checksum, atomic rename), so a
  reader only ever sees complete entries.
* **Projected entries from an unprojected one**: projection is linear, so a projected row equals the projection of
  the unprojected (``projection="identity"``) row of the same spec, up to float rounding. When a float32
  identity entry of the same spec exists — or ``via_identity=True`` asks for one to be computed first — a
  projected entry is written by projecting its rows chunk by chunk instead of taking the gradients again, so a
  sweep over projection sizes or projection seeds costs one pass over the gradients and one matrix product per
  configuration. Such an entry has the same key as a directly computed one (like batch size, the path changes
  only rounding), counts no gradient evaluations of its own, and names its source in ``layout.json``
  (``derived_from``). The identity entry holds ``N × V × P`` floats for ``P`` selected weights: meant for small
  selections (cross-attention K/V), not a whole UNet.

:attr:`GradientStore.evaluations` counts the per-sample gradients this process computed (the UNet
forward + backward passes), for cost accounting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import UserError

NAMESPACE = "gradients"
#: Bump when what the store computes for the same key changes.
STORE_VERSION = "1"
DTYPES = ("float32", "float16")
REDUCTIONS = ("mean", "sum")
#: Per-draw gradient normalisations: ``"none"``, or ``"unit"`` (each draw's gradient scaled to unit L2 norm).
NORMALIZATIONS = ("none", "unit")
#: The largest unprojected entry ``via_identity`` may write (a whole-UNet selection would need terabytes).
MAX_IDENTITY_BYTES = 16 << 30


@dataclass(frozen=True)
class GradientSpec:
    """What to compute per item (see the module docstring). ``draws`` is a JSON-able draw scheme
    (:func:`genattr.harness.gradients.make_draws`); ``proj_dim`` is ignored for ``projection="identity"``."""

    selection: str = "cross-attn-kv"
    include: tuple[str, ...] | None = None
    output: str = "loss"
    draws: dict = field(default_factory=lambda: {"kind": "random", "count": 1, "namespace": "store"})
    flips: bool = False
    reduce: str = "mean"
    projection: str = "identity"
    proj_dim: int | None = None
    proj_seed: int = 0
    dtype: str = "float32"
    seed: int = 0
    normalize: str = "none"
    probes: int = 0  # Rademacher probes per row, for output functions that take one (gradients.PROBE_OUTPUTS)
    # not part of the key
    batch_size: int = 32
    grad_mode: str = "vmap"
    max_projector_bytes: int = 1 << 29
    via_identity: bool = False  # compute the unprojected entry first and project it (see the module docstring)

    def __post_init__(self):
        from .gradients import DRAW_KINDS, OUTPUTS, PROJECTION_KINDS

        if self.output not in OUTPUTS:
            raise UserError(f"gradient store: unknown output function {self.output!r}; known: {', '.join(OUTPUTS)}")
        if self.projection not in PROJECTION_KINDS:
            raise UserError(f"gradient store: unknown projection {self.projection!r}; choose one of "
                            f"{', '.join(PROJECTION_KINDS)}")
        if self.projection != "identity" and (self.proj_dim is None or int(self.proj_dim) < 1):
            raise UserError(f"gradient store: projection {self.projection!r} needs a positive proj_dim")
        if self.dtype not in DTYPES:
            raise UserError(f"gradient store: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.normalize not in NORMALIZATIONS:
            raise UserError(f"gradient store: normalize must be one of {', '.join(NORMALIZATIONS)}, "
                            f"got {self.normalize!r}")
        if self.reduce not in REDUCTIONS:
            raise UserError(f"gradient store: reduce must be one of {', '.join(REDUCTIONS)}, got {self.reduce!r}")
        from .gradients import PROBE_OUTPUTS

        if (self.output in PROBE_OUTPUTS) != (int(self.probes) > 0):
            raise UserError(f"gradient store: output {self.output!r} needs probes > 0 exactly when it takes a probe")
        if not isinstance(self.draws, dict) or self.draws.get("kind") not in DRAW_KINDS:
            raise UserError(f"gradient store: draws must be a draw scheme with kind in {', '.join(DRAW_KINDS)}")
        if self.include is not None:
            object.__setattr__(self, "include", tuple(self.include))

    @property
    def views(self) -> int:
        return (2 if self.flips else 1) * max(1, int(self.probes))

    def view(self, v: int) -> tuple[bool, int | None]:
        """(flipped, probe index or None) of view ``v``."""
        p = max(1, int(self.probes))
        return bool(v // p), (v % p if self.probes else None)

    def key_parts(self, device_type: str = "cpu") -> dict:
        """Every field that changes a stored value (see the module docstring)."""
        d = asdict(self)
        for k in ("batch_size", "grad_mode", "max_projector_bytes", "via_identity"):
            d.pop(k)
        d["include"] = list(self.include) if self.include is not None else None
        if self.normalize == "none":
            d.pop("normalize")  # keys of entries written before the option existed stay the same
        if not self.probes:
            d.pop("probes")  # likewise
        if self.projection == "identity":
            d["proj_dim"] = d["proj_seed"] = None
        else:
            d["projector_device"] = device_type
        return d


class StoredGradients:
    """A finished store entry: :attr:`array` (``N × V × k``, memory-mapped read-only), the parameter layout, and
    helpers that stream it in float32 chunks."""

    def __init__(self, path: Path, spec: GradientSpec, key: str):
        import numpy as np

        self.path, self.spec, self.key = Path(path), spec, key
        self.array = np.load(self.path / "grads.npy", mmap_mode="r")
        info = json.loads((self.path / "layout.json").read_text())
        self.names: list[str] = list(info["names"])
        self.shapes: list[tuple[int, ...]] = [tuple(s) for s in info["shapes"]]
        self.evaluations = int(info.get("evaluations", 0))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def views(self) -> int:
        return int(self.array.shape[1])

    @property
    def dim(self) -> int:
        return int(self.array.shape[2])

    def layout(self):
        from .gradients import Layout

        return Layout(tuple(self.names), tuple(self.shapes))

    def chunk_rows(self, max_bytes: int = 64 << 20) -> int:
        return max(1, int(max_bytes) // max(1, self.views * self.dim * 4))

    def chunks(self, rows: Sequence[int] | None = None, max_bytes: int = 64 << 20) -> Iterator[tuple[int, Any]]:
        """``(offset, float32 tensor chunk × V × k)`` over all rows (or the given ``rows``, in that order);
        ``offset`` is the position of the chunk's first row in the iteration."""
        import numpy as np
        import torch

        step = self.chunk_rows(max_bytes)
        if rows is None:
            for a in range(0, len(self), step):
                got = np.array(self.array[a:a + step], dtype=np.float32)
                _release(self.array)
                yield a, torch.from_numpy(got)
        else:
            rows = np.asarray(list(rows), dtype=np.int64)
            for a in range(0, len(rows), step):
                part = rows[a:a + step]
                got = np.array(self.array[np.sort(part)], dtype=np.float32)  # sorted reads from the memory map
                _release(self.array)
                yield a, torch.from_numpy(got[np.argsort(np.argsort(part, kind="stable"), kind="stable")])

    def dot(self, vectors, rows: Sequence[int] | None = None, max_bytes: int = 64 << 20):
        """``G · vᵀ`` in float64: a ``len(rows) × V × Q`` numpy array for ``vectors`` ``Q × k``."""
        import numpy as np
        import torch

        v = torch.as_tensor(vectors, dtype=torch.float64)
        n = len(self) if rows is None else len(rows)
        out = np.zeros((n, self.views, v.shape[0]), dtype=np.float64)
        for a, g in self.chunks(rows, max_bytes):
            out[a:a + g.shape[0]] = (g.double() @ v.T).numpy()
        return out


class GradientStore:
    """Per-item gradients of a dataset under a model, computed once per (model, dataset, spec) and kept in
    ``cache`` (see the module docstring). ``chunk_items`` items are computed and flushed at a time."""

    def __init__(self, cache, chunk_items: int = 256):
        self.cache = cache
        self.chunk_items = max(1, int(chunk_items))
        self.evaluations = 0
        self._open: dict[str, StoredGradients] = {}

    # -- keys -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _device_type(device) -> str:
        return str(device).split(":")[0]

    def key(self, model, dataset, spec: GradientSpec, device="cpu") -> str:
        from .cache import Cache

        return Cache.key("gradient-store", STORE_VERSION, model.fingerprint, dataset.fingerprint,
                         spec.key_parts(self._device_type(device)))

    # -- tools ----------------------------------------------------------------------------------------------------
    def parameters(self, model, spec: GradientSpec) -> dict:
        from .gradients import select_parameters

        return select_parameters(model, spec.selection, spec.include)

    def projector(self, model, spec: GradientSpec, device="cpu"):
        """The projector of ``spec`` (None for the identity): the same matrix the stored rows were projected with,
        for projecting query-side vectors (a query gradient, an unlearning step Δθ)."""
        from .gradients import Layout, Projector

        if spec.projection == "identity":
            return None
        params = self.parameters(model, spec)
        dim = Layout(tuple(params), tuple(tuple(p.shape) for p in params.values())).dim
        return Projector(dim, int(spec.proj_dim), seed=int(spec.proj_seed), kind=spec.projection, device=device,
                         max_cached_bytes=int(spec.max_projector_bytes))

    # -- the store ------------------------------------------------------------------------------------------------
    def lookup(self, model, dataset, spec: GradientSpec, device="cpu") -> StoredGradients | None:
        key = self.key(model, dataset, spec, device)
        if key in self._open:
            return self._open[key]
        p = self.cache.lookup(NAMESPACE, key)
        if p is None:
            return None
        try:
            got = StoredGradients(p, spec, key)
        except (OSError, ValueError, KeyError) as exc:
            self.cache.discard(NAMESPACE, key, f"does not load: {type(exc).__name__}")
            return None
        self._open[key] = got
        return got

    @staticmethod
    def identity_spec(spec: GradientSpec) -> GradientSpec:
        """The unprojected float32 spec whose rows ``spec``'s projected rows can be derived from."""
        return dataclasses.replace(spec, projection="identity", proj_dim=None, proj_seed=0, dtype="float32",
                                   via_identity=False)

    def get(self, model, dataset, spec: GradientSpec, device="cpu", progress: bool = False,
            desc: str = "gradients") -> StoredGradients:
        """The stored gradients of ``dataset`` under ``model`` for ``spec``, computed (or resumed) when missing;
        a projected entry is derived from an unprojected one when that exists or ``spec.via_identity`` asks for it
        (see the module docstring)."""
        got = self.lookup(model, dataset, spec, device)
        if got is not None:
            return got
        raw = None
        if spec.projection != "identity":
            ident = self.identity_spec(spec)
            raw = self.lookup(model, dataset, ident, device)
            if raw is None and spec.via_identity:
                params = self.parameters(model, spec)
                size = len(dataset) * spec.views * sum(int(p.numel()) for p in params.values()) * 4
                if size > MAX_IDENTITY_BYTES:
                    raise UserError(f"gradient store: the unprojected gradients would take {size / 2**30:.1f} GiB "
                                    f"(more than {MAX_IDENTITY_BYTES / 2**30:.0f} GiB); leave via_identity off "
                                    f"(unprojected_store) for this selection")
                raw = self.get(model, dataset, ident, device, progress, desc)
        key = self.key(model, dataset, spec, device)
        staging = self.cache.root / ".staging" / NAMESPACE / key
        try:
            staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.cache.unwritable(exc) if hasattr(self.cache, "unwritable") else exc
        with _locked(staging.parent / f"{key}.lock"):
            got = self.lookup(model, dataset, spec, device)  # another process finished it meanwhile
            if got is not None:
                return got
            staging.mkdir(parents=True, exist_ok=True)
            if raw is not None:
                self._project(raw, model, spec, device, staging)
            else:
                self._compute(model, dataset, spec, device, staging, progress, desc)
            meta = {"store_version": STORE_VERSION, "model": model.fingerprint, "dataset": dataset.fingerprint,
                    "spec": spec.key_parts(self._device_type(device)), "rows": len(dataset)}
            if raw is not None:
                meta["derived_from"] = raw.key
            with self.cache.writing(NAMESPACE, key, meta) as tmp:
                os.replace(staging / "grads.npy", tmp / "grads.npy")
                os.replace(staging / "layout.json", tmp / "layout.json")
            shutil.rmtree(staging, ignore_errors=True)
        got = self.lookup(model, dataset, spec, device)
        if got is None:  # pragma: no cover - the entry vanished between store and lookup
            raise RuntimeError(f"gradient store entry {key[:12]} could not be read back")
        return got

    def _project(self, raw: StoredGradients, model, spec: GradientSpec, device, staging: Path) -> None:
        """Write ``spec``'s projected rows into ``staging`` from the unprojected entry ``raw``, chunk by chunk."""
        import numpy as np

        proj = self.projector(model, spec, device)
        n, views, dim = len(raw), raw.views, proj.dim_out
        arr = np.lib.format.open_memmap(staging / "grads.npy", mode="w+", dtype=np.dtype(spec.dtype),
                                        shape=(n, views, dim))
        for a, g in raw.chunks():
            out = proj(g.reshape(-1, raw.dim)).reshape(g.shape[0], views, dim)
            arr[a:a + g.shape[0]] = out.cpu().numpy().astype(spec.dtype, copy=False)
            arr.flush()
            _release(arr)
        del arr
        _write_json(staging / "layout.json", {"names": list(raw.names), "shapes": [list(s) for s in raw.shapes],
                                              "evaluations": 0, "dim": dim, "views": views,
                                              "derived_from": raw.key})

    def _compute(self, model, dataset, spec: GradientSpec, device, staging: Path, progress: bool, desc: str) -> None:
        import numpy as np
        import torch

        from .gradients import Layout, PerSampleGrad, dataset_items, gradient_features, make_draws
        from .progress import bar

        params = self.parameters(model, spec)
        layout = Layout(tuple(params), tuple(tuple(p.shape) for p in params.values()))
        proj = self.projector(model, spec, device)
        dim = layout.dim if proj is None else proj.dim_out
        n, views = len(dataset), spec.views
        shape = (n, views, dim)
        state_file, arr_file = staging / "progress.json", staging / "grads.npy"
        state = {"shape": list(shape), "dtype": spec.dtype, "done": 0, "evaluations": 0}
        arr = None
        if state_file.is_file() and arr_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(state_file.read_text())
                if old.get("shape") == list(shape) and old.get("dtype") == spec.dtype:
                    arr = np.lib.format.open_memmap(arr_file, mode="r+")
                    if tuple(arr.shape) != shape:
                        arr = None
                    else:
                        state = old
        if arr is None:
            arr = np.lib.format.open_memmap(arr_file, mode="w+", dtype=np.dtype(spec.dtype), shape=shape)
            _write_json(state_file, state)
        gf = PerSampleGrad(model, params, target=spec.output, mode=spec.grad_mode)
        if spec.normalize == "unit":
            gf = UnitNormGrad(gf)
        draws = make_draws(spec.draws, int(spec.seed), int(model.num_train_timesteps))
        done = int(state["done"])
        chunk = self.chunk_items
        steps = range(done, n, chunk)
        b = bar(steps, desc=desc, unit="chunk", enabled=progress)
        for start in b:
            rows = list(range(start, min(start + chunk, n)))
            for v in range(views):
                flip, probe = spec.view(v)
                load = dataset_items(dataset, rows, flip=flip)
                count = 0

                def counted(item, _d=draws, _p=probe):
                    nonlocal count
                    out = _d(item)
                    if _p is not None:
                        out = [dataclasses.replace(d, probe=_p) for d in out]
                    count += len(out)
                    return out

                feats = gradient_features(model, load, len(rows), counted, gf, proj, reduce=spec.reduce,
                                          batch_size=int(spec.batch_size), seed=int(spec.seed), device=device)
                arr[start:start + len(rows), v, :] = feats.to(torch.float32).numpy().astype(spec.dtype, copy=False)
                state["evaluations"] = int(state["evaluations"]) + count
                self.evaluations += count
            arr.flush()
            _release(arr)
            state["done"] = start + len(rows)
            _write_json(state_file, state)
        del arr
        _write_json(staging / "layout.json", {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes],
                                              "evaluations": int(state["evaluations"]), "dim": dim,
                                              "views": views})


class UnitNormGrad:
    """A per-sample gradient function (such as :class:`~genattr.harness.gradients.PerSampleGrad`) whose rows — one
    draw's gradient over the selected weights each — are scaled to unit L2 norm (``g / max(‖g‖, eps)``; a zero
    gradient stays zero). The store applies it with ``normalize="unit"``; methods wrap their query-side gradient
    function in it so queries get the same normalisation as the stored rows."""

    def __init__(self, grad_fn, eps: float = 1e-12):
        self.inner = grad_fn
        self.layout = grad_fn.layout
        self.eps = float(eps)

    def __getattr__(self, name):
        # everything else (target, mode, params, ...) is the wrapped function's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        g = self.inner(*args, **kwargs)
        return g / g.norm(dim=1, keepdim=True).clamp_min(self.eps)


def _release(arr) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (the file and the page cache keep
    them): reading or writing a large store chunk by chunk then keeps the resident set at one chunk."""
    import mmap

    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op where it is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def store_for(cache) -> GradientStore:
    """One :class:`GradientStore` per cache root in this process (so open entries and counters are shared)."""
    key = str(Path(cache.root).resolve())
    if key not in _STORES:
        _STORES[key] = GradientStore(cache)
    return _STORES[key]


_STORES: dict = {}
