"""Teacher rankings (a public host service): what a slow attribution method (by default the exhaustive ``unlearning``) ranks first for a set
of queries, computed once and kept in the cache — the training signal of the distilled method
(:mod:`genattr.plugins.methods.distilled`) and the reference of the ``teacher-agreement`` benchmark.

The teacher-ranking store
-------------------------
:class:`TeacherStore` scores queries through the one scoring path (``genattr.score``) with the registered teacher
method (``genattr.get_method(teacher, **options)`` resolved with ``resolve_config(scale, preset_hint)``), over the
whole training set (no prescreen unless the options ask for one), and keeps, per query, the **top ``keep``** training
indices (best first) and their scores — never the full ``Q × N`` matrix.

* **Key** of a store: the teacher's name, version and *resolved* configuration, the model and dataset fingerprints,
  the query recipe (how the queries were made: ``{"kind": "training-captions", seed, steps, guidance}`` for
  :func:`training_queries`, the benchmark's own description for held-out queries), ``keep`` and the run seed
  (:meth:`TeacherStore.key`). Each query is its own cache entry (namespace ``teacher/rankings``: ``arrays.npz`` with
  ``indices`` and ``scores``), keyed by the store key, the query's id and prompt and a sha256 of its image — so a
  computation that is interrupted resumes at the first query without an entry, and a second store with the same key
  reads everything back. Queries are scored ``batch`` at a time (one ``attribute`` call walks the training set once
  for all of them).
* :attr:`TeacherStore.stats` records the queries computed here and the seconds they took (``prepare`` — Fisher, θ0
  losses — separately), which is where the speed ratio of a distilled method to its teacher comes from.

Training queries
----------------
:func:`training_queries`: images the model generates from **training captions** with **fresh seeds** (FastGDA's
training queries): the first ``count`` items of seeded permutations of the training set (``(seed,
"teacher/training-queries")``; so a larger count keeps a smaller count's queries and their cached rankings), one of
each item's captions, and a seed ``derive_seed(seed, "teacher/query-seed",
j)`` per query — a namespace no benchmark uses for its own queries. Images are cached in chunks (namespace
``teacher/queries``) keyed by the model fingerprint and the recipe.

The official release's rank files
---------------------------------
:func:`load_rank_file` reads the rank files of the FastGDA release (``influence_train.pkl`` /
``influence_test.pkl``, written by its ``abu/coco/merge_{train,test}.py``) **without unpickling them**: a static
reader walks the pickle's opcodes (``pickletools.genops``) and rebuilds only dicts, lists, tuples, strings, numbers
and numpy arrays (``numpy.core.multiarray._reconstruct`` + ``numpy.dtype`` states, or protocol 5's
``_frombuffer``); any other global is refused. Layout read:

* ``influence_train.pkl``: ``{"random": {"rank": int (Q, L), "influence_subset": float (Q, L),
  "rank_influence_subset": int (Q, L)}}`` — the teacher (AbU+) scored each training query's L = 10,000 nearest DINO
  neighbours; ``influence_subset`` is in neighbour order, ``rank_influence_subset`` sorts it (descending), ``rank`` is
  the training-set indices in that order (best first).
* ``influence_test.pkl``: ``{"random": {"influence": float (Q, N), "rank": int (Q, N)}}`` — exhaustive scores over
  the N = 118,287 COCO images and their descending order.

An ``.npz`` with ``rank`` (and optionally ``influence`` / ``influence_subset`` + ``rank_influence_subset``, or
``scores`` in rank order) is read the same way with ``allow_pickle=False``; converting a release file to it once
(``numpy.savez``) is the recommended route. :func:`rankings_from_file` turns either into :class:`TeacherRankings`;
:func:`load_query_dir` reads the release's query images (``{i}.png``, optional ``prompts.json``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genattr.harness.errors import UserError

NAMESPACE = "teacher/rankings"
QUERY_NAMESPACE = "teacher/queries"
#: Bumped when what the store keeps for the same key changes.
VERSION = "1"
#: Queries generated per cache entry (and per ``generate`` call) by :func:`training_queries`.
QUERY_CHUNK = 32


@dataclass
class TeacherRankings:
    """Per query, the teacher's top training indices (best first) and their scores.

    ``indices`` ``Q × k`` int64 (``-1`` pads a query with fewer known items), ``scores`` ``Q × k`` float64 (NaN where
    unknown), ``n`` the pool size, ``fingerprint`` identifies the teacher (the store key, or the file's sha256),
    ``query_ids`` one per row."""

    query_ids: list[str]
    indices: np.ndarray
    scores: np.ndarray
    n: int
    fingerprint: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def top(self, q: int, k: int | None = None) -> np.ndarray:
        """The first ``k`` known indices of query row ``q`` (all known ones when ``k`` is None)."""
        row = self.indices[int(q)]
        row = row[row >= 0]
        return row if k is None else row[: int(k)]


# -- the store -----------------------------------------------------------------------------------------------------
def image_sha(image) -> str:
    import torch

    t = torch.as_tensor(image).detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(t.numpy().tobytes() + str(tuple(t.shape)).encode()).hexdigest()


def top_k(scores, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the ``k`` highest scores, best first (ties: lower index first; NaN lowest)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.where(np.isnan(s), -np.inf, s), kind="stable")[: int(k)]
    return order.astype(np.int64), s[order]


class TeacherStore:
    """Teacher rankings of queries under ``model`` over ``dataset`` (see the module docstring).

    ``teacher``/``options``: the registered method and its options; ``scale``/``preset_hint``/``preset_model``: what
    it is resolved with (:func:`~genattr.harness.api.resolve_method_config`); ``keep``: how many top items are kept
    per query (None: all N, capped at ``max_keep``); ``extra``: what the teacher's context offers besides the preset hint (e.g. ``base_model``); ``batch``: queries per ``attribute``
    call."""

    def __init__(self, cache, model, dataset, teacher: str = "unlearning", options: dict | None = None,
                 scale: str = "tiny", preset_hint: str | None = None, keep: int | None = None, seed: int = 0,
                 device: str = "cpu", progress: bool = False, extra: dict | None = None, batch: int = 8,
                 max_keep: int = 10_000, preset_model: str | None = None):
        import genattr
        from genattr.harness.api import resolve_method_config

        if model is None:
            raise UserError(f"teacher {teacher!r} needs a model to rank with (the context has none)")
        self.cache, self.model, self.dataset = cache, model, dataset
        self.teacher = str(teacher)
        self.options = dict(options or {})
        try:
            self.method = genattr.get_method(self.teacher, **self.options)
        except TypeError as exc:
            raise UserError(f"teacher {self.teacher!r}: bad options ({str(exc).splitlines()[0]})") from None
        self.scale, self.preset_hint, self.preset_model = scale, preset_hint, preset_model
        resolved = resolve_method_config(self.method, scale, preset_hint, preset_model)
        self.config = dict(resolved if resolved is not None else getattr(self.method, "config", {}))
        n = len(dataset)
        self.keep = int(min(n, int(keep) if keep else min(n, int(max_keep))))
        if self.keep < 1:
            raise UserError("teacher: keep must be a positive number of items")
        self.seed, self.device, self.progress = int(seed), str(device), bool(progress)
        self.extra = dict(extra or {})
        self.batch = max(1, int(batch))
        self.stats = {"queries_computed": 0, "queries_loaded": 0, "prepare_s": 0.0, "attribute_s": 0.0}

    @property
    def version(self) -> str:
        return str(getattr(self.method, "version", "0"))

    def key(self, recipe: dict) -> str:
        """The store's identity for queries made by ``recipe`` (see the module docstring)."""
        from genattr.harness.cache import Cache

        return Cache.key("teacher-rankings", VERSION, self.teacher, self.version, self.config, self.model.fingerprint,
                         self.dataset.fingerprint, recipe, self.keep, self.seed)

    def _query_key(self, store_key: str, query) -> str:
        from genattr.harness.cache import Cache

        return Cache.key(store_key, str(query.id), str(query.prompt), image_sha(query.image))

    def context(self):
        from genattr.harness.api import AttributionContext

        return AttributionContext(model=self.model, train_set=self.dataset, cache=self.cache, device=self.device,
                                  seed=self.seed, scale=self.scale, progress=self.progress,
                                  extra={**self.extra, "preset_hint": self.preset_hint,
                                         "preset_model": self.preset_model})

    def done(self, queries: Sequence, recipe: dict) -> list[bool]:
        """Which queries already have an entry (nothing is computed)."""
        skey = self.key(recipe)
        return [self.cache.get_arrays(NAMESPACE, self._query_key(skey, q)) is not None for q in queries]

    def rankings(self, queries: Sequence, recipe: dict) -> TeacherRankings:
        """The teacher's top ``keep`` items for every query: read from the cache, the missing ones computed
        ``batch`` at a time and stored one entry per query as they finish."""
        import genattr
        from genattr.harness.progress import bar

        queries = list(queries)
        skey = self.key(recipe)
        keys = [self._query_key(skey, q) for q in queries]
        got: list[dict | None] = [self.cache.get_arrays(NAMESPACE, k) for k in keys]
        todo = [j for j, g in enumerate(got) if g is None]
        self.stats["queries_loaded"] += len(queries) - len(todo)
        if todo:
            ctx = self.context()
            t0 = time.perf_counter()
            self.method.prepare(ctx)
            self.stats["prepare_s"] += time.perf_counter() - t0
            groups = [todo[a:a + self.batch] for a in range(0, len(todo), self.batch)]
            for group in bar(groups, desc=f"teacher {self.teacher}", unit="batch", enabled=self.progress):
                t1 = time.perf_counter()
                s = genattr.score(self.method, ctx, [queries[j] for j in group])
                self.stats["attribute_s"] += time.perf_counter() - t1
                self.stats["queries_computed"] += len(group)
                for row, j in zip(s, group):
                    idx, sc = top_k(row, self.keep)
                    value = {"indices": idx, "scores": sc}
                    self.cache.put_arrays(NAMESPACE, keys[j], value,
                                          meta={"store": skey, "query": str(queries[j].id), "teacher": self.teacher})
                    got[j] = value
        return TeacherRankings(
            query_ids=[str(q.id) for q in queries],
            indices=np.stack([np.asarray(g["indices"], dtype=np.int64) for g in got]) if got
            else np.zeros((0, self.keep), np.int64),
            scores=np.stack([np.asarray(g["scores"], dtype=np.float64) for g in got]) if got
            else np.zeros((0, self.keep)),
            n=len(self.dataset), fingerprint=skey,
            meta={"teacher": self.teacher, "config": self.config, "recipe": recipe, "keep": self.keep},
        )


# -- training queries ----------------------------------------------------------------------------------------------
def training_queries(model, dataset, count: int, seed: int, steps: int, guidance: float | None = None, cache=None,
                     progress: bool = False) -> tuple[list, dict]:
    """``(queries, recipe)``: ``count`` images generated by ``model`` from training captions with fresh seeds (see the
    module docstring). ``query.meta`` holds the seed, steps and the source item's index and id."""
    import torch

    from genattr.harness.api import Query
    from genattr.harness.progress import bar
    from genattr.harness.seeding import derive_seed, numpy_rng

    n = len(dataset)
    count = int(count)
    if count < 1:
        raise UserError("teacher: the number of training queries must be positive")
    # always whole chunks of QUERY_CHUNK queries (the last one cut to count), generated in the same batches whatever
    # the count, so query j's image is bit-identical for every count
    total = -(-count // QUERY_CHUNK) * QUERY_CHUNK
    rng = numpy_rng(int(seed), "teacher/training-queries")
    # successive permutations of the training set, so that a larger count keeps the smaller count's queries (their
    # images and teacher rankings come from the cache)
    src = np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]
    prompts, seeds = [], []
    for j, i in enumerate(src):
        caps = dataset.captions(int(i))
        prompts.append(str(caps[int(numpy_rng(int(seed), "teacher/caption", j).integers(len(caps)))]))
        seeds.append(int(derive_seed(int(seed), "teacher/query-seed", j) % (2**31 - 1)))
    # the recipe holds no count: query j is the same whatever the count, so a larger count reuses every image and
    # teacher ranking of a smaller one
    recipe = {"kind": "training-captions", "seed": int(seed), "steps": int(steps),
              "guidance": None if guidance is None else float(guidance)}
    gkw = {} if guidance is None else {"guidance_scale": float(guidance)}
    images = []
    chunks = list(range(0, count, QUERY_CHUNK))
    for a in bar(chunks, desc="teacher queries", unit="chunk", enabled=progress):
        ps, ss = prompts[a:a + QUERY_CHUNK], seeds[a:a + QUERY_CHUNK]

        def make(ps=ps, ss=ss):
            with torch.no_grad():
                return {"images": model.generate(ps, ss, steps=int(steps), **gkw).float().cpu()}

        if cache is None:
            images.append(make()["images"])
        else:
            key = cache.key("teacher-queries", VERSION, model.fingerprint, dataset.fingerprint, recipe, a, QUERY_CHUNK)
            images.append(cache.tensors(QUERY_NAMESPACE, key, make, meta={"recipe": recipe, "chunk": a})["images"])
    imgs = torch.cat(images)[:count]
    ids = dataset.ids
    queries = [Query(id=f"tq{j:05d}", image=imgs[j], prompt=prompts[j],
                     meta={"seed": seeds[j], "steps": int(steps), "source_index": int(src[j]),
                           "source_id": str(ids[int(src[j])])})
               for j in range(count)]
    return queries, recipe


# -- official rank files -------------------------------------------------------------------------------------------
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct", ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype", ("_codecs", "encode"): "encode",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer", ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy.core.multiarray", "scalar"): "scalar", ("numpy._core.multiarray", "scalar"): "scalar",
}


