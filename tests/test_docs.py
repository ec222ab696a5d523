"""The documentation keeps up with the code: every hook's heading in CONTRIBUTING.md carries its real signature (as
datasette's docs test does), and the docs point at modules that exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from genattr.harness import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [n for n, f in vars(hookspecs).items() if n.startswith("register_") and callable(f)]


def test_every_hook_heading_carries_its_signature():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    headings = dict(re.findall(r"^###\s+`?(\w+)(\([^)]*\))`?\s*$", text, flags=re.M))
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert headings.get(name) == f"({params})", (
            f"CONTRIBUTING.md must have a heading '### {name}({params})', found {headings.get(name)!r}")


def test_the_plugin_api_is_what_contributing_says():
    import genattr

    for name in ("hookimpl", "lazy", "UserError", "Query", "AttributionContext", "InMemoryDataset", "score",
                 "derive_seed", "register_plugin", "unregister_plugin", "AttributionMethod", "Dataset"):
        assert hasattr(genattr, name), name
    example = (ROOT / "examples" / "genattr-plugin-example" / "genattr_plugin_example" / "__init__.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+genattr\.", example, flags=re.M)


def test_module_paths_named_in_the_docs_exist():
    """Paths like `genattr/harness/run/driver.py` written in the docs point at files that exist."""
    missing = []
    for doc in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for path in re.findall(r"`(genattr/[\w/]+(?:\.py)?/?)`", doc.read_text()):
            if not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing


#: A generated table: ``<!-- table: CMD -->`` … ``<!-- end table -->``.
_GENERATED_BLOCK = re.compile(r"<!-- table: (?P<cmd>[^\n]+?) -->\n(?P<body>.*?)\n<!-- end table -->", re.S)


def _doc_pages():
    """The README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _generated_tables():
    for doc in _doc_pages():
        for m in _GENERATED_BLOCK.finditer(doc.read_text()):
            yield pytest.param(doc.relative_to(ROOT), m["cmd"], m["body"], id=f"{doc.name}:{m['cmd'][:60]}")


@pytest.mark.parametrize("doc, cmd, body", list(_generated_tables()))
def test_every_generated_table_matches_its_result_file(doc, cmd, body):
    """A table between ``<!-- table: CMD -->`` and ``<!-- end table -->`` is CMD's output on the committed result
    file it names: a figure typed by hand, or a result file changed without regenerating the table, fails here."""
    import shlex
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    argv = shlex.split(cmd)
    if argv[:2] == ["genattr", "leaderboard"]:
        argv = ["-m", "genattr", *argv[1:]]
    else:
        assert argv[0] == "python" and argv[1].startswith("tests/perf/"), f"{doc}: unsupported table command {cmd!r}"
        argv = argv[1:]
    got = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == body.strip(), f"{doc}: the table differs from `{cmd}`; regenerate it"


