"""The plugin host: hooks, registry, plugin loading, and the `plugins` / `list` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import genattr
from genattr.harness import hookspecs
from genattr.harness.errors import PluginError, UserError
from genattr.harness.manager import pm, register_plugin, registry, unregister_plugin
from genattr.harness.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
HOOK_NAMES = sorted(n for n in dir(hookspecs) if n.startswith("register_"))


# -- helpers ----------------------------------------------------------------------------------------------------
class _Thing:
    """A throwaway component of any kind (it has what a method must have: ``prepare`` and ``attribute``)."""

    version = "7"

    def __init__(self, **config):
        self.config = config

    def prepare(self, ctx):  # pragma: no cover - never called
        pass

    def attribute(self, ctx, queries, candidates=None):  # pragma: no cover - never called
        raise NotImplementedError


@pytest.fixture
def plugin():
    """Register throwaway plugins for one test; always unregistered afterwards."""
    names = []

    def add(obj, name):
        ok = register_plugin(obj, name)
        names.append(name)
        return ok

    yield add
    for n in names:
        unregister_plugin(n)


def _register_one(kind: str):
    hook = f"register_{kind}"

    class P:
        pass

    def impl(register):
        register(f"test-{kind}-thing", _Thing, version="7", description="a throwaway component")

    impl.__name__ = hook
    setattr(P, hook, staticmethod(genattr.hookimpl(impl)))
    return P()


def _check_kind(plugin, kind: str, getter):
    assert plugin(_register_one(kind), f"throwaway-{kind}")
    entry = registry(kind).get(f"test-{kind}-thing")
    assert entry.plugin == f"throwaway-{kind}"
    assert entry.version == "7"
    obj = getter(f"test-{kind}-thing", answer=42)
    assert isinstance(obj, _Thing) and obj.config == {"answer": 42}
    assert obj.plugin == f"throwaway-{kind}"


# -- one test per hook (test_plugin_hooks_have_tests enforces it) ---------------------------------------------------
def test_hook_register_methods(plugin):
    _check_kind(plugin, "methods", genattr.get_method)


def test_hook_register_models(plugin):
    _check_kind(plugin, "models", genattr.get_model)


def test_hook_register_metrics(plugin):
    _check_kind(plugin, "metrics", genattr.get_metric)


def test_hook_register_datasets(plugin):
    _check_kind(plugin, "datasets", genattr.get_dataset)


def test_hook_register_benchmarks(plugin):
    _check_kind(plugin, "benchmarks", genattr.get_benchmark)


def test_hook_register_executors(plugin):
    _check_kind(plugin, "executors", genattr.get_executor)


def test_hook_register_commands(plugin):
    class P:
        @genattr.hookimpl
        def register_commands(self, cli):
            @cli.command(name="hello-test")
            @click.argument("who")
            def hello(who):
                click.echo(f"hello {who}")

    assert plugin(P(), "throwaway-commands")
    group = click.Group("genattr-test")
    pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello-test", "world"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hello world"


# -- datasette-style guards -------------------------------------------------------------------------------------
def test_plugin_hooks_have_tests():
    missing = [h for h in HOOK_NAMES if f"test_hook_{h}" not in globals()]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"


def test_plugin_hooks_are_documented():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    headings = set(re.findall(r"^#+\s+`?(\w+)", text, flags=re.M))
    missing = [h for h in HOOK_NAMES if h not in headings]
    assert not missing, f"hooks without a heading in CONTRIBUTING.md: {missing}"


def test_every_hookspec_has_a_one_line_docstring():
    for h in HOOK_NAMES:
        doc = getattr(hookspecs, h).__doc__
        assert doc and len(doc.strip().splitlines()) == 1, h


# -- registry behaviour -----------------------------------------------------------------------------------------
def _dup_plugins(plugin, name="dup-method"):
    class A:
        @genattr.hookimpl
        def register_methods(self, register):
            register(name, _Thing)
            register("only-in-a", _Thing)

    class B:
        @genattr.hookimpl
        def register_methods(self, register):
            register(name, _Thing)

    plugin(A(), "plugin-a")
    plugin(B(), "plugin-b")


def test_duplicate_name_is_recorded_and_only_asking_for_it_fails(plugin):
    """A clash does not break the registry: other names work; asking for the clashing one is a one-line error
    naming both plugins and the fix."""
    _dup_plugins(plugin)
    reg = registry("methods")  # builds without raising
    assert "random" in reg and reg.get("only-in-a").plugin == "plugin-a"
    assert genattr.get_method("random").name == "random"
    assert sorted(e.plugin for e in reg.clashes["dup-method"]) == ["plugin-a", "plugin-b"]
    assert "dup-method" not in {e.name for e in reg}  # not usable
    assert "dup-method" in reg.names()
    with pytest.raises(PluginError) as err:
        genattr.get_method("dup-method")
    msg = str(err.value)
    assert "plugin-a" in msg and "plugin-b" in msg and "dup-method" in msg and "\n" not in msg
    assert "GENATTR_LOAD_PLUGINS" in msg and "uninstall" in msg


def test_plugins_and_list_commands_show_a_clash(plugin):
    from genattr.cli import cli

    _dup_plugins(plugin)
    r = CliRunner().invoke(cli, ["plugins"])
    assert r.exit_code == 0, r.output
    assert "clash" in r.output and "plugin-a" in r.output and "plugin-b" in r.output
    assert "GENATTR_LOAD_PLUGINS" in r.output
    r = CliRunner().invoke(cli, ["plugins", "--json"])
    rows = {p["name"]: p for p in json.loads(r.output)}
    assert rows["plugin-a"]["clashes"] == [{"kind": "methods", "name": "dup-method", "with": ["plugin-b"]}]
    assert rows["plugin-a"]["registered"] == {"methods": ["dup-method", "only-in-a"]}
    r = CliRunner().invoke(cli, ["list", "methods"])
    assert r.exit_code == 0, r.output
    assert "dup-method (clash)" in r.output and "random" in r.output and "GENATTR_LOAD_PLUGINS" in r.output
    r = CliRunner().invoke(cli, ["list", "methods", "--json"])
    dup = [m for m in json.loads(r.output) if m["name"] == "dup-method"]
    assert sorted(m["plugin"] for m in dup) == ["plugin-a", "plugin-b"]
    assert sorted(dup[0]["clash"]) == ["plugin-a", "plugin-b"]


def test_nameless_registration_is_reported_and_skipped(plugin):
    class Nameless:
        @genattr.hookimpl
        def register_methods(self, register):
            register("", _Thing)
            register("named-one", _Thing)

    plugin(Nameless(), "nameless-plugin")
    with pytest.warns(RuntimeWarning, match="without a name"):
        reg = registry("methods")
    assert "named-one" in reg and "random" in reg


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UserError) as err:
        genattr.get_method("unlearnin")
    msg = str(err.value)
    assert "unlearning" in msg and "\n" not in msg


def test_unknown_hook_is_rejected(plugin):
    class Typo:
        @genattr.hookimpl
        def register_methodz(self, register):  # misspelled hook
            register("never", _Thing)

    with pytest.warns(RuntimeWarning, match="register_methodz"):
        assert plugin(Typo(), "typo-plugin") is False
    assert pm.get_plugin("typo-plugin") is None


def test_hookimpl_may_take_no_arguments(plugin):
    class NoArgs:
        @genattr.hookimpl
        def register_methods(self):
            pass

    assert plugin(NoArgs(), "no-args-plugin")
    assert "random" in registry("methods")


def test_registry_is_rebuilt_when_plugins_change(plugin):
    assert "test-methods-thing" not in registry("methods")
    plugin(_register_one("methods"), "late-plugin")
    assert "test-methods-thing" in registry("methods")
    unregister_plugin("late-plugin")
    assert "test-methods-thing" not in registry("methods")


def test_builtin_versions_match_their_classes():
    """The version declared at registration (shown without importing torch) is the component's own."""
    from genattr.harness.registry import lazy

    for kind in KINDS:
        for entry in registry(kind):
            if not entry.plugin.startswith("genattr."):
                continue
            factory = entry.factory
            if isinstance(factory, lazy):
                try:
                    factory = factory.resolve()
                except (ImportError, AttributeError) as exc:
                    pytest.fail(f"{kind} {entry.name!r} is registered but {entry.factory.target} fails: {exc}")
            assert str(getattr(factory, "version", entry.version)) == entry.version, (kind, entry.name)


