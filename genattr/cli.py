"""The ``genattr`` command.

User mistakes (unknown names, bad options, missing paths) print one line to stderr and exit with status 2; faults
of the environment (a full disk) or of a plugin (an exception in a cell, a broken contract) one line and status 1;
no traceback (a run writes a plugin's traceback to its directory's ``errors.log``). Plugins add subcommands through the ``register_commands(cli)`` hook (the built-in ``run``,
``leaderboard`` and ``attribute`` commands come that way too).
"""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .harness.errors import EnvironmentFault, PluginFault, ScoringError, UserError, did_you_mean
from .harness.registry import KINDS, SINGULAR

EXIT_USAGE = 2
#: Exit status of a fault that is not the user's input: a full disk, a plugin that raised, a dead worker.
EXIT_FAULT = 1


def fail(message: str) -> None:
    """Raise a user error (one line, exit 2)."""
    raise UserError(message)


class GenattrGroup(click.Group):
    def main(self, args=None, prog_name=None, **kwargs):  # noqa: D102
        try:
            rv = super().main(args=args, prog_name=prog_name or "genattr", standalone_mode=False, **kwargs)
        except click.exceptions.Exit as e:
            return e.exit_code
        except click.UsageError as e:
            msg = e.format_message().strip().replace("\n", " ")
            cmd = e.ctx.command_path if e.ctx is not None else "genattr"
            click.echo(f"{cmd}: error: {msg}", err=True)
            return EXIT_USAGE
        except UserError as e:
            click.echo(f"genattr: error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                       err=True)
            return EXIT_USAGE
        except (EnvironmentFault, PluginFault, ScoringError) as e:
            text = str(e).strip()
            click.echo(f"genattr: error: {text.splitlines()[0] if text else type(e).__name__}", err=True)
            return EXIT_FAULT
        except (click.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            click.echo("genattr: interrupted; finished work is kept, re-run the same command to resume", err=True)
            return 130
        except click.ClickException as e:
            click.echo(f"genattr: error: {e.format_message()}", err=True)
            return e.exit_code
        return rv if isinstance(rv, int) else 0


@click.group(cls=GenattrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="genattr", message="%(prog)s %(version)s")
def cli():
    """genattr: benchmark data-attribution methods for text-to-image diffusion models."""


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "include_builtin", is_flag=True, help="Include built-in plugins.")
def plugins_command(as_json: bool, include_builtin: bool):
    """List installed plugins: name, version, hooks, and what each registered.

    A component name registered by two plugins (a clash) is shown with both plugins and how to fix it."""
    from .harness.manager import all_plugins, clashes, registry

    registered: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for entry in registry(kind).all_entries():
            names = registered.setdefault(entry.plugin, {}).setdefault(kind, [])
            if entry.name not in names:
                names.append(entry.name)
    clash_list = clashes()
    clashed: dict[str, list[dict]] = {}
    for c in clash_list:
        for p in c["plugins"]:
            others = [o for o in c["plugins"] if o != p] or [p]
            clashed.setdefault(p, []).append({"kind": c["kind"], "name": c["name"], "with": others})
    rows = []
    for p in all_plugins(include_builtin):
        rows.append({
            "name": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "builtin": p.builtin,
            "hooks": p.hooks,
            "registered": registered.get(p.name, {}),
            "error": p.error,
            "clashes": clashed.get(p.name, []),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed (use --all to include built-ins)")
    for r in rows:
        head = f"{r['name']} {r['version'] or ''}".strip()
        if r["distribution"] and r["distribution"] != r["name"]:
            head += f" ({r['distribution']})"
        click.echo(head + ("  [skipped: " + r["error"].splitlines()[0] + "]" if r["error"] else ""))
        if r["hooks"]:
            click.echo("  hooks: " + ", ".join(r["hooks"]))
        for kind, names in r["registered"].items():
            click.echo(f"  {kind}: " + ", ".join(names))
        for c in r["clashes"]:
            click.echo(f"  clash: {SINGULAR[c['kind']]} {c['name']!r} is also registered by "
                       + ", ".join(repr(o) for o in c["with"]))
    for c in clash_list:
        click.echo(f"clash: {c['message']}")


@cli.command(name="list")
@click.argument("kind")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(kind: str, as_json: bool):
    """List registered components of KIND (methods, models, metrics, datasets, benchmarks, executors).

    A name registered by two plugins is listed once per plugin, marked as a clash; using it is an error until the
    clash is fixed."""
    if kind not in KINDS:
        fail(f"unknown kind {kind!r}{did_you_mean(kind, KINDS)}; choose from {', '.join(KINDS)}")
    from .harness.manager import registry

    reg = registry(kind)
    rows = []
    for e in reg.all_entries():
        row = e.to_json()
        if e.name in reg.clashes:
            row["clash"] = list(dict.fromkeys(o.plugin for o in reg.clashes[e.name]))
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no {kind} registered")
        return
    from tabulate import tabulate

    headers = ["name", "version", "plugin", "description"]
    table = [[r["name"] + (" (clash)" if "clash" in r else ""), r["version"], r["plugin"], r["description"]]
             for r in rows]
    widths = [None, None, None, 70]
    if kind == "models":  # what each benchmark can do with the model (docs/models.md)
        headers.insert(2, "capabilities")
        widths.insert(2, None)
        for row, r in zip(table, rows):
            row.insert(2, ", ".join(r.get("capabilities") or []) or "-")
    click.echo(tabulate(table, headers=headers, tablefmt="simple", maxcolwidths=widths))
    for name in sorted(reg.clashes):
        click.echo(f"clash: {reg.clash_message(name)}")


_commands_added = False


def _add_plugin_commands() -> None:
    global _commands_added
    if _commands_added:
        return
    _commands_added = True
    from .harness.manager import add_commands

    add_commands(cli)  # a plugin that fails here is reported and skipped (strict mode: a PluginError)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """The CLI's display of Python warnings: genattr's own (``"genattr: …"``) as one ``genattr: warning: …`` line
    like the logged warnings, anything else as Python shows it."""
    text = str(message)
    if text.startswith("genattr: "):
        click.echo(f"genattr: warning: {text[len('genattr: '):].strip().splitlines()[0]}", err=True)
        return
    _PY_SHOWWARNING(message, category, filename, lineno, file, line)


_PY_SHOWWARNING = None


def main(argv=None) -> int:
    import warnings

    global _PY_SHOWWARNING
    if warnings.showwarning is not _show_warning:
        _PY_SHOWWARNING = warnings.showwarning
        warnings.showwarning = _show_warning
    try:
        _add_plugin_commands()
    except UserError as e:  # strict mode and a broken plugin
        text = str(e).strip()
        click.echo(f"genattr: error: {text.splitlines()[0] if text else type(e).__name__}", err=True)
        return EXIT_USAGE
    return cli.main(args=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