def _markdown_files():
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_resolves():
    """Every relative link of the README, CONTRIBUTING and docs/ points at a file or folder of the repository."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for doc in _markdown_files():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in link.findall(text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in re.split(r"&&|\|", line.split("#", 1)[0]):
                words = part.strip().split()
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value before the command
                if words[:1] == ["genattr"]:
                    sub = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
                    if sub and sub[0] in ("pack",):
                        sub = sub[:2]
                    else:
                        sub = sub[:1]
                    if sub and tuple(sub) not in out:
                        out.append(tuple(sub))
    return out


@pytest.mark.parametrize("sub", _readme_commands(), ids=" ".join)
def test_every_readme_command_parses(sub, capsys):
    """Every genattr subcommand the README uses exists and answers --help."""
    from genattr.cli import main

    assert main([*sub, "--help"]) == 0, sub
    assert "Usage:" in capsys.readouterr().out


def test_the_readme_is_a_manual_of_at_most_150_lines():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"this (wave|stop)|DESIGN\.md|PAPER_NOTES", text, flags=re.I)
    for doc in _markdown_files():
        assert not re.search(r"this (wave|stop)|DESIGN\.md|PAPER_NOTES", doc.read_text(), flags=re.I), doc


# A typed markdown table whose rows hold decimal figures, "n ± s.e." or "×10⁻³" looks measured. Every measured table
# must be generated from a committed result file (a `<!-- table: CMD -->` block, checked above); the typed tables
# allowed are listed here by page and header row, each with the reason its figures are not measurements of ours.
_FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_MEASURED_FIGURE = re.compile(r"(?<![\w.])[+−-]?\d+\.\d+(?![\w.])|\d\s*±\s*\d|\d\s*×\s*10[⁻-]")

TYPED_TABLES_ALLOWED = {
    # configuration: option values and defaults, not measurements
    ("docs/methods/unlearning.md", "| option | coco | customized | tiny | small | customized-tiny | customized-small | "
                                   "meaning |"): "option values per preset",
    ("docs/methods/trak.md", "| method | scale | selection | k | timesteps | λ | other |"): "preset values",
    ("docs/methods/das-retrac.md", "| method | option | default | follows |"): "option defaults",
    ("docs/methods/distilled.md", "| option | default | follows |"): "option defaults",
    ("docs/methods/distilled.md", "| scale | θ0 / data | queries | k |"): "benchmark scales (k as a fraction of N)",
    ("docs/benchmarks/lds.md", "| scale | data | N | recipe | M | β | seeds | ceiling | queries |"): "scales (β)",
    ("docs/benchmarks/leave-k-out.md", "| scale | data | N | recipe (θ0 and every retrain) | K | queries | R | "
                                      "retrains for unlearning + random + pixel |"): "scales (model size, K fraction)",
    ("docs/models.md", "| recipe | model | training | dataset |"): "recipe values (caption dropout, lr)",
    ("docs/leaderboard.md", "| file | what |"): "the site's files (1.96: the normal quantile of a 95 % interval)",
}


def _typed_tables(text):
    """(line, header row, [(line, row), …]) for every markdown table outside generated blocks and fenced code."""
    blank = lambda m: "\n" * m[0].count("\n")  # noqa: E731 — keeps line numbers
    text = _FENCED_BLOCK.sub(blank, _GENERATED_BLOCK.sub(blank, text))
    tables, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not (line.strip().startswith("|") and line.strip().endswith("|")):
            current = None
            continue
        if current is None:
            current = (number, line.strip(), [])
            tables.append(current)
        else:
            current[2].append((number, line))
    return tables


def _measured_figures(row):
    row = re.sub(r"`[^`]*`", "", row)  # option values written as code
    row = re.sub(r"arXiv \d+\.\d+", "", row)
    return _MEASURED_FIGURE.findall(row)


def _typed_measured_tables():
    for doc in _doc_pages():
        page = str(doc.relative_to(ROOT))
        for start, header, rows in _typed_tables(doc.read_text()):
            hits = [(n, _measured_figures(r)) for n, r in rows if _measured_figures(r)]
            if hits:
                yield page, start, header, hits


def test_no_typed_table_holds_measured_figures():
    """Every figure of the README and docs comes from a committed result file: a markdown table outside a
    ``<!-- table: CMD -->`` block whose rows hold decimal figures, "mean ± s.e." or "×10⁻³" fails here unless it is
    in the allow-list of typed tables (option values, the paper's reported figures)."""
    typed = [f"{page}:{start}: {header[:80]} (line {hits[0][0]}: {', '.join(hits[0][1][:3])})"
             for page, start, header, hits in _typed_measured_tables() if (page, header) not in TYPED_TABLES_ALLOWED]
    assert not typed, ("tables with typed figures; generate them from a result file under results/ "
                       "(<!-- table: CMD --> … <!-- end table -->) or state the finding without the figures:\n  "
                       + "\n  ".join(typed))


def test_the_typed_table_allow_list_is_current():
    """Every allowed typed table still exists and still holds figures: a table converted or rewritten leaves the
    list."""
    found = {(page, header) for page, _, header, _ in _typed_measured_tables()}
    stale = sorted(set(TYPED_TABLES_ALLOWED) - found)
    assert not stale, stale
