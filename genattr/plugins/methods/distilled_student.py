"""The student of distilled attribution (:mod:`.distilled`) and its files: its training lists (:func:`ranked_lists`,
:func:`free_items`), the two-tower MLP (:func:`build_student`), its safetensors I/O (:func:`save_student`,
:func:`load_student`; format :data:`FORMAT`, version :data:`FORMAT_VERSION`, no pickle), and the helpers for an
official release's files (:func:`load_query_dir`, the training-query images; ``_sha_file``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from genattr.harness.errors import UserError

FORMAT = "genattr-distilled"
FORMAT_VERSION = "1"


#: ``"negative"``: the scale of ``p = a · cos + b`` is ``a = −softplus(s)`` (influential = close in the embedding,
#: the geometry FastGDA's deployment code ranks by); ``"free"``: a learnable ``a`` of either sign (FastGDA's training
#: code, whose sign stays on the side it starts).
SCALE_SIGNS = ("negative", "free")


# -- options ---------------------------------------------------------------------------------------------------------
def check_student_options(cfg: dict, scale_init) -> None:
    """The one-line errors of :class:`~.distilled.DistilledMethod`'s student, index and list options."""
    if cfg["towers"] not in ("shared", "separate"):
        raise UserError(f"distilled: towers must be 'shared' or 'separate', got {cfg['towers']!r}")
    if cfg["index"] not in ("exact", "faiss"):
        raise UserError(f"distilled: index must be 'exact' or 'faiss', got {cfg['index']!r}")
    for k in ("teacher_queries", "query_steps", "out_dim", "epochs", "batch_size", "index_k", "chunk"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"distilled: {k} must be a positive integer, got {v!r}")
    c = cfg["cutoff"]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 or (isinstance(c, float) and c > 1
                                                                             and c != int(c)):
        raise UserError(f"distilled: cutoff must be a count or a fraction of N in (0, 1], got {c!r}")
    if cfg["scale_sign"] not in SCALE_SIGNS:
        raise UserError(f"distilled: scale_sign must be one of {', '.join(SCALE_SIGNS)}, got {cfg['scale_sign']!r}")
    si = scale_init
    if si is not None and (isinstance(si, bool) or not isinstance(si, (int, float)) or si == 0 or si != si):
        raise UserError(f"distilled: scale_init must be a non-zero number, got {si!r}")
    if si is not None and cfg["scale_sign"] == "negative" and si > 0:
        raise UserError(f"distilled: scale_init must be negative with scale_sign='negative' (a = -softplus(s)), "
                        f"got {si!r}")
    if not (0.0 <= float(cfg["prob_outlier"]) < 1.0) or not (0.0 <= float(cfg["dropout"]) < 1.0):
        raise UserError("distilled: prob_outlier and dropout must be in [0, 1)")


