"""Built-in commands beyond ``plugins`` and ``list``: ``run``, ``leaderboard`` and ``attribute``, added through the
same ``register_commands`` hook a third-party plugin uses.

Nothing heavy is imported here: torch, pandas and matplotlib load only when a command actually runs, so
``genattr --help`` stays fast.
"""

from __future__ import annotations

import click

from genattr import hookimpl
from genattr.harness.api import SCALES
from genattr.harness.errors import UserError
from genattr.harness.run.config import DEFAULT_BENCHMARKS, DEFAULT_METHODS, DEFAULT_SCALE

def _split_names(values) -> list[str]:
    """``-m a -m b,c`` → ``["a", "b", "c"]``."""
    out: list[str] = []
    for v in values:
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return out


_RUN_HELP = (
    f"Evaluate METHODS on BENCHMARKS (default: the default suite — {' and '.join(DEFAULT_BENCHMARKS)} at "
    f"{DEFAULT_SCALE} scale with {', '.join(DEFAULT_METHODS)}) and print the leaderboard. Finished cells are kept "
    "in DIR/results.jsonl; re-running the same command resumes where it stopped.")


@click.command(name="run", help=_RUN_HELP)
@click.argument("benchmarks", nargs=-1)
@click.option("-m", "--method", "methods", multiple=True, metavar="METHOD",
              help=f"Method to evaluate (repeat, or comma-separate). Default: {', '.join(DEFAULT_METHODS)}.")
@click.option("--scale", type=click.Choice(SCALES), default=None, help=f"Benchmark scale (default: {DEFAULT_SCALE}).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Configuration override: key=value for every benchmark, NAME.key=value for one benchmark, "
                   "method or executor (e.g. unlearning.alpha=1e-4). Values are JSON where possible.")
@click.option("--config", "config_file", metavar="FILE.toml", help="TOML file with [run] options and "
                                                                   "[NAME] tables of component configuration.")
@click.option("--seed", type=int, default=None, help="Run seed (default 0).")
@click.option("--method-seed", type=int, default=None, metavar="N",
              help="Seed of the methods' own draws: option seed of every method that has one (NAME.seed wins). "
                   "Same models, queries and retrains as without it: a second method seed; pool it with the "
                   "first by giving both directories to genattr leaderboard.")
@click.option("--out", metavar="DIR", help="Run directory (default runs/<suite or benchmark>-<scale>[-mseed<N>]).")
@click.option("--executor", default=None, metavar="NAME", help="local (default) or ray.")
@click.option("--device", default=None, metavar="DEVICE", help="auto (default: cuda if available), cpu, cuda, …")
@click.option("--cell-timeout", type=float, default=None, metavar="SECONDS",
              help="Stop the run (one line naming the cell, finished rows kept) when a cell runs longer. Default: "
                   "no limit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--no-leaderboard", is_flag=True, help="Do not print the leaderboard at the end.")
@click.pass_context
def run_command(ctx, benchmarks, methods, scale, sets, config_file, seed, method_seed, out, executor, device,
                cell_timeout, quiet, no_leaderboard):
    import sys

    from genattr.harness import leaderboard, progress
    from genattr.harness import run as runner

    progress.configure_logging(quiet=quiet)
    spec = runner.build_spec(list(benchmarks), _split_names(methods), scale=scale, sets=list(sets),
                             config_file=config_file, seed=seed, method_seed=method_seed, out=out,
                             executor=executor, device=device, quiet=quiet, argv=sys.argv[1:],
                             cell_timeout=cell_timeout)
    if spec.unseeded:
        click.echo(f"genattr: method seed {spec.method_seed} leaves {', '.join(spec.unseeded)} as without it "
                   "(no seed option: deterministic)", err=True)
    summary = runner.run(spec)
    click.echo(f"genattr: {summary.cells_run} cells run, {summary.cells_skipped} already finished, "
               f"{summary.wall_s:.1f} s; results in {summary.out}", err=True)
    if not no_leaderboard:
        leaderboard.render([summary.out], "md", out=summary.out / "leaderboard.md")  # with figures beside it
        click.echo(leaderboard.render([summary.out], "md"), nl=False)


@click.command(name="attribute")
@click.option("--model", "model_spec", metavar="DIR_OR_ID",
              help="A saved model directory (tiny-t2i or a diffusers pipeline), a registered model name, or a hub id.")
@click.option("--model-set", "model_sets", multiple=True, metavar="KEY=VALUE",
              help="Configuration of a registered model name.")
@click.option("--run", "run_dir", metavar="DIR",
              help="A finished genattr run directory: use its model and training set (from the cache).")
@click.option("--benchmark", metavar="NAME", help="With --run: which of the run's benchmarks (default: the first).")
@click.option("--concept", metavar="ID", help="With --run on customized-model: whose customized model.")
@click.option("--allow-untrained", is_flag=True, help="Accept --model naming a fresh, untrained adapter.")
@click.option("--allow-unverified", is_flag=True,
              help="With --run on customized-model: accept a concept whose customized model failed verification.")
@click.option("--dataset", "dataset_name", metavar="NAME",
              help="The training dataset (registered name); with --run only checked against the run's.")
@click.option("--dataset-set", "dataset_sets", multiple=True, metavar="KEY=VALUE", help="Dataset configuration.")
@click.option("--prompt", help="Prompt to generate the query from (with --seed), or the prompt of --image.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated query.")
@click.option("--image", "image_path", metavar="PATH", help="Attribute this image instead of generating one.")
@click.option("--steps", type=int, default=50, show_default=True, help="Sampling steps for a generated query.")
@click.option("--method", "method_name", required=True, metavar="NAME", help="Attribution method.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Method configuration (JSON values).")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--scale", type=click.Choice(SCALES), default=None,
              help="Scale the method's presets follow (default: the run's, else small).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", required=True, metavar="DIR", help="Output directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def attribute_command(model_spec, model_sets, run_dir, benchmark, concept, allow_untrained, allow_unverified,
                      dataset_name,
                      dataset_sets, prompt, seed, image_path, steps, method_name, sets, top_k, scale, device, out,
                      quiet):
    """Where did this image come from? Rank the training items of a dataset for one query — generated from
    --prompt and --seed, or given with --image — and write ranking.csv, ranking.json and grid.png to --out."""
    from genattr.harness import progress

    from .attribute import attribute, format_ranking

    progress.configure_logging(quiet=quiet)
    progress.enable(not quiet)
    result = attribute(
        model_spec=model_spec, model_sets=list(model_sets), dataset=dataset_name, dataset_sets=list(dataset_sets),
        prompt=prompt, seed=seed, image=image_path, steps=steps, method=method_name, method_sets=list(sets),
        top_k=top_k, scale=scale, device=device, out=out, progress=not quiet, run=run_dir, benchmark=benchmark,
        concept=concept, allow_untrained=allow_untrained, allow_unverified=allow_unverified)
    source = result.get("source") or {}
    if source.get("what"):
        click.echo(f"genattr: ranked with the {source['what']} of {source.get('run')} ({source.get('benchmark')})",
                   err=True)
    click.echo(format_ranking(result["ranking"]))
    click.echo(f"genattr: wrote {result['files']['csv']}, {result['files']['json']}, {result['files']['grid']}",
               err=True)


@hookimpl
def register_commands(cli):
    from .leaderboard_command import leaderboard_command
    from .pack_command import pack_command
    from .scaffold import new_plugin_command

    for command in (run_command, leaderboard_command, attribute_command, new_plugin_command, pack_command):
        if command.name not in cli.commands:
            cli.add_command(command)


__all__ = ["run_command", "attribute_command", "register_commands", "UserError"]
