"""``genattr new-plugin``: each kind's package is well formed and passes its own test as generated; bad requests are
refused in one line before anything is written.

The generated tests run ``genattr run`` in a subprocess through the plugin's *installed* entry point. ``pip install
-e`` for every kind would be slow and would change the environment the other tests run in, so the package is
installed here the way an editable install appears to ``importlib.metadata``: its directory on ``PYTHONPATH`` beside a
``NAME-0.1.0.dist-info`` (``METADATA`` and ``entry_points.txt``, written from the generated ``pyproject.toml``). The
entry point is then discovered exactly as an installed one, and the generated test file runs unchanged in a pytest
subprocess. The session's cache (``GENATTR_CACHE``) is shared, so the kinds that train leave-K-out's tiny model on
digits train it once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from genattr.cli import main

#: (kind, --metric-kind, NAME) of every variant the scaffold writes. Each costs 7–18 s of CPU, mostly a ``genattr
#: run`` subprocess importing torch and diffusers; the four kinds run in CI (about 70 s on one core with a cold
#: cache), the second metric kind with the slow tests.
VARIANTS = [
    pytest.param("method", None, "scaffold-t-method", id="method"),
    pytest.param("metric", "retrieval", "scaffold-t-rr", id="retrieval-metric"),
    pytest.param("metric", "counterfactual", "scaffold-t-cf", id="counterfactual-metric", marks=pytest.mark.slow),
    pytest.param("dataset", None, "scaffold-t-data", id="dataset"),
    pytest.param("benchmark", None, "scaffold-t-bench", id="benchmark"),
    pytest.param("model", None, "scaffold-t-model", id="model"),
]
REGISTRY = {"method": "methods", "metric": "metrics", "dataset": "datasets", "benchmark": "benchmarks",
            "model": "models"}


def _generate(tmp_path, kind, metric_kind, name, capsys) -> Path:
    target = tmp_path / name
    args = ["new-plugin", name, "--kind", kind, "--dir", str(target)]
    if metric_kind:
        args += ["--metric-kind", metric_kind]
    assert main(args) == 0, capsys.readouterr().err
    return target


def _install(target: Path, site: Path) -> dict:
    """Make ``target``'s entry point discoverable from ``site`` (an editable install's view); returns pyproject."""
    project = tomllib.loads((target / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = project["entry-points"]["genattr"]
    (info / "entry_points.txt").write_text("[genattr]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return project


def _env(target: Path, site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(site), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.parametrize("kind,metric_kind,name", VARIANTS)
def test_the_generated_package_passes_its_own_test(tmp_path, capsys, kind, metric_kind, name):
    target = _generate(tmp_path, kind, metric_kind, name, capsys)
    module = name.replace("-", "_")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == sorted(
        ["pyproject.toml", "README.md", f"{module}/__init__.py", f"tests/test_{module}.py"])

    # the package: pip-installable metadata with the entry point, written against the top-level API only
    pyproject = tomllib.loads((target / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["name"] == name and project["requires-python"] == ">=3.11"
    assert any(re.match(r"genattr\b", d) for d in project["dependencies"])
    assert project["entry-points"]["genattr"] == {name: module}
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    source = (target / module / "__init__.py").read_text()
    compile(source, f"{module}/__init__.py", "exec")
    assert not re.search(r"^\s*(from|import)\s+genattr\.", source, flags=re.M)
    assert not re.search(r"^(import|from)\s+(torch|numpy|diffusers)\b", source, flags=re.M)  # imported inside functions
    assert "pip install -e" in (target / "README.md").read_text()

    site = tmp_path / "site"
    _install(target, site)
    env = _env(target, site)

    # the entry point is found, `genattr list` shows the component, and listing it does not import torch
    probe = ("import sys; from genattr.cli import main; rc = main(['list', %r]); "
             "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)" % REGISTRY[kind])
    listed = subprocess.run([sys.executable, "-c", probe], env={**env, "GENATTR_LOAD_PLUGINS": name},
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout and "torch imported: False" in listed.stdout, listed.stdout

    # the generated tests, unchanged
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=target,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 2 and "failed" not in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["9lives", "--kind", "method"], "invalid NAME '9lives'"),
    (["my plugin", "--kind", "method"], "invalid NAME 'my plugin'"),
    (["my.plugin", "--kind", "method"], "invalid NAME 'my.plugin'"),
    (["trailing-", "--kind", "method"], "invalid NAME 'trailing-'"),
    (["class", "--kind", "method"], "Python keyword or standard-library module"),
    (["json", "--kind", "metric"], "Python keyword or standard-library module"),
    (["genattr", "--kind", "method"], "already importable"),
    (["pixel", "--kind", "method"], "a method named 'pixel' is already registered by plugin"),
    (["recall-at-k", "--kind", "metric"], "a metric named 'recall-at-k' is already registered"),
    (["fine-name", "--kind", "models"], "unknown --kind 'models' (did you mean: model"),
    (["fine-name", "--kind", "metrics"], "unknown --kind 'metrics' (did you mean: metric"),
    (["fine-name", "--kind", "method", "--metric-kind", "retrieval"], "--metric-kind applies to --kind metric only"),
    (["fine-name", "--kind", "metric", "--metric-kind", "lds"], "unknown --metric-kind 'lds'"),
])
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_target_is_refused_and_left_alone(tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert main(["new-plugin", "fine-name", "--kind", "method", "--dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "a-file").write_text("x")
    assert main(["new-plugin", "fine-name", "--kind", "method", "--dir", str(tmp_path / "a-file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_empty_directory_is_used_and_the_default_directory_is_name(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["new-plugin", "fine-name", "--kind", "dataset", "--dir", str(empty)]) == 0
    assert (empty / "fine_name" / "__init__.py").is_file()
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "Other_Name", "--kind", "benchmark"]) == 0
    source = (tmp_path / "Other_Name" / "other_name" / "__init__.py").read_text()
    assert "class OtherName:" in source and 'register("Other_Name", OtherName' in source
    assert "pip install -e" in capsys.readouterr().err