# -- training lists --------------------------------------------------------------------------------------------------
def ranked_lists(qfeat, tfeat, ranks, cutoff: int, items: int | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Per training query: its ranked list (its ``cutoff`` neighbours in feature space ordered by the teacher, best
    first), the sorted items out-of-list pairs may not use (its neighbours and the teacher's top ``cutoff``), and the
    cutoff (see :mod:`.distilled`). Similarities are computed 256 queries at a time. ``items``: only the first
    ``items`` training items take part (neighbours, lists, out-of-list draws); the others are blocked for every
    query."""
    import torch.nn.functional as F

    n = tfeat.shape[0]
    m = n if items is None else max(1, min(n, int(items)))
    t = F.normalize(tfeat[:m].double(), dim=1)
    outside = np.arange(m, n, dtype=np.int64)
    lists, blocked = [], []
    for a in range(0, len(ranks), 256):
        sims = (F.normalize(qfeat[a:a + 256].double(), dim=1) @ t.T).numpy()
        for r in range(sims.shape[0]):
            q = a + r
            nn_set = np.argsort(-sims[r], kind="stable")[:cutoff]
            known = ranks.top(q)
            known = known[known < m]
            in_nn = np.zeros(m, dtype=bool)
            in_nn[nn_set] = True
            lists.append(known[in_nn[known]][:cutoff])
            blocked.append(np.union1d(np.union1d(nn_set, known[:cutoff]), outside).astype(np.int64))
    return lists, blocked, cutoff


def free_items(blocked: list[np.ndarray], n: int, rows, u) -> np.ndarray:
    """The ``u[j]``-th item (ascending) *not* in ``blocked[rows[j]]`` for each j — out-of-list draws without
    materialising the complements (``u[j]`` < n − len(blocked[rows[j]]))."""
    rows = np.asarray(rows, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    starts = np.zeros(len(blocked) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(b) for b in blocked])
    # b_j − j is non-decreasing within a query; offset each query's segment so the whole array is sorted
    keys = np.concatenate([q * (n + 1) + (b - np.arange(len(b))) for q, b in enumerate(blocked)]) \
        if starts[-1] else np.zeros(0, np.int64)
    k = np.searchsorted(keys, rows * (n + 1) + u, side="right") - starts[rows]
    return u + k


# -- the student ---------------------------------------------------------------------------------------------------
def _mlp(n_in: int, hidden: Sequence[int], n_out: int, dropout: float, input_norm: bool):
    import torch.nn as nn

    layers: list = [nn.LayerNorm(n_in) if input_norm else nn.Identity()]
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, int(h)), nn.ReLU(), nn.Dropout(float(dropout))]
        prev = int(h)
    layers.append(nn.Linear(prev, int(n_out)))
    net = nn.Sequential(*layers)
    for p in net.parameters():
        if p.ndim > 1:
            nn.init.xavier_uniform_(p)
    return net


def build_student(n_in: int, arch: dict):
    """The two-tower student (``arch``: ``hidden``, ``out_dim``, ``dropout``, ``input_norm``, ``towers``, optional
    ``scale_sign`` — :data:`SCALE_SIGNS`, absent = ``"free"`` — and ``scale_init``: the initial scale a of
    ``p = a · cos + b``, default −1 under ``"negative"``, +1 under ``"free"``). The free scale is stored as
    ``scale``, the constrained one as ``scale_raw`` (s of a = −softplus(s))."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.query_tower = _mlp(n_in, arch["hidden"], arch["out_dim"], arch["dropout"], arch["input_norm"])
            self.train_tower = (self.query_tower if arch["towers"] == "shared" else
                                _mlp(n_in, arch["hidden"], arch["out_dim"], arch["dropout"], arch["input_norm"]))
            self.negative = arch.get("scale_sign", "free") == "negative"
            a0 = float(arch.get("scale_init", -1.0 if self.negative else 1.0))
            if self.negative:  # a = -softplus(s), s chosen so that a starts at a0
                self.scale_raw = nn.Parameter(torch.full((1,), math.log(math.expm1(-a0))))
            else:
                self.scale_free = nn.Parameter(torch.full((1,), a0))
            self.bias = nn.Parameter(torch.zeros(1))

        @property
        def scale(self):
            """The scale a of ``p = a · cos + b``."""
            return -F.softplus(self.scale_raw) if self.negative else self.scale_free

        def embed(self, x, tower: str = "train"):
            net = self.query_tower if tower == "query" else self.train_tower
            return F.normalize(net(x), dim=1, eps=1e-12)

        def forward(self, q, t):
            cos = (self.embed(q, "query") * self.embed(t, "train")).sum(dim=1)
            return cos * self.scale + self.bias

    return Student()


def fit_student(qfeat, tfeat, lists, blocked, cutoff: int, arch: dict, seed: int, *, lr: float, epochs: int,
                batch_size: int, prob_outlier: float, n_items: int | None = None) -> tuple[object, dict]:
    """Train a student (:func:`build_student` with ``arch``) on the training lists of :func:`ranked_lists`: the
    item at position j of a query's list gets the target j / cutoff; with probability ``prob_outlier`` a pair is
    replaced by an out-of-list item (:func:`free_items`) with the worst target. BCE-with-logits, AdamW at ``lr``,
    ``epochs`` passes in seeded random order, batches of ``batch_size``; deterministic for a seed. Returns the
    student in eval mode and a report (pairs, cutoff, queries, per-epoch losses, items, seconds)."""
    import time

    import torch

    from genattr.harness.seeding import derive_seed, generator

    n = int(tfeat.shape[0])
    qi = np.concatenate([np.full(len(lst), q, dtype=np.int64) for q, lst in enumerate(lists)]) if lists else \
        np.zeros(0, np.int64)
    items = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    pos = np.concatenate([np.arange(len(lst)) for lst in lists]).astype(np.float64) if lists else np.zeros(0)
    if items.size == 0:
        raise UserError("distilled: the teacher's lists are empty (no teacher item among the feature-space "
                        "neighbours); raise cutoff or keep")
    worst = (cutoff - 1) / cutoff
    targets = torch.tensor(pos / cutoff, dtype=torch.float32)
    g = generator(seed, "distilled/train")
    report = {"pairs": int(items.size), "cutoff": cutoff, "queries": len(lists), "losses": [],
              "items": int(tfeat.shape[0]) if n_items is None else int(n_items)}
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "distilled/init") % (2**63 - 1))
        student = build_student(int(qfeat.shape[1]), arch)
        opt = torch.optim.AdamW(student.parameters(), lr=float(lr))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        qf, tf = qfeat.float(), tfeat.float()
        qi_t, items_t = torch.from_numpy(qi), torch.from_numpy(items)
        free = np.array([n - len(b) for b in blocked], dtype=np.int64)
        pool_sizes = torch.from_numpy(np.maximum(free, 1))
        student.train()
        for _epoch in range(int(epochs)):
            order = torch.randperm(items.size, generator=g)
            outlier = torch.rand(items.size, generator=g) < float(prob_outlier)
            pick = (torch.rand(items.size, generator=g) * pool_sizes[qi_t].double()).long()
            total, batches = 0.0, 0
            for a in range(0, items.size, int(batch_size)):
                b = order[a:a + int(batch_size)]
                q_b, i_b, y_b = qi_t[b], items_t[b].clone(), targets[b].clone()
                o = outlier[b] & torch.from_numpy(free[q_b.numpy()] > 0)
                if o.any():
                    rows = q_b[o].numpy()
                    u = pick[b[o]].numpy() % free[rows]
                    i_b[o] = torch.from_numpy(free_items(blocked, n, rows, u))
                    y_b[o] = worst
                pred = student(qf[q_b], tf[i_b])
                loss = loss_fn(pred, y_b)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
                batches += 1
            report["losses"].append(total / max(1, batches))
    student.eval()
    report["seconds"] = time.perf_counter() - t0
    return student, report


