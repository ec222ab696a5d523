"""``genattr new-plugin NAME --kind method|metric|dataset|benchmark|model``: write a pip-installable plugin package that
passes its own test as generated.

The package (in ``--dir``, default ``./NAME``, which must be absent or empty) holds

* ``pyproject.toml`` — distribution ``NAME``, ``requires-python = ">=3.11"``, the dependency ``genattr`` and the entry
  point ``[project.entry-points.genattr] "NAME" = "MODULE"``;
* ``MODULE/__init__.py`` — the component (a working example of its kind) and the hook implementation that registers
  it under ``NAME``, written against the top-level ``genattr`` API only;
* ``README.md`` and ``tests/test_MODULE.py`` — a test that runs the component through ``genattr run … --scale tiny``
  in a subprocess (through the installed entry point) and checks the result rows, plus quick unit tests.

``NAME`` is at once the distribution, the entry point and the registered component name; ``MODULE`` is ``NAME``
lower-cased with ``-`` → ``_``. Templates are :class:`string.Template` files in ``scaffold_templates/`` beside this
module. Nothing here touches the network, and nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

KINDS = ("method", "metric", "dataset", "benchmark", "model")
METRIC_KINDS = ("retrieval", "counterfactual")

#: Letters, digits, ``-`` and ``_``, starting with a letter and ending with a letter or digit: a valid distribution
#: and entry-point name whose module name (``-`` → ``_``) is a Python identifier. No ``.``: ``--set NAME.key=value``
#: could not address the component.
NAME_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_-]*[A-Za-z0-9])?$")

#: What each kind generates: the hook, the registry, how its test runs it, and a one-line summary.
_KIND_INFO = {
    "method": {
        "hook": "register_methods", "registry": "methods", "phrase": "attribution method",
        "summary": "`{cls}` scores each training image by the cosine similarity of the average-pooled pixels of the "
                   "query and the image (option `size`), caching the training set's features in genattr's cache.",
        "run": "genattr run leave-k-out -m {name} --scale tiny --set 'leave-k-out.k=[2]' "
               "--set leave-k-out.num_queries=1",
        "test": "runs the method through the leave-K-out benchmark (`--scale tiny`, one query, K=2) and checks its "
                "row; checks that a bad option is a `genattr.UserError`.",
        "test_doc": "The method runs through the leave-K-out benchmark (tiny scale, one query, K=2): the fastest "
                    "built-in path that exercises a method end to end.",
    },
    "retrieval": {
        "hook": "register_metrics", "registry": "metrics", "phrase": "retrieval metric",
        "summary": "`{cls}` is the reciprocal rank of the best-ranked true source (option `cutoff`), a retrieval "
                   "metric `metric(scores, positives)` that the customized-model benchmark reports in a column "
                   "`{name}`.",
        "run": "genattr run customized-model -m pixel --scale tiny --set 'customized-model.metrics=[\"{name}\"]'",
        "test": "runs the metric in the customized-model benchmark (`--scale tiny`, two concepts, method `pixel`) and "
                "checks the rows; unit tests of its values and options.",
        "test_doc": "The metric runs in the customized-model benchmark, the built-in benchmark that takes retrieval "
                    "metrics (tiny scale, cut to two concepts).",
    },
    "counterfactual": {
        "hook": "register_metrics", "registry": "metrics", "phrase": "counterfactual metric",
        "summary": "`{cls}` is the fraction of the query's loss timesteps whose loss rose after the removal (option "
                   "`margin`), a counterfactual metric `metric(base_model, retrained_model, query, ...)` that the "
                   "leave-k-out benchmark reports in a column `{name}`.",
        "run": "genattr run leave-k-out -m pixel --scale tiny --set 'leave-k-out.metrics=[\"{name}\"]'",
        "test": "runs the metric in the leave-K-out benchmark (`--scale tiny`, one query, K=2, method `pixel`) and "
                "checks the row; unit tests of its values and options.",
        "test_doc": "The metric runs in the leave-K-out benchmark, the built-in benchmark that takes counterfactual "
                    "metrics (tiny scale, one query, K=2).",
    },
    "dataset": {
        "hook": "register_datasets", "registry": "datasets", "phrase": "dataset",
        "summary": "`{cls}` is a procedural captioned dataset (coloured squares, no download) with a "
                   "`heldout(n, count)` method, so the counterfactual benchmarks draw their queries from captions the "
                   "training set never saw. Replace the images and captions with your data. (In the run below, "
                   "`encoder=pixels:8` keeps ΔG-similarity offline: for a dataset genattr does not know, its encoder "
                   "defaults to CLIP, downloaded from the Hugging Face hub.)",
        # ΔG-similarity's encoder defaults to CLIP (a download) for a dataset genattr does not know; pixels:8 is not
        "run": "genattr run leave-k-out -m pixel --scale tiny --set leave-k-out.dataset={name} "
               "--set leave-k-out.encoder=pixels:8",
        "test": "trains the leave-K-out benchmark's tiny model on the dataset (`--scale tiny`, one query, K=2, "
                "method `pixel`) and checks the row; unit tests of the dataset protocol.",
        "test_doc": "The dataset serves as the leave-K-out benchmark's training set (tiny scale, one query, K=2): a "
                    "tiny model is trained on it and queries are drawn from its held-out captions.",
    },
    "model": {
        "hook": "register_models", "registry": "models", "phrase": "model",
        "summary": "`{cls}` is a small pixel-space text-to-image diffusion model with its own network (a conv net "
                   "with cross-attention K/V named as in Stable Diffusion, a word-level text encoder) that meets "
                   "genattr's model contract with the `trainable` and `customizable` capabilities, so every built-in "
                   "benchmark can train, retrain and customize it. Replace the network with yours and keep the "
                   "method signatures.",
        "run": "genattr run customized-model leave-k-out -m random -m pixel --scale tiny "
               "--set customized-model.model={name} --set leave-k-out.model={name}",
        "test": "runs the model through all four built-in benchmarks (`--scale tiny`, cut to a few queries, methods "
                "`random` and `pixel`) and checks the rows; unit tests of the contract (losses, generation, K/V "
                "names, save/load, deltas).",
        "test_doc": "The model replaces the built-in model in the customized-model, leave-k-out, lds and "
                    "teacher-agreement benchmarks (tiny scale, cut to a few queries).",
    },
    "benchmark": {
        "hook": "register_benchmarks", "registry": "benchmarks", "phrase": "benchmark",
        "summary": "`{cls}` asks a method for the training image a noisy query was copied from and reports "
                   "registered retrieval metrics (default Recall@10 and average precision), with presets per scale.",
        "run": "genattr run {name} -m random -m pixel --scale tiny",
        "test": "runs the benchmark (`--scale tiny`) with the built-in `random` and `pixel` methods and checks the "
                "rows; checks that bad options are a `genattr.UserError`.",
        "test_doc": "The benchmark runs at its tiny scale with the built-in methods ``random`` (chance) and ``pixel``.",
    },
}


def _template(name: str):
    from importlib import resources
    from string import Template

    return Template(resources.files("genattr.plugins").joinpath("scaffold_templates", name).read_text("utf-8"))


def _fill(text: str, indent: str = "") -> str:
    import textwrap

    return textwrap.fill(text, width=110, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def derive_names(name: str) -> dict:
    """``{"name", "module", "cls"}`` for a plugin NAME, or a one-line :class:`UserError` when NAME cannot be one."""
    import keyword
    import sys

    from genattr.harness.errors import UserError

    if not NAME_RE.match(name):
        raise UserError(f"new-plugin: invalid NAME {name!r}: use letters, digits, '-' and '_', starting with a letter "
                        "and ending with a letter or digit (it names the distribution, the entry point and the "
                        "component)")
    module = re.sub(r"[-_]+", "_", name).lower()
    if keyword.iskeyword(module) or module in sys.stdlib_module_names or module in sys.builtin_module_names:
        raise UserError(f"new-plugin: NAME {name!r} would give the module {module!r}, which is a Python keyword or "
                        "standard-library module; choose another NAME")
    cls = "".join(part[:1].upper() + part[1:] for part in module.split("_") if part)
    return {"name": name, "module": module, "cls": cls}


def _check_free(names: dict, registry_kind: str) -> None:
    """Refuse a NAME that an importable module, an installed entry point or a registered component already uses."""
    import importlib.util
    from importlib import metadata

    from genattr.harness.errors import UserError
    from genattr.harness.manager import registry

    name, module = names["name"], names["module"]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin not in (None, "namespace"):
        raise UserError(f"new-plugin: a module {module!r} is already importable ({spec.origin}); choose another NAME")
    if metadata.entry_points(group="genattr", name=name):
        raise UserError(f"new-plugin: an installed genattr plugin already has the entry point {name!r}; choose "
                        "another NAME (or uninstall that plugin)")
    reg = registry(registry_kind)
    if name in reg:
        entry = reg.get(name)
        raise UserError(f"new-plugin: a {registry_kind[:-1]} named {name!r} is already registered by plugin "
                        f"{entry.plugin!r}; choose another NAME")


def _variant(kind: str, metric_kind: str | None) -> str:
    """The template variant: the kind, or for metrics the metric kind (``retrieval`` unless given)."""
    from genattr.harness.errors import UserError, did_you_mean

    if kind not in KINDS:
        raise UserError(f"new-plugin: unknown --kind {kind!r}{did_you_mean(kind, KINDS)}; choose from "
                        f"{', '.join(KINDS)}")
    if kind != "metric":
        if metric_kind is not None:
            raise UserError("new-plugin: --metric-kind applies to --kind metric only")
        return kind
    metric_kind = metric_kind or "retrieval"
    if metric_kind not in METRIC_KINDS:
        raise UserError(f"new-plugin: unknown --metric-kind {metric_kind!r}{did_you_mean(metric_kind, METRIC_KINDS)}; "
                        f"choose from {', '.join(METRIC_KINDS)}")
    return metric_kind


def render(name: str, kind: str, metric_kind: str | None = None) -> dict[str, str]:
    """``{relative path: text}`` of the package for ``name`` and ``kind`` (NAME validated, nothing checked against
    what is installed)."""
    from genattr import __version__

    variant = _variant(kind, metric_kind)
    names = derive_names(name)
    info = _KIND_INFO[variant]
    component = f"metric_{variant}" if kind == "metric" else kind
    values = {
        **names,
        "kind": kind,
        "kind_flag": f" --metric-kind {variant}" if kind == "metric" else "",
        "kind_phrase": info["phrase"],
        "kinds": info["registry"],
        "hook": info["hook"],
        "genattr_version": __version__,
        "description": f"A genattr {info['phrase']}: {name}",
        "summary": _fill(info["summary"].format(**names)),
        "run_example": info["run"].format(**names) + " --out runs/" + name,
        "test_doc": _fill(info["test_doc"]),
    }
    values["files"] = "\n".join(_fill(f"- {text}", indent="  ") for text in (
        f"`pyproject.toml`: the package; its entry point `[project.entry-points.genattr] \"{name}\" = "
        f"\"{names['module']}\"` is what makes genattr load it.",
        f"`{names['module']}/__init__.py`: the {info['phrase']} (`{names['cls']}`) and the hook that registers it "
        f"(`{info['hook']}`). It uses only the top-level `genattr` API and imports torch inside functions, so "
        "`genattr plugins` and `genattr list` stay fast.",
        f"`tests/test_{names['module']}.py`: {info['test']}"))
    module = names["module"]
    body = _template(f"test_{component}.py.tmpl").substitute(values)
    head = _template("test_head.py.tmpl").substitute(values)
    if "math." not in body:
        head = head.replace("import math\n", "")
    return {
        "pyproject.toml": _template("pyproject.toml.tmpl").substitute(values),
        "README.md": _template("README.md.tmpl").substitute(values),
        f"{module}/__init__.py": _template(f"{component}.py.tmpl").substitute(values),
        f"tests/test_{module}.py": head + body,
    }


def new_plugin(name: str, kind: str, directory: str | Path | None = None, metric_kind: str | None = None) -> Path:
    """Write the package for ``name`` / ``kind`` into ``directory`` (default ``./NAME``) and return that directory.

    One-line :class:`UserError` s: an unknown kind, an invalid NAME (or one a module, an installed entry point or a
    registered component of that kind already uses), a target that exists and is not an empty directory."""
    from genattr.harness.errors import UserError

    files = render(name, kind, metric_kind)
    target = Path(directory if directory is not None else name).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "is not a directory" if not target.is_dir() else "exists and is not empty"
        raise UserError(f"new-plugin: {str(target)!r} {what}; give an absent or empty --dir")
    _check_free(derive_names(name), _KIND_INFO[_variant(kind, metric_kind)]["registry"])
    try:
        for rel, text in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"new-plugin: cannot write {str(target)!r}: {exc.strerror or exc}") from None
    return target


@click.command(name="new-plugin")
@click.argument("name")
@click.option("--kind", required=True, metavar="method|metric|dataset|benchmark|model",
              help="The kind of component.")
@click.option("--metric-kind", default=None, metavar="retrieval|counterfactual",
              help="For --kind metric: a retrieval metric (scores, positives; customized-model) or a counterfactual "
                   "one (base and retrained model; leave-k-out). Default: retrieval.")
@click.option("--dir", "directory", metavar="PATH", help="Where to write the package (default ./NAME); must be absent "
                                                         "or empty.")
def new_plugin_command(name, kind, metric_kind, directory):
    """Write a pip-installable genattr plugin package NAME with one component of --kind, its entry point, a README
    and a test that runs it through `genattr run --scale tiny`. NAME is the distribution, the entry point and the
    component's registered name."""
    target = new_plugin(name, kind, directory, metric_kind)
    names = derive_names(name)
    click.echo(f"genattr: wrote {target}/ (pyproject.toml, README.md, {names['module']}/__init__.py, "
               f"tests/test_{names['module']}.py)", err=True)
    click.echo(f"next: cd {target} && pip install -e '.[test]' && python -m pytest", err=True)


__all__ = ["KINDS", "METRIC_KINDS", "derive_names", "render", "new_plugin", "new_plugin_command"]
