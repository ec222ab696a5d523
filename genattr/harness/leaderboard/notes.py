"""The text under a board's title: its caption, its notes (unverified concepts, pooled method seeds) and the legend
every rendering starts with. Shared by the markdown, JSON and site renderers."""

from __future__ import annotations

from .. import statistics
from .model import Board


def caption(board: Board) -> str:
    """One line about where the numbers come from."""
    parts = [f"version {board.version}"]
    if board.scale:
        parts.append(f"scale {board.scale}")
    if len(board.config_hashes) > 1:
        parts.append(f"{len(board.config_hashes)} configs pooled over model seeds "
                     + ", ".join(map(str, board.model_seeds)))
    else:
        parts.append(f"config {board.config_hash[:12]}")
    parts.append(f"{board.cells} cells")
    packs = [p for p in board.inputs()["packs"] if p]
    if len(packs) == 1:
        parts.append(f"pack {packs[0][:12]}")
    if board.label_keys:
        parts.append("groups by " + ", ".join(board.label_keys))
    return " · ".join(parts)


def method_seed_note(board: Board) -> str:
    """Which rows average several method seeds (and where an explicit seed repeated the default draws)."""
    if not board.method_seeds:
        return ""
    parts = []
    for m, seeds in board.method_seeds.items():
        text = f"{m}: " + ", ".join("default (the run's or model seed)" if x == "default" else str(x) for x in seeds)
        if board.seed_repeats.get(m):
            text += (" — on model seed " + ", ".join(map(str, board.seed_repeats[m]))
                     + " the explicit seed equals the default, so those queries repeat the default draws")
        parts.append(text)
    return ("Method seeds pooled (a query's value is the mean over the seeds that scored it; n counts queries): "
            + "; ".join(parts) + ".")


def notes(board: Board) -> str:
    """The notes printed under a board's caption."""
    return " ".join(n for n in (unverified_note(board), regime_note(board), method_seed_note(board),
                                 inputs_note(board)) if n)


def regime_note(board: Board) -> str:
    """The base models' regime check (genattr.harness.regime), when the runs record one: are the queries copies of
    training images? Said loudly when a base model fails it."""
    if not board.regime:
        return ""
    from ..regime import describe

    def seed_text(entry: dict) -> str:
        check = entry["check"]
        verdict = {True: "passes", False: "FAILS", None: "not run"}[check.get("passed")]
        return f"model seed {entry['model_seed']} {verdict} ({describe(check)})"

    failed = [e for e in board.regime if e["check"].get("passed") is False]
    text = "Base-model regime check: " + "; ".join(seed_text(e) for e in board.regime) + "."
    if failed:
        text += (" A base model that fails copies its training images, so pixel similarity is closer to optimal "
                 "attribution on it than on real models.")
    return text


def inputs_note(board: Board) -> str:
    """Said when the pooled rows were scored on different artefacts (several packs, or a pack beside models
    trained elsewhere): their methods then did not see the same models and queries."""
    got = board.inputs()
    if not got["differ"]:
        return ""
    from .model import inputs_name

    names = ", ".join(inputs_name(p) if p else "no pack (trained on the machine)" for p in got["siblings"])
    return (f"Inputs differ: this configuration was scored on {len(got['siblings'])} sets of artefacts ({names}); "
            "each has its own board, since methods scored on different models and queries are not comparable — "
            "score them on one pack (genattr pack).")


def unverified_note(board: Board) -> str:
    if not board.unverified and not board.excluded:
        return ""
    names = ", ".join(board.unverified) or "unnamed concepts"
    n = len(board.excluded)
    if board.include_unverified:
        return (f"Unverified: {n} cells of concepts whose customized model did not reproduce its concept ({names}) "
                "are INCLUDED in these numbers (--include-unverified).")
    return (f"Unverified: {n} cells of concepts whose customized model did not reproduce its concept ({names}) are "
            "excluded from every number here (their results measure nothing); --include-unverified keeps them.")


LEGEND = ("Mean ± standard error over cells (n per method and group). Bold: the best, only when its paired 95 % "
          f"bootstrap interval against every other method excludes 0 over at least {statistics.MIN_PAIRS} shared "
          "queries. Differences: method − other over the same queries, with a 95 % bootstrap interval [lo, hi] (the "
          f"number of pairs instead when fewer than {statistics.MIN_PAIRS}).")