def student_state(student) -> dict:
    """The student's tensors by name (a shared tower stored once, under ``query_tower``)."""
    # the free scale keeps the name it always had in student files ("scale")
    state = {("scale" if k == "scale_free" else k): v.detach().cpu().contiguous()
             for k, v in student.state_dict().items()}
    if student.train_tower is student.query_tower:
        state = {k: v for k, v in state.items() if not k.startswith("train_tower.")}
    return state


def save_student(student, path, meta: dict) -> None:
    """Write the student as safetensors with ``meta`` (JSON strings) in the file's metadata."""
    from safetensors.torch import save_file

    md = {"format": FORMAT, "format_version": FORMAT_VERSION}
    md.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()})
    save_file(student_state(student), str(path), metadata=md)


def load_student(path):
    """``(student in eval mode, metadata dict)`` from a file written by :func:`save_student` (no pickle)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"distilled: weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            md = dict(f.metadata() or {})
        tensors = load_file(str(p))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise UserError(f"distilled: {p.name} is not a safetensors file ({type(exc).__name__})") from None
    if md.get("format") != FORMAT:
        raise UserError(f"distilled: {p.name} is not a distilled-attribution student (format {md.get('format')!r})")
    arch = json.loads(md["arch"])
    student = build_student(int(md["in_dim"]), arch)
    state = {("scale_free" if k == "scale" else k): v for k, v in tensors.items()}
    if arch["towers"] == "shared":
        state.update({"train_tower." + k[len("query_tower."):]: v for k, v in tensors.items()
                      if k.startswith("query_tower.")})
    student.load_state_dict(state, strict=True)
    student.eval()
    return student, md


def _sha_file(path) -> str:
    from genattr.harness.cache import sha256_file

    return sha256_file(Path(path).expanduser())


