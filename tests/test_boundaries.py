"""The plugin boundary: benchmarks reach models, methods and metrics through the registries, the model contract and
the public host services — never through a built-in plugin's module — and the host imports no built-in."""

from __future__ import annotations

import ast
from pathlib import Path

import genattr

ROOT = Path(genattr.__file__).parent


def _imports(folder: str):
    """``(file, line, imported module)`` for every import in the package folder, including those inside functions."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        pkg = ".".join(("genattr", *path.relative_to(ROOT).parent.parts))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                yield path.relative_to(ROOT), node.lineno, name


def test_no_benchmark_imports_a_built_in_plugin():
    bad = [f"{f}:{line} imports {name}" for f, line, name in _imports("benchmarks")
           if name.startswith("genattr.plugins")]
    assert bad == []


def test_the_host_imports_no_built_in():
    bad = [f"{f}:{line} imports {name}" for f, line, name in _imports("harness")
           if name.startswith(("genattr.plugins", "genattr.benchmarks", "genattr.datasets"))]
    assert bad == []


def test_the_scaffolded_model_uses_only_the_top_level_api():
    from genattr.plugins.scaffold import render

    source = render("boundary-model", "model")["boundary_model/__init__.py"]
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith("genattr.") for m in imported), imported
    assert "genattr" in imported