# -- installed plugins (subprocesses with fake distributions on PYTHONPATH) -----------------------------------------
def _fake_dist(root: Path, dist: str, module: str, body: str, version: str = "1.2.3") -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[genattr]\n{dist} = {module}\n")


GOOD = """
    import genattr

    class M:
        version = "3"
        needs_model = False
        def __init__(self, **config):
            self.config = config

    @genattr.hookimpl
    def register_methods(register):
        register("good-method", M, version="3", description="good")
"""


@pytest.fixture
def fake_site(tmp_path, clean_env):
    _fake_dist(tmp_path, "goodplug", "goodplug_mod", GOOD)
    _fake_dist(tmp_path, "brokenplug", "brokenplug_mod", "raise ImportError('missing dependency xyz')\n")
    env = dict(clean_env)
    env["PYTHONPATH"] = str(tmp_path) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _genattr(args, env):
    return subprocess.run([sys.executable, "-m", "genattr", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_broken_plugin_is_reported_and_skipped(fake_site):
    r = _genattr(["plugins", "--json"], fake_site)
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["goodplug"]["version"] == "1.2.3" and rows["goodplug"]["registered"] == {"methods": ["good-method"]}
    assert "missing dependency xyz" in rows["brokenplug"]["error"]
    assert "skipping plugin 'brokenplug'" in r.stderr
    r = _genattr(["list", "methods"], fake_site)
    assert r.returncode == 0 and "good-method" in r.stdout


EXITS = """
    import sys
    sys.exit(3)
"""

DUP = """
    import genattr

    class M:
        version = "1"
        needs_model = False
        def __init__(self, **config):
            self.config = config

    @genattr.hookimpl
    def register_methods(register):
        register("good-method", M, version="1", description="a clash with goodplug")
"""


def test_plugin_calling_sys_exit_is_reported_and_skipped(fake_site, tmp_path):
    _fake_dist(tmp_path, "exitplug", "exitplug_mod", EXITS)
    r = _genattr(["plugins", "--json"], fake_site)
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert "sys.exit(3)" in rows["exitplug"]["error"]
    assert "skipping plugin 'exitplug'" in r.stderr
    r = _genattr(["list", "methods"], fake_site)
    assert r.returncode == 0 and "good-method" in r.stdout
    r = _genattr(["list", "methods"], {**fake_site, "GENATTR_STRICT_PLUGINS": "1"})
    assert r.returncode == 2 and "exitplug" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plugin_hookimpl_with_unknown_argument_is_reported_and_skipped(fake_site, tmp_path):
    body = GOOD.replace("def register_methods(register):", "def register_methods(register, nonsense):")
    _fake_dist(tmp_path, "argplug", "argplug_mod", body.replace("good-method", "arg-method"))
    r = _genattr(["plugins", "--json"], fake_site)
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert "nonsense" in rows["argplug"]["error"] and "Traceback" not in r.stderr


def test_two_installed_plugins_with_one_name(fake_site, tmp_path):
    """The clash of two installed plugins: plugins/list work and show it; a run naming it fails in one line with
    the fix; every other command works."""
    _fake_dist(tmp_path, "dupplug", "dupplug_mod", DUP)
    env = {**fake_site, "GENATTR_LOAD_PLUGINS": "goodplug,dupplug"}
    r = _genattr(["plugins"], env)
    assert r.returncode == 0, r.stderr
    assert "clash" in r.stdout and "'goodplug'" in r.stdout and "'dupplug'" in r.stdout
    assert "GENATTR_LOAD_PLUGINS" in r.stdout and "pip uninstall" in r.stdout
    r = _genattr(["list", "methods"], env)
    assert r.returncode == 0 and "good-method (clash)" in r.stdout and "random" in r.stdout
    r = _genattr(["run", "--help"], env)
    assert r.returncode == 0, r.stderr
    r = _genattr(["run", "customized-model", "-m", "good-method", "--scale", "tiny", "--out",
                  str(tmp_path / "out")], env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "good-method" in lines[0] and "goodplug" in lines[0] and "dupplug" in lines[0], r.stderr
    assert "GENATTR_LOAD_PLUGINS" in lines[0]
    r = _genattr(["list", "methods", "--json"], {**env, "GENATTR_LOAD_PLUGINS": "dupplug"})
    assert [m["plugin"] for m in json.loads(r.stdout) if m["name"] == "good-method"] == ["dupplug"]


def test_a_failing_register_commands_is_reported_and_skipped(fake_site, tmp_path):
    body = """
        import genattr

        @genattr.hookimpl
        def register_commands(cli):
            raise RuntimeError("command plugin broke")
    """
    _fake_dist(tmp_path, "cmdplug", "cmdplug_mod", body)
    r = _genattr(["list", "methods"], fake_site)
    assert r.returncode == 0 and "random" in r.stdout, r.stderr
    assert "command plugin broke" in r.stderr and "Traceback" not in r.stderr
    r = _genattr(["run", "--help"], fake_site)  # the built-in commands are still there
    assert r.returncode == 0, r.stderr


def test_strict_mode_aborts_on_a_broken_plugin(fake_site):
    r = _genattr(["list", "methods"], {**fake_site, "GENATTR_STRICT_PLUGINS": "1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "brokenplug" in lines[0] and "Traceback" not in r.stderr


def test_load_plugins_env_selects_installed_plugins(fake_site):
    only_good = _genattr(["list", "methods", "--json"], {**fake_site, "GENATTR_LOAD_PLUGINS": "goodplug"})
    names = {m["name"] for m in json.loads(only_good.stdout)}
    assert "good-method" in names and "random" in names
    assert "brokenplug" not in only_good.stderr
    none = _genattr(["list", "methods", "--json"], {**fake_site, "GENATTR_LOAD_PLUGINS": ""})
    names = {m["name"] for m in json.loads(none.stdout)}
    assert "good-method" not in names and "random" in names


def test_plugins_command_does_not_import_torch(clean_env):
    code = ("import sys; from genattr.cli import main; rc = main(['plugins', '--all', '--json']); "
            "rc2 = main(['list', 'methods']); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc, rc2)")
    r = subprocess.run([sys.executable, "-c", code], env=clean_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH 0 0"


def test_example_plugin_is_listed_and_usable(clean_env):
    """CI installs examples/genattr-plugin-example; it must be discovered with its distribution and version."""
    r = _genattr(["plugins", "--json"], clean_env)
    rows = {p["distribution"]: p for p in json.loads(r.stdout)}
    assert "genattr-plugin-example" in rows, "install it: pip install -e examples/genattr-plugin-example"
    assert rows["genattr-plugin-example"]["version"] == "0.3.0"
    assert rows["genattr-plugin-example"]["registered"] == {
        "methods": ["nearest-pixel"], "datasets": ["blobs"], "metrics": ["loss-ratio", "precision-at-k"]}
    code = textwrap.dedent("""
        import torch, numpy as np, genattr
        from genattr.harness.api import AttributionContext, Query
        from genattr.harness.data import InMemoryDataset
        imgs = torch.rand(5, 1, 4, 4) * 2 - 1
        ds = InMemoryDataset("toy", "1", [f"i{k}" for k in range(5)], imgs, [("a",)] * 5)
        m = genattr.get_method("nearest-pixel", distance="l1")
        ctx = AttributionContext(model=None, train_set=ds, cache=None)
        s = m.attribute(ctx, [Query("q", imgs[3] + 0.01, "a")])
        print(s.shape, int(np.argmax(s[0])), m.plugin)
    """)
    r = subprocess.run([sys.executable, "-c", code], env=clean_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 5) 3 example"


# -- CLI user errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["list", "methodz"], "methods"),
    (["list"], "KIND"),
    (["plugins", "--bogus"], "--bogus"),
    (["no-such-command"], "no-such-command"),
])
def test_user_mistakes_print_one_line_and_exit_2(args, needle, clean_env):
    r = _genattr(args, clean_env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_version_and_list_json(clean_env):
    r = _genattr(["--version"], clean_env)
    assert r.returncode == 0 and r.stdout.strip() == f"genattr {genattr.__version__}"
    r = _genattr(["list", "executors", "--json"], clean_env)
    rows = json.loads(r.stdout)
    local = [x for x in rows if x["name"] == "local"][0]
    assert local["plugin"] == "genattr.plugins.executors" and local["distribution"] == "genattr"
