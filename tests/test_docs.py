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


def _generated_tables():
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"<!-- table: (?P<cmd>[^\n]+?) -->\n(?P<body>.*?)\n<!-- end table -->", re.S)
    for doc in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        for m in pattern.finditer(doc.read_text()):
            yield pytest.param(doc.relative_to(root), m["cmd"], m["body"], id=f"{doc.name}:{m['cmd'][:60]}")


@pytest.mark.parametrize("doc, cmd, body", list(_generated_tables()))
def test_every_generated_table_matches_its_result_file(doc, cmd, body):
    """A table between ``<!-- table: CMD -->`` and ``<!-- end table -->`` is CMD's output on the committed result
    file it names: a figure typed by hand, or a result file changed without regenerating the table, fails here."""
    import shlex
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    argv = shlex.split(cmd)
    assert argv[0] == "python" and argv[1].startswith("tests/perf/"), f"{doc}: unsupported table command {cmd!r}"
    got = subprocess.run([sys.executable, *argv[1:]], cwd=root, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == body.strip(), f"{doc}: the table differs from `{cmd}`; regenerate it"
