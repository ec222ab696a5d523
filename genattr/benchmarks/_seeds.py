"""Several base-model training seeds in one benchmark run (option ``model_seeds``).

On the miniatures the spread between two trainings of the same recipe is as large as the differences between
methods, so a figure worth publishing pools queries over several model instances. With ``model_seeds = [s1, s2, …]``
a benchmark runs its whole protocol once per seed — base model (θ0 or the customized models' base), queries,
retrains, and the methods' own draws — with the environment's seed replaced by that seed, and its cells carry
``params["model_seed"]`` (cell ids ``METHOD/s<seed>/…``, batch keys per seed). Summaries and the leaderboard pool the
queries of every seed; paired comparisons pair rows by their params, seed included. Without the option (``null``)
the run seed is the one model seed and cells keep their plain ids.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from genattr.harness.api import Cell
from genattr.harness.errors import UserError


def check_model_seeds(value, benchmark: str) -> list[int] | None:
    """The validated ``model_seeds`` option: null, or a non-empty list of distinct integers."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) or len(set(value)) != len(value)):
        raise UserError(f"{benchmark}: model_seeds must be null or a list of distinct integers, got {value!r}")
    return [int(v) for v in value]


def expand(cells: Sequence[Cell], seeds: list[int] | None) -> list[Cell]:
    """``cells`` once per model seed (unchanged when ``seeds`` is None)."""
    if seeds is None:
        return list(cells)
    out = []
    for s in seeds:
        for c in cells:
            method, _, rest = c.id.partition("/")
            out.append(Cell(id=f"{method}/s{s}/{rest}", method=c.method, params={**c.params, "model_seed": s},
                            group=dict(c.group), batch=None if c.batch is None else f"{c.batch}/s{s}"))
    return out


def env_for(env, cell: Cell | None = None, seed: int | None = None):
    """``env`` with its seed replaced by the cell's model seed (or ``seed``); ``env`` itself without one."""
    s = seed if seed is not None else (cell.params.get("model_seed") if cell is not None else None)
    if s is None or int(s) == int(env.seed):
        return env
    return dataclasses.replace(env, seed=int(s))


def seeds_or_run_seed(seeds: list[int] | None, env) -> list[int]:
    return list(seeds) if seeds is not None else [int(env.seed)]