class _Global:
    def __init__(self, what: str):
        self.what = what


class _Dtype:
    def __init__(self, descr: str):
        self.descr, self.order = str(descr), "="

    def dtype(self):
        dt = np.dtype(self.descr)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class _Array:
    def __init__(self):
        self.value = None


def _dt(obj):
    return obj.dtype() if isinstance(obj, _Dtype) else np.dtype(obj)


def _resolve(obj):
    if isinstance(obj, _Array):
        if obj.value is None:
            raise ValueError("an array without its data")
        return obj.value
    if isinstance(obj, _Dtype):
        return obj.dtype()
    if isinstance(obj, dict):
        return {_resolve(k): _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    if isinstance(obj, _Global):
        raise ValueError(f"a bare reference to {obj.what}")
    return obj


def read_pickle_statically(data: bytes):
    """The value of a pickle made of dicts, lists, tuples, strings, bytes, numbers and numpy arrays, rebuilt from
    its opcodes **without executing it** (nothing is unpickled, no callable is called: the few numpy globals arrays
    need are recognised by name and their data copied with ``numpy.frombuffer``). Anything else is a
    ``ValueError``."""
    import pickletools

    stack: list = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark():
        i = marks.pop()
        items = stack[i:]
        del stack[i:]
        return items

    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise ValueError("malformed pickle (stack at STOP)")
            return _resolve(stack[0])
        if name == "MARK":
            marks.append(len(stack))
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"):
            stack.append(arg)
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8"):
            stack.append(arg)
        elif name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            stack.append(bytes(arg))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[int(arg)])
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(name[-1])
            items = tuple(stack[-k:])
            del stack[-k:]
            stack.append(items)
        elif name == "LIST":
            stack.append(list(pop_mark()))
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "APPEND":
            v = stack.pop()
            stack[-1].append(v)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif name == "SETITEMS":
            items = pop_mark()
            for k, v in zip(items[::2], items[1::2]):
                stack[-1][k] = v
        elif name in ("POP", "POP_MARK", "DUP"):
            if name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            else:
                stack.append(stack[-1])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
            else:
                attr, module = stack.pop(), stack.pop()
            what = _GLOBALS.get((module, attr))
            if what is None:
                raise ValueError(f"refusing global {module}.{attr}")
            stack.append(_Global(what))
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            if not isinstance(fn, _Global):
                raise ValueError("REDUCE of something that is not a recognised numpy global")
            if fn.what == "reconstruct":
                stack.append(_Array())
            elif fn.what == "dtype":
                stack.append(_Dtype(args[0]))
            elif fn.what == "encode":
                stack.append(str(args[0]).encode(str(args[1]) if len(args) > 1 else "utf-8"))
            elif fn.what == "frombuffer":
                buf, dt, shape, order = args
                a = np.frombuffer(bytes(buf), dtype=_dt(dt)).reshape(tuple(shape), order=str(order)).copy()
                stack.append(a)
            elif fn.what == "scalar":
                stack.append(np.frombuffer(bytes(args[1]), dtype=_dt(args[0]))[0])
            else:
                raise ValueError(f"cannot call {fn.what}")
        elif name == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if isinstance(obj, _Dtype):
                if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
                    obj.order = state[1]
            elif isinstance(obj, _Array):
                _, shape, dt, fortran, raw = state
                if not isinstance(raw, (bytes, bytearray)):
                    raise ValueError("object arrays are not read")
                obj.value = np.frombuffer(bytes(raw), dtype=_dt(dt)).reshape(
                    tuple(shape), order="F" if fortran else "C").copy()
            else:
                raise ValueError("BUILD of an unsupported object")
        else:
            raise ValueError(f"unsupported pickle opcode {name}")
    raise ValueError("truncated pickle (no STOP)")


