"""The documentation keeps up with the code: every hook's heading in CONTRIBUTING.md carries its real signature (as
datasette's docs test does), and the docs point at modules that exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

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