def load_rank_file(path) -> dict:
    """``{"rank": int64 (Q, L), "scores": float64 (Q, L) in rank order or None, "source": str}`` from an official
    FastGDA rank file (``.pkl``, read statically) or an ``.npz`` of the same arrays (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"teacher rank file {str(path)!r} does not exist")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"teacher rank file {p.name}: not a readable .npz ({exc})") from None
    else:
        try:
            d = read_pickle_statically(p.read_bytes())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserError(f"teacher rank file {p.name}: not a FastGDA rank pickle of plain arrays ({exc})") from None
    if isinstance(d, dict) and "random" in d and isinstance(d["random"], dict):
        d = d["random"]
    if not isinstance(d, dict) or "rank" not in d:
        keys = sorted(d) if isinstance(d, dict) else "?"
        raise UserError(f"teacher rank file {p.name}: no 'rank' array (keys: {keys})")
    rank = np.asarray(d["rank"])
    if rank.ndim == 1:
        rank = rank[None]
    if rank.ndim != 2 or not np.issubdtype(rank.dtype, np.integer):
        raise UserError(f"teacher rank file {p.name}: 'rank' must be a 2-D integer array, got {rank.dtype} "
                        f"{rank.shape}")
    scores = None
    if "scores" in d:
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(rank.shape)
    elif "influence_subset" in d and "rank_influence_subset" in d:
        sub = np.asarray(d["influence_subset"], dtype=np.float64).reshape(rank.shape)
        order = np.asarray(d["rank_influence_subset"], dtype=np.int64).reshape(rank.shape)
        scores = np.take_along_axis(sub, order, axis=1)
    elif "influence" in d:
        infl = np.asarray(d["influence"], dtype=np.float64)
        infl = infl[None] if infl.ndim == 1 else infl
        scores = np.take_along_axis(infl, rank.astype(np.int64), axis=1)
    return {"rank": rank.astype(np.int64), "scores": scores, "source": p.name}


def rankings_from_file(path, n: int, keep: int | None = None, query_ids: Sequence[str] | None = None
                       ) -> TeacherRankings:
    """:class:`TeacherRankings` from a rank file (:func:`load_rank_file`) for a pool of ``n`` items: the first
    ``keep`` entries per query (all when None); ``query_ids`` default ``q0, q1, …`` (the release's row order)."""
    from genattr.harness.cache import sha256_file

    got = load_rank_file(path)
    rank = got["rank"]
    if rank.size and (rank.min() < 0 or rank.max() >= int(n)):
        raise UserError(f"teacher rank file {got['source']}: indices outside 0..{int(n) - 1} (is this the right "
                        "training set?)")
    k = rank.shape[1] if keep is None else min(int(keep), rank.shape[1])
    scores = got["scores"] if got["scores"] is not None else np.full(rank.shape, np.nan)
    ids = [f"q{j}" for j in range(rank.shape[0])] if query_ids is None else [str(i) for i in query_ids]
    if len(ids) != rank.shape[0]:
        raise UserError(f"teacher rank file {got['source']}: {rank.shape[0]} queries, {len(ids)} query ids given")
    return TeacherRankings(query_ids=ids, indices=rank[:, :k].copy(), scores=scores[:, :k].copy(), n=int(n),
                           fingerprint=sha256_file(Path(path).expanduser()),
                           meta={"source": got["source"], "file_rows": int(rank.shape[1])})


def load_query_dir(folder, dataset) -> list:
    """Training queries of an official release: ``{i}.png`` images (i = 0, 1, …, in the rank file's row order) and,
    when present, ``prompts.json`` (a list of strings) — images resized to the training set's resolution and
    channels, values in [-1, 1]."""
    import torch

    from genattr.harness.api import Query
    from genattr.harness.data import match_format

    if folder is None:
        raise UserError("a teacher rank file needs its query images directory ({i}.png); none given")
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise UserError(f"query images directory {str(folder)!r} is not a directory")
    files = sorted(d.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else 1 << 62)
    files = [p for p in files if p.stem.isdigit()]
    if not files:
        raise UserError(f"no {{i}}.png images in {str(folder)!r}")
    prompts = None
    if (d / "prompts.json").is_file():
        prompts = [str(p) for p in json.loads((d / "prompts.json").read_text())]
    from PIL import Image

    out = []
    for j, p in enumerate(files):
        arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        img = match_format(torch.from_numpy(arr).permute(2, 0, 1)[None], dataset.channels, dataset.resolution)[0]
        out.append(Query(id=f"q{p.stem}", image=img, prompt=prompts[j] if prompts and j < len(prompts) else ""))
    return out
