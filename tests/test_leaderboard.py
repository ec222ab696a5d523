"""The leaderboard renders from stored results alone: numbers, paired intervals, separated best marks, formats
(markdown within 120 columns, CSV, JSON), figures and the static site (pages, thumbnails, provenance)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from genattr.cli import main
from genattr.harness import leaderboard, results

# (method, K) -> per-query values; "loss" is lower-is-better
LKO = {("unlearning", 1): [0.9, 0.7, 0.8, 0.85, 0.75], ("unlearning", 4): [1.6, 1.2, 1.7, 1.5, 1.4],
       ("random", 1): [0.2, 0.4, 0.3, 0.25, 0.35], ("random", 4): [0.5, 0.3, 0.4, 0.45, 0.35]}
CM = {("unlearning", "object"): [1.0, 0.5], ("unlearning", "style"): [1.0, 1.0],
      ("pixel", "object"): [1.0, 1.0], ("pixel", "style"): [0.5, 0.0]}


def _row(bench, method, cell_id, group, metrics, hib, bhash="b" * 64, mcfg=None, scale="tiny", params=None,
         extra=None):
    mcfg = mcfg or {}
    row = {"schema_version": 1, "benchmark": bench, "benchmark_version": "1", "benchmark_config_hash": bhash,
           "method": method, "method_version": "1", "method_config": mcfg,
           "config_hash": results.config_hash(bhash, method, "1", mcfg), "cell_id": cell_id,
           "params": params if params is not None else {"cell": cell_id.split("/", 1)[-1]},
           "group": group, "metrics": metrics, "higher_is_better": hib, "seed": 0, "scale": scale,
           "timings": {"cell_s": 0.1, "setup_s": 0.0}, "worker": {"executor": "local"},
           "finished_at": "2026-01-01T00:00:00+00:00"}
    if extra is not None:
        row["extra"] = extra
    return row


def _write(directory, rows, run=None):
    directory.mkdir(parents=True, exist_ok=True)
    with results.ResultsWriter(directory) as w:
        for r in rows:
            w.append(r)
    results.write_run(directory, run or {"schema_version": 1, "genattr_version": "0.1.0", "status": "complete",
                                         "config_hash": "c" * 64, "environment": {"python": "3.11"},
                                         "benchmarks": {"leave-k-out": {"version": "1", "provenance": {
                                             "datasets": {"digits": "f" * 64}}}}})


@pytest.fixture
def run_dir(tmp_path):
    rows = []
    for (m, k), vals in LKO.items():
        for q, v in enumerate(vals):
            rows.append(_row("leave-k-out", m, f"{m}/K{k}/q{q}", {"K": k, "K_frac": k / 100},
                             {"delta-loss": v, "loss": -v}, {"delta-loss": True, "loss": False},
                             params={"K": k, "K_frac": k / 100, "query": q}))
    for (m, split), vals in CM.items():
        for q, v in enumerate(vals):
            rows.append(_row("customized-model", m, f"{m}/{split}/q{q}", {"split": split},
                             {"recall@10": v, "ap": v / 2}, {"recall@10": True, "ap": True}, bhash="e" * 64,
                             params={"concept": f"c-{split}", "query": q, "split": split}))
    _write(tmp_path / "run", rows)
    return tmp_path / "run"


def _widths(text):
    return [len(ln) for ln in text.splitlines()]


# -- numbers ----------------------------------------------------------------------------------------------------
def test_mean_standard_error_paired_differences_and_best_from_results_alone(run_dir):
    doc = json.loads(leaderboard.render([run_dir], "json"))
    boards = {b["benchmark"]: b for b in doc["benchmarks"]}
    assert set(boards) == {"leave-k-out", "customized-model"}
    lko = boards["leave-k-out"]
    # K_frac is determined by K: left out of the labels, kept as a group key
    assert lko["groups"] == ["K=1", "K=4"] and lko["metrics"] == ["delta-loss", "loss"]
    assert lko["group_keys"] == ["K", "K_frac"] and lko["label_keys"] == ["K"]
    assert lko["columns"]["delta-loss"]["display"] == "ΔL" and lko["reference"] == "random"
    got = {(r["method"], r["group"], r["metric"]): r for r in lko["summary"]}
    for (m, k), vals in LKO.items():
        r = got[(m, f"K={k}", "delta-loss")]
        assert r["mean"] == pytest.approx(np.mean(vals))
        assert r["sem"] == pytest.approx(np.std(vals, ddof=1) / math.sqrt(len(vals)))
        assert r["n"] == 5
    # paired over the same queries: unlearning − random at K=1 is the mean of the per-query differences
    u = got[("unlearning", "K=1", "delta-loss")]
    diffs = np.subtract(LKO[("unlearning", 1)], LKO[("random", 1)])
    assert u["diff_reference"] == pytest.approx(diffs.mean()) and u["n_reference"] == 5
    assert u["diff_reference_lo"] > 0 and u["best_other"] == "random"
    assert got[("random", "K=1", "delta-loss")]["diff_reference"] is None
    # higher is better for ΔL, lower for loss: both make unlearning the best here, separated on 5 queries
    assert u["best"] and not got[("random", "K=1", "delta-loss")]["best"]
    assert got[("unlearning", "K=4", "loss")]["best"] and not got[("random", "K=4", "loss")]["best"]
    cm = {(r["method"], r["group"], r["metric"]): r for r in boards["customized-model"]["summary"]}
    assert boards["customized-model"]["groups"] == ["object", "style"]
    assert boards["customized-model"]["columns"]["ap"]["display"] == "mAP"
    # two queries never separate anything: no best, however far apart the means are
    assert not any(r["best"] for r in cm.values())
    assert cm[("unlearning", "style", "recall@10")]["sem"] == pytest.approx(0.0)


def test_best_is_not_claimed_inside_the_noise(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.2, size=(3, 12))
    rows = []
    for i, m in enumerate(("a", "b", "random")):
        for q in range(12):
            rows.append(_row("noisy", m, f"{m}/q{q}", {}, {"score": 0.5 + 0.01 * i + noise[i, q],
                                                           "clear": q * 0.01 + (1.0 if m == "a" else 0.0)},
                             {"score": True, "clear": True}, params={"query": q}))
    _write(tmp_path / "noisy", rows)
    doc = json.loads(leaderboard.render([tmp_path / "noisy"], "json"))
    s = {(r["method"], r["metric"]): r for r in doc["benchmarks"][0]["summary"]}
    assert not any(s[(m, "score")]["best"] for m in ("a", "b", "random"))  # highest mean, but not separated
    assert s[("a", "clear")]["best"]
    md = leaderboard.render([tmp_path / "noisy"], "md")
    assert md.count("**") == 2  # only the separated column is bold


def test_a_column_where_every_method_ties_has_no_best(tmp_path):
    hib = {"recall": True}
    rows = [_row("t", m, f"{m}/q{q}", {}, {"recall": 0.0}, hib) for m in ("a", "b") for q in range(6)]
    _write(tmp_path / "tie", rows)
    doc = json.loads(leaderboard.render([tmp_path / "tie"], "json"))
    assert not any(r["best"] for r in doc["benchmarks"][0]["summary"])


def test_rows_are_ranked_best_first_per_group_by_the_headline(tmp_path):
    # run order c, a, b; the headline is higher-is-better in one board and lower-is-better in the other
    means = {"c": 0.2, "a": 0.9, "b": 0.5}
    rows = []
    for bench, hib in (("up", True), ("down", False)):
        for m, v in means.items():
            for g in ("x", "y"):
                shift = 0.0 if g == "x" else (0.8 if m == "c" else 0.0)  # in group y, c is first going up
                for q in range(6):
                    rows.append(_row(bench, m, f"{m}/{g}/q{q}", {"g": g}, {"score": v + shift + 0.01 * q},
                                     {"score": hib}, bhash=(bench[0] * 64), params={"g": g, "query": q}))
    _write(tmp_path / "rank", rows)
    md = leaderboard.render([tmp_path / "rank"], "md")

    def order(section, group):
        lines = md.split(f"## {section}")[1].split("## ")[0].splitlines()
        out, cur = [], None
        for ln in lines:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            if len(cells) < 3 or cells[1] not in means:
                continue
            cur = cells[0] or cur
            if cur == f"g={group}" or cur == group:
                out.append(cells[1])
        return list(dict.fromkeys(out))

    assert order("up", "x") == ["a", "b", "c"] and order("up", "y") == ["c", "a", "b"]
    assert order("down", "x") == ["c", "b", "a"] and order("down", "y") == ["b", "a", "c"]


def test_decimals_follow_the_median_standard_error_not_a_chance_method_near_zero(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for m, (mu, sd) in {"a": (0.78, 0.3), "b": (0.5, 0.3), "random": (0.0015, 0.002)}.items():
        for q in range(12):
            rows.append(_row("cm", m, f"{m}/q{q}", {}, {"ap": float(abs(mu + sd * rng.normal()))}, {"ap": True},
                             params={"query": q}))
    _write(tmp_path / "dec", rows)
    doc = json.loads(leaderboard.render([tmp_path / "dec"], "json"))
    assert doc["benchmarks"][0]["columns"]["ap"]["decimals"] == 3  # s.e. ≈ 0.08: two significant digits


# -- markdown / terminal ----------------------------------------------------------------------------------------
def test_markdown_tables_fit_120_columns_with_display_names_and_n(run_dir):
    md = leaderboard.render([run_dir], "md")
    assert "## leave-k-out" in md and "## customized-model" in md
    assert max(_widths(md)) <= leaderboard.MD_WIDTH
    header = next(ln for ln in md.splitlines() if ln.startswith("| K ") and "ΔL" in ln)
    assert "| n " in header and "ΔL ↑" in header and "loss ↓" in header
    unl = next(ln for ln in md.splitlines() if "| unlearning" in ln and "**" in ln)
    assert f"**{np.mean(LKO[('unlearning', 1)]):.3f} ± " in unl and "| 5 " in unl
    assert "Recall@10 ↑" in md and "mAP ↑" in md and "ap ↑" not in md
    assert "ΔL − random (95% CI)" in md
    # no leftover empty header rows: every table's first line names its columns
    lines = md.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            assert all(c.strip() for c in ln.strip("|").split("|")), ln


def test_wide_boards_split_by_metric_to_fit_120_columns(tmp_path):
    metrics = {f"metric-with-a-long-name-{i}": float(i) for i in range(9)}
    hib = {k: True for k in metrics}
    rows = [_row("wide", meth, f"{meth}/{s}/q{q}", {"split": s}, {k: v + q / 7 for k, v in metrics.items()}, hib,
                 params={"split": s, "query": q})
            for meth in ("a-method-with-a-long-name", "b") for s in ("x", "y") for q in range(3)]
    _write(tmp_path / "wide", rows)
    md = leaderboard.render([tmp_path / "wide"], "md")
    assert max(_widths(md)) <= leaderboard.MD_WIDTH
    headers = [ln for ln in md.splitlines() if ln.startswith("| split")]
    assert len(headers) >= 3
    assert all("| method" in h and "| n " in h for h in headers)  # the row labels repeat in every split table
    seen = [k for k in metrics if any(k in h for h in headers)]
    assert seen == list(metrics)  # every metric in some table, in order


def test_terminal_output_of_a_customized_model_board_fits(tmp_path):
    d = build_site_results(tmp_path)
    md = leaderboard.render(d, "md")
    assert max(_widths(md)) <= leaderboard.MD_WIDTH
    assert "Pool: the training images and every concept's exemplars" in md
    assert "Pool: the training images and the concept's own exemplars" in md
    assert "obj-c" in md and "excluded" in md  # the unverified concept is named once, in the note
    assert "LDS" in md and "ΔG (MSE)" in md  # display names, run.json's metric_info first


# -- other formats ----------------------------------------------------------------------------------------------
def test_csv_is_the_long_summary(run_dir):
    text = leaderboard.render([run_dir], "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 * 2 * 2 + 2 * 2 * 2  # methods × groups × metrics, per benchmark
    r = next(r for r in rows if r["benchmark"] == "leave-k-out" and r["method"] == "random" and r["group"] == "K=4"
             and r["metric"] == "delta-loss")
    assert float(r["mean"]) == pytest.approx(0.4) and r["group.K"] in ("4", "4.0") and r["best"] == "False"
    u = next(r for r in rows if r["benchmark"] == "leave-k-out" and r["method"] == "unlearning"
             and r["group"] == "K=4" and r["metric"] == "delta-loss")
    assert float(u["diff_reference"]) == pytest.approx(np.mean(LKO[("unlearning", 4)]) - 0.4)
    assert float(u["diff_reference_lo"]) <= float(u["diff_reference"]) <= float(u["diff_reference_hi"])
    assert u["display"] == "ΔL" and u["n"] == "5"


def test_markdown_out_and_figures(run_dir, tmp_path):
    out = tmp_path / "lb" / "board.md"
    out.parent.mkdir()
    assert main(["leaderboard", str(run_dir), "--out", str(out), "--figures", str(tmp_path / "figs")]) == 0
    text = out.read_text()
    for name in ("leave-k-out", "customized-model"):
        assert (tmp_path / "figs" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"![{name}](../figs/{name}.png)" in text
    # markdown --out alone: figures beside the file
    assert main(["leaderboard", str(run_dir), "--out", str(out)]) == 0
    assert "![leave-k-out](board-leave-k-out.png)" in out.read_text()
    assert (out.parent / "board-customized-model.png").is_file()


def test_renders_without_torch(run_dir, tmp_path):
    site = tmp_path / "site"
    code = ("import sys; from genattr.harness import leaderboard; "
            f"leaderboard.render([{str(run_dir)!r}], 'html', out={str(site)!r}); "
            f"leaderboard.render([{str(run_dir)!r}], 'md'); "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]
    assert (site / "index.html").is_file()


def test_configurations_are_kept_apart(tmp_path):
    hib = {"score": True}
    a = [_row("b1", "m", f"q{i}", {}, {"score": 1.0 + i}, hib, bhash="1" * 64, scale="tiny") for i in range(2)]
    b = [_row("b1", "m", f"q{i}", {}, {"score": 5.0}, hib, bhash="2" * 64, scale="small") for i in range(2)]
    c = [_row("b1", "m", f"q{i}", {}, {"score": 9.0}, hib, bhash="2" * 64, mcfg={"alpha": 1}, scale="small")
         for i in range(2)]
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", b + c)
    doc = json.loads(leaderboard.render([tmp_path / "a", tmp_path / "b"], "json"))
    titles = [x["title"] for x in doc["benchmarks"]]
    assert titles == ["b1 [tiny, 11111111]", "b1 [small, 22222222]"]
    small = doc["benchmarks"][1]
    # two configurations of one method: labelled by the option that tells them apart
    assert sorted(small["methods"]) == ["m[alpha=1]", "m[alpha=default]"]
    assert sorted(r["mean"] for r in small["summary"]) == [5.0, 9.0]
    tiny = doc["benchmarks"][0]["summary"]
    assert tiny[0]["mean"] == 1.5 and tiny[0]["group"] == "all" and not tiny[0]["best"]  # nothing to compare


def test_configurations_the_options_cannot_name_briefly_fall_back_to_the_hash(tmp_path):
    hib = {"score": True}
    long = "x" * 50
    rows = [_row("b1", "m", f"{m}/q{i}", {}, {"score": 1.0}, hib, mcfg=cfg, params={"query": i})
            for m, cfg in (("a", {"opts": {"k": 1}}), ("b", {"opts": {"k": 2}}), ("c", {"name": long}))
            for i in range(2)]
    _write(tmp_path / "r", rows)
    methods = json.loads(leaderboard.render([tmp_path / "r"], "json"))["benchmarks"][0]["methods"]
    assert len(methods) == 3 and all(m.startswith("m@") and len(m) == 8 for m in methods)  # a nested option differs


def test_method_seeds_of_one_configuration_average_per_query(tmp_path):
    """Two runs of one method differing only in its ``seed`` option are one row: per query the mean over the
    seeds, n = the queries, the pairing with other methods on those means; the note names the seeds and where an
    explicit seed equals the model seed (the default draws repeated). ``pool_method_seeds=False``: two rows."""
    hib = {"score": True}

    def rows(m, mcfg, vals):
        return [_row("b1", m, f"{m}/s{q % 2}/q{q}", {}, {"score": v}, hib, mcfg=mcfg,
                     params={"query": q, "model_seed": q % 2}) for q, v in enumerate(vals)]

    _write(tmp_path / "a", rows("m", {"alpha": 1, "seed": None}, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
           + rows("ref", {}, [0.0] * 6))
    _write(tmp_path / "b", rows("m", {"alpha": 1, "seed": 1}, [3.0, 2.0, 5.0, 4.0, 7.0, 6.0]))
    _write(tmp_path / "c", rows("m", {"alpha": 2}, [9.0] * 6))  # another configuration stays apart
    doc = json.loads(leaderboard.render([tmp_path / "a", tmp_path / "b", tmp_path / "c"], "json"))
    board = doc["benchmarks"][0]
    by = {r["method"]: r for r in board["summary"]}
    pooled = [m for m in board["methods"] if m.startswith("m[") and by[m]["mean"] != 9.0]
    assert sorted(board["methods"]) == ["m[alpha=1]", "m[alpha=2]", "ref"]
    assert len(board["methods"]) == 3 and len(pooled) == 1
    assert by[pooled[0]]["n"] == 6 and by[pooled[0]]["mean"] == pytest.approx(4.0)  # query means 2, 2, 4, 4, 6, 6
    assert board["method_seeds"] == {pooled[0]: ["default", 1]}
    assert board["method_seed_repeats"] == {pooled[0]: [1]}
    md = leaderboard.render([tmp_path / "a", tmp_path / "b"], "md")
    assert "Method seeds pooled" in md and "on model seed 1 the explicit seed equals the default" in md
    apart = json.loads(leaderboard.render([tmp_path / "a", tmp_path / "b"], "json", pool_method_seeds=False))
    assert len(apart["benchmarks"][0]["methods"]) == 3 and not apart["benchmarks"][0]["method_seeds"]
    from click.testing import CliRunner

    from genattr.plugins.leaderboard_command import leaderboard_command

    res = CliRunner().invoke(leaderboard_command, [str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json",
                                                   "--separate-method-seeds"])
    assert res.exit_code == 0 and len(json.loads(res.output)["benchmarks"][0]["methods"]) == 3


# -- user mistakes ----------------------------------------------------------------------------------------------
def _one_line_error(capsys, argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_a_file_is_not_a_results_directory(tmp_path, capsys):
    f = tmp_path / "results.jsonl"
    f.write_text("")
    assert "is not a directory" in _one_line_error(capsys, ["leaderboard", f])
    assert "does not exist" in _one_line_error(capsys, ["leaderboard", tmp_path / "nope"])


def test_method_filter_keeps_only_the_named_methods(run_dir, capsys):
    """--method keeps the rows of the named methods (their paired differences are then among them only); a name
    without results is a one-line error naming the methods there are."""
    doc = json.loads(leaderboard.render([run_dir], "json", methods=["unlearning"]))
    for board in doc["benchmarks"]:
        assert {r["method"] for r in board["summary"]} == {"unlearning"}
    both = json.loads(leaderboard.render([run_dir], "json", methods=["unlearning", "random"]))
    full = json.loads(leaderboard.render([run_dir], "json"))
    assert {r["method"] for b in both["benchmarks"] for r in b["summary"]} == {"unlearning", "random"}
    assert len({r["method"] for b in full["benchmarks"] for r in b["summary"]}) > 2
    err = _one_line_error(capsys, ["leaderboard", run_dir, "-m", "unlearnin"])
    assert "--method 'unlearnin'" in err and "did you mean: unlearning" in err and "methods there:" in err


def test_an_empty_results_file_says_no_results_yet(tmp_path, capsys):
    d = tmp_path / "fresh"
    d.mkdir()
    (d / "results.jsonl").write_text("")
    assert f"no results yet in '{d}'" in _one_line_error(capsys, ["leaderboard", d])
    assert "no results yet" in _one_line_error(capsys, ["leaderboard", d, "--format", "html", "--out",
                                                        tmp_path / "site"])


def test_html_needs_a_site_directory(run_dir, tmp_path, capsys):
    assert "--out SITE/" in _one_line_error(capsys, ["leaderboard", run_dir, "--format", "html"])
    f = tmp_path / "a-file"
    f.write_text("x")
    assert "is a file" in _one_line_error(capsys, ["leaderboard", run_dir, "--format", "html", "--out", f])
    assert "directory" in _one_line_error(capsys, ["leaderboard", run_dir, "--format", "html", "--out",
                                                   tmp_path / "board.html"])


def test_headline_picks_the_ranked_and_compared_metric_on_boards_that_have_it(run_dir, capsys):
    doc = json.loads(leaderboard.render([run_dir], "json", headline="mAP"))
    boards = {b["benchmark"]: b for b in doc["benchmarks"]}
    cm, lko = boards["customized-model"], boards["leave-k-out"]
    assert cm["metrics"][0] == "ap" and lko["metrics"][0] == "delta-loss"  # a board without it keeps its own
    md = leaderboard.render([run_dir], "md", headline="ap")
    assert "mAP − best other (95% CI)" in md and "Recall@10 − best other" not in md
    assert "ΔL − random (95% CI)" in md
    assert "matches no metric" in _one_line_error(capsys, ["leaderboard", run_dir, "--headline", "nope"])


# -- the site ---------------------------------------------------------------------------------------------------
def png(width: int, height: int, rgb) -> bytes:
    """A small RGB PNG (no imaging library): ``rgb(x, y) -> (r, g, b)``."""
    raw = b"".join(b"\x00" + bytes(v for x in range(width) for v in rgb(x, y)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


SITE_METHODS = ("unlearning", "pixel", "d-trak", "random")
CM_COLUMNS = ("recall@10", "recall@5", "recall@100", "ap")


def build_site_results(root: Path) -> list[Path]:
    """Two run directories as the runner writes them (with the optional fields of the data contract):

    * ``suite``: customized-model (2 splits × 6 queries, pools own and /all, concept ``obj-c`` unverified, every
      row with a query image and its top-10) and leave-k-out (K = 10, 40; 6 queries), run.json with
      ``metric_info`` and per-benchmark resolved method configurations;
    * ``lds``: an ``lds`` benchmark (no groups) with an older run.json (``methods[M]["config"]``).
    Unlearning is clearly best on objects; on styles every method is inside the noise."""
    rng = np.random.default_rng(1)
    suite = root / "suite"
    media = suite / "media"
    (media / "train").mkdir(parents=True)
    (media / "queries").mkdir()
    for j in range(30):
        (media / "train" / f"item{j:02d}.png").write_bytes(png(16, 16, lambda x, y, j=j: (8 * j % 256, 16 * x, 16 * y)))
    concepts = {"obj-a": "object-centric", "obj-b": "object-centric", "obj-c": "object-centric",
                "sty-a": "artist-style", "sty-b": "artist-style"}
    for c in concepts:
        (media / "train" / f"{c}-ex.png").write_bytes(png(16, 16, lambda x, y: (255, 255 * (x > y), 0)))
    bh_cm, bh_lko = "a" * 64, "d" * 64
    configs = {m: {"customized-model": {"alpha": 1e-3} if m == "unlearning" else {},
                   "leave-k-out": {"alpha": 3e-3} if m == "unlearning" else {}} for m in SITE_METHODS}
    hib_cm = {f"{c}{p}": True for p in ("", "/all") for c in CM_COLUMNS}
    rows = []
    for c, split in concepts.items():
        for q in range(2 if c == "obj-c" else 3):
            qfile = f"media/queries/{c}-q{q}.png"
            (suite / qfile).write_bytes(png(16, 16, lambda x, y, q=q: (40 * q, 200, 16 * x)))
            for m in SITE_METHODS:
                skill = {"unlearning": 0.9, "pixel": 0.5, "d-trak": 0.4, "random": 0.05}[m]
                if split == "artist-style":
                    skill = 0.3
                v = float(np.clip(skill + rng.normal(0, 0.08 if split == "object-centric" else 0.25), 0, 1))
                metrics = {}
                for p in ("", "/all"):
                    metrics.update({f"recall@10{p}": v, f"recall@5{p}": v * 0.8, f"recall@100{p}": min(1, v * 1.5),
                                    f"ap{p}": v * 0.7})
                top = [{"id": f"{c}-ex" if (k == 0 and v > 0.5) else f"item{(q * 7 + k * 3) % 30:02d}",
                        "score": 1.0 - k / 10,
                        "image": f"media/train/{c}-ex.png" if (k == 0 and v > 0.5)
                        else f"media/train/item{(q * 7 + k * 3) % 30:02d}.png",
                        "positive": k == 0 and v > 0.5} for k in range(10)]
                extra = {"concept": c, "query_id": f"{c}/q{q:02d}", "prompt": f"a <v*> {split} picture number {q}",
                         "verified": c != "obj-c", "media": {"query": qfile, "top": top}}
                rows.append(_row("customized-model", m, f"{m}/{c}/q{q:02d}", {"split": split}, metrics, hib_cm,
                                 bhash=bh_cm, mcfg=configs[m]["customized-model"], extra=extra,
                                 params={"concept": c, "query": q, "split": split}))
    for k in (10, 40):
        for q in range(6):
            for m in SITE_METHODS:
                gain = {"unlearning": 3.0, "pixel": 2.0, "d-trak": 2.5, "random": 1.0}[m]
                dl = (gain * k / 10 + rng.normal(0, 0.3)) * 1e-4
                rows.append(_row("leave-k-out", m, f"{m}/K{k}/q{q:03d}", {"K": k, "K_frac": k / 480},
                                 {"delta-loss": dl, "delta-gen-mse": dl / 3, "delta-gen-sim": 1 - dl},
                                 {"delta-loss": True, "delta-gen-mse": True, "delta-gen-sim": False}, bhash=bh_lko,
                                 mcfg=configs[m]["leave-k-out"], params={"K": k, "K_frac": k / 480, "query": q},
                                 extra={"query_id": f"q{q:03d}", "prompt": f"a digit {q}"}))
    hashes = {m: {b: results.config_hash(h, m, "1", configs[m][b])
                  for b, h in (("customized-model", bh_cm), ("leave-k-out", bh_lko))} for m in SITE_METHODS}
    run = {"schema_version": 1, "genattr_version": "0.1.0", "status": "complete", "seed": 0, "scale": "tiny",
           "config_hash": "c" * 64, "seeds": {"run": 0, "cells": "derive_seed(run seed, cell id)"},
           "environment": {"python": "3.11", "platform": "linux", "packages": {"torch": "2.13.0"},
                           "git": {"commit": "0123456789abcdef" * 2, "dirty": False}, "devices": ["cpu"]},
           "benchmarks": {
               "customized-model": {"version": "1", "config_hash": bh_cm, "config": {"scale": "tiny"},
                                    "metric_info": {"recall@10": {"display": "Recall@10", "higher_is_better": True,
                                                                  "metric": "recall-at-k", "unit": None},
                                                    "ap": {"display": "mAP", "higher_is_better": True,
                                                           "metric": "average-precision", "unit": None}},
                                    "provenance": {"datasets": {"shapes": "5" * 64}, "models": {"base": "6" * 64}}},
               "leave-k-out": {"version": "1", "config_hash": bh_lko, "config": {"scale": "tiny"},
                               "metric_info": {"delta-gen-mse": {"display": "ΔG (MSE)", "higher_is_better": True,
                                                                 "metric": "delta-gen-mse", "unit": None}},
                               "provenance": {"datasets": {"digits": "7" * 64}}}},
           "methods": {m: {"version": "1", "plugin": "genattr.plugins.methods", "configs": configs[m],
                           "config_hashes": hashes[m]} for m in SITE_METHODS},
           "plugins": [{"name": "genattr.plugins.methods", "version": "0.1.0", "distribution": "genattr"}],
           "invocations": [{"argv": ["run", "customized-model", "leave-k-out"], "started_at": "2026-01-01",
                            "status": "complete", "cells_run": 10, "cells_skipped": 0}]}
    _write(suite, rows, run)
    lds = root / "lds"
    lrows = []
    for q in range(8):
        for m in SITE_METHODS:
            v = {"unlearning": 0.4, "pixel": 0.2, "d-trak": 0.35, "random": 0.0}[m] + rng.normal(0, 0.05)
            lrows.append(_row("lds", m, f"{m}/q{q}", {}, {"lds": v}, {"lds": True}, bhash="9" * 64,
                              params={"query": q}))
    _write(lds, lrows, {"schema_version": 1, "genattr_version": "0.1.0", "status": "complete",
                        "methods": {m: {"version": "1", "config": {}} for m in SITE_METHODS}})
    return [suite, lds]


@pytest.fixture
def site(tmp_path):
    dirs = build_site_results(tmp_path / "runs")
    out = tmp_path / "site"
    assert main(["leaderboard", *map(str, dirs), "--format", "html", "--out", str(out)]) == 0
    return out


def test_site_pages_figures_and_thumbnails(site):
    files = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    pages = [f for f in files if f.endswith(".html")]
    assert pages == ["index.html"] + [f"method-{m}.html" for m in sorted(SITE_METHODS)]
    figs = [f for f in files if f.startswith("figures/")]
    assert figs == sorted(["figures/customized-model-headline.svg", "figures/customized-model-all.svg",
                           "figures/leave-k-out-headline.svg", "figures/lds-headline.svg"])
    for f in figs:
        assert (site / f).read_text().lstrip().startswith(("<?xml", "<svg"))
    thumbs = [f for f in files if f.startswith("media/")]
    assert all(f.startswith("media/1-suite/media/") for f in thumbs)  # copied beside the pages, by run
    assert sum("/queries/" in f for f in thumbs) == 14  # every query image
    assert sum(re.search(r"/train/item\d+\.png$", f) is not None for f in thumbs) == 30  # every top-10 item
    index = (site / "index.html").read_text()
    assert index.startswith("<!DOCTYPE html>") and index.rstrip().endswith("</html>")
    # nothing fetched from elsewhere: no external image, script or stylesheet; the only external hrefs are a
    # method's paper and code links, marked rel="external"
    assert not re.search(r'src="(https?:|//)|<link[^>]+href="(https?:|//)', index)
    for page in pages:
        text = (site / page).read_text()
        assert not re.search(r'src="(https?:|//)|<link[^>]+href="(https?:|//)', text)
        assert all("external" in a for a in re.findall(r'<a [^>]*href="https?:[^>]*>', text))
        for ref in re.findall(r'(?:src|href)="([^"#]+)', text):
            if re.match(r"https?:", ref):
                continue
            assert (site / ref).is_file(), (page, ref)  # every local link resolves


def test_site_index_tables_best_flags_and_provenance(site):
    index = (site / "index.html").read_text()
    for tid in ("table-customized-model-headline-object-centric", "table-customized-model-headline-artist-style",
                "table-customized-model-all-object-centric", "table-leave-k-out-headline-K-10",
                "table-leave-k-out-headline-by-K", "table-lds-headline-all"):
        assert f'id="{tid}"' in index, tid
    assert "Recall@10" in index and "mAP" in index and "ΔG (MSE)" in index and "LDS" in index
    assert "ΔL ×10⁻³" in index
    assert "Recall@10 − random" in index and "Recall@10 − best other" in index
    obj = index.split('id="table-customized-model-headline-object-centric"')[1].split("</table>")[0]
    sty = index.split('id="table-customized-model-headline-artist-style"')[1].split("</table>")[0]
    assert "<strong>" in obj and "<strong>" not in sty  # separated on objects, inside the noise on styles
    assert "obj-c" in index and "excluded from every number" in index
    # provenance: versions, resolved configurations, config hashes, seeds, fingerprints
    assert "5" * 16 in index and "7" * 16 in index and "0123456789abcdef" in index
    assert results.config_hash("a" * 64, "unlearning", "1", {"alpha": 1e-3})[:12] in index
    assert "&#34;alpha&#34;: 0.001" in index or '"alpha": 0.001' in index
    assert "genattr run customized-model leave-k-out" in index


def test_site_method_page_per_query_results_and_images(site):
    page = (site / "method-unlearning.html").read_text()
    assert 'id="queries-customized-model"' in page and 'id="queries-leave-k-out"' in page
    assert page.count('class="query-image"') == 14  # every customized-model query, unverified ones flagged
    assert page.count('class="thumb"') == 140
    assert "unverified (excluded)" in page and "a &lt;v*&gt; object-centric picture number 2" in page
    assert 'class="positive"' in page
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (site / src).read_bytes()[:4] == b"\x89PNG"
    assert "Resolved configuration" in page


def test_site_rerender_removes_its_own_stale_files_only(tmp_path):
    dirs = build_site_results(tmp_path / "runs")
    out = tmp_path / "site"
    assert main(["leaderboard", *map(str, dirs), "--format", "html", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["leaderboard", str(dirs[1]), "--format", "html", "--out", str(out)]) == 0
    assert not (out / "figures" / "customized-model-headline.svg").exists()
    assert not list((out / "media").rglob("*.png"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "method-random.html").is_file()


def test_unverified_cells_can_be_included(tmp_path):
    dirs = build_site_results(tmp_path / "runs")
    plain = json.loads(leaderboard.render(dirs[:1], "json"))["benchmarks"][0]
    kept = json.loads(leaderboard.render(dirs[:1], "json", include_unverified=True))["benchmarks"][0]
    assert plain["unverified_concepts"] == ["obj-c"] and plain["unverified_cells"] == 8
    n = {(r["method"], r["group"]): r["n"] for r in plain["summary"] if r["metric"] == "ap"}
    n_all = {(r["method"], r["group"]): r["n"] for r in kept["summary"] if r["metric"] == "ap"}
    assert n[("random", "object-centric")] == 6 and n_all[("random", "object-centric")] == 8
    assert kept["unverified_included"] is True


def test_media_outside_the_run_directory_is_never_copied(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(2, 2, lambda x, y: (0, 0, 0)))
    extra = {"media": {"query": "../secret.png", "top": [{"id": "x", "score": 1.0, "image": "/etc/hostname"}]}}
    rows = [_row("b", m, f"{m}/q{q}", {}, {"score": float(q)}, {"score": True}, extra=extra)
            for m in ("a", "random") for q in range(2)]
    _write(tmp_path / "run", rows)
    out = tmp_path / "site"
    leaderboard.render([tmp_path / "run"], "html", out=out)
    assert not (out / "media").exists() or not list((out / "media").rglob("*"))
    page = (out / "method-a.html").read_text()
    assert "secret" not in page and "/etc/hostname" not in page  # no picture to show: no gallery at all


# -- runs that differ only in their model seeds -----------------------------------------------------------------
def _seed_run(directory, cfg, bhash, seed, model_seeds, methods, values):
    """One customized-model run: rows of ``methods`` for two queries; ``model_seeds`` None = one model, the run
    seed's (cells without params.model_seed), else one set of rows per seed."""
    rows = []
    seeds = [None] if model_seeds is None else model_seeds
    for m in methods:
        for s in seeds:
            for q in range(2):
                params = {"concept": "c", "query": q, "split": "style"}
                if s is not None:
                    params["model_seed"] = s
                v = values(m, seed if s is None else s, q)
                r = _row("customized-model", m, f"{m}/{'' if s is None else f's{s}/'}c/q{q}", {"split": "style"},
                         {"ap": v}, {"ap": True}, bhash=bhash, params=params, mcfg={"alpha": 1e-2},
                         extra={"query_id": f"c/q{q}", "concept": "c"})
                r["seed"] = seed
                rows.append(r)
    run = {"schema_version": 1, "genattr_version": "0.1.0", "status": "complete", "config_hash": "c" * 64,
           "seed": seed, "benchmarks": {"customized-model": {
               "version": "1", "config": {**cfg, "model_seeds": model_seeds}, "config_hash": bhash}}}
    _write(directory, rows, run=run)
    return directory


def test_runs_differing_only_in_model_seeds_pool_into_one_board(tmp_path, capsys):
    cfg = {"scale": "tiny", "queries_per_concept": 2}
    def values(m, s, q):
        return {"pixel": 0.5, "unlearning": 0.1 * (s + 1) + 0.01 * q}[m]
    a = _seed_run(tmp_path / "a", cfg, "1" * 64, 0, None, ["unlearning", "pixel"], values)     # seed 0, no list
    b = _seed_run(tmp_path / "b", cfg, "2" * 64, 0, [0, 1, 2], ["pixel"], values)              # seed 0 again
    c = _seed_run(tmp_path / "c", cfg, "3" * 64, 0, [1, 2], ["unlearning"], values)             # extends a
    d = _seed_run(tmp_path / "d", {**cfg, "queries_per_concept": 4}, "4" * 64, 0, [3], ["pixel"], values)
    doc = json.loads(leaderboard.render([a, b, c, d], "json"))
    boards = {x["config_hash"][:8]: x for x in doc["benchmarks"]}
    assert len(boards) == 2 and "44444444" in boards  # another config never pools
    pooled = next(x for k, x in boards.items() if k != "44444444")
    assert pooled["config_hashes"] == ["1" * 64, "2" * 64, "3" * 64] and pooled["model_seeds"] == [0, 1, 2]
    # pixel's seed-0 rows appear in a and b: counted once; the two unlearning runs are one method, not two
    assert pooled["methods"] == ["unlearning", "pixel"] and pooled["cells"] == 12
    stat = {r["method"]: r for r in pooled["summary"]}
    assert stat["pixel"]["n"] == 6 and stat["unlearning"]["n"] == 6
    assert stat["unlearning"]["mean"] == pytest.approx(np.mean([0.1, 0.11, 0.2, 0.21, 0.3, 0.31]))
    # paired on (query, model seed): unlearning − pixel over all six queries, not a mixture
    assert stat["unlearning"]["n_best_other"] == 6
    assert stat["unlearning"]["diff_best_other"] == pytest.approx(np.mean([0.1, 0.11, 0.2, 0.21, 0.3, 0.31]) - 0.5)
    # the mean per model seed beside the pooled one: unlearning 0.105 / 0.205 / 0.305, pixel 0.5 on each
    per = {(r["method"], r["model_seed"]): (r["mean"], r["n"]) for r in pooled["by_model_seed"]}
    assert per[("unlearning", 1)][0] == pytest.approx(0.205) and per[("unlearning", 1)][1] == 2
    assert per[("pixel", 2)] == (0.5, 2) and len(per) == 6
    md = leaderboard.render([a, b, c], "md")
    assert "3 configs pooled over model seeds 0, 1, 2" in md
    seed_table = md[md.index("Per model seed"):]
    assert "mAP seed 2 (n)" in seed_table and "0.305 (2)" in seed_table and "0.200" in seed_table  # max − min
    # one model: no per-seed table
    assert "Per model seed" not in leaderboard.render([a], "md")
    # --separate-seeds keeps one board per run configuration
    assert main(["leaderboard", str(a), str(b), str(c), "--separate-seeds", "--format", "json"]) in (0, None)
    sep = json.loads(capsys.readouterr().out)
    assert len(sep["benchmarks"]) == 3


def test_the_site_labels_queries_by_model_seed(tmp_path):
    cfg = {"scale": "tiny"}
    a = _seed_run(tmp_path / "a", cfg, "1" * 64, 0, [0, 1], ["pixel", "random"], lambda m, s, q: 0.5)
    leaderboard.render([a], "html", out=tmp_path / "site")
    page = next((tmp_path / "site").rglob("*pixel*.html")).read_text()
    assert "s1/c/q0" in page and "s0/c/q0" in page  # the same query id of two base models, told apart
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Per model seed" in index and "seed 1" in index and "max − min" in index


def _regime(share, passed):
    side = {"near_copy_share": share, "near_copy_ci95": [share / 2, share * 1.5], "nn_ratio": 1.0, "passed": passed}
    return {"pixel": side, "features": side, "queries": 500, "heldout": 1000, "passed": passed}


def test_boards_state_the_base_models_regime_check_the_runs_record(tmp_path):
    """A counterfactual board says whether its base models copy their training images (run.json's provenance), per
    model seed and loudly when one fails; a board whose runs record no check says nothing."""
    rows = [_row("leave-k-out", m, f"{m}/K1/q{q}", {"K": 1}, {"delta-loss": v}, {"delta-loss": True},
                 params={"K": 1, "query": q}) for m, vals in (("unlearning", [0.9, 0.8]), ("random", [0.2, 0.1]))
            for q, v in enumerate(vals)]
    run = {"schema_version": 1, "genattr_version": "0.1.0", "status": "complete", "config_hash": "c" * 64, "seed": 0,
           "benchmarks": {"leave-k-out": {"version": "1", "config_hash": "b" * 64,
                                          "provenance": {"regime": _regime(0.26, False)}}}}
    _write(tmp_path / "fails", rows, run)
    md = leaderboard.render([tmp_path / "fails"], "md")
    assert "Base-model regime check: model seed 0 FAILS" in md and "near-copies 26% [13%, 39%]" in md
    assert "pixel similarity is closer to optimal attribution" in md
    doc = json.loads(leaderboard.render([tmp_path / "fails"], "json"))
    assert doc["benchmarks"][0]["regime"][0]["check"]["passed"] is False
    # several model seeds in one run: each seed's check, no warning when every one passes
    run["benchmarks"]["leave-k-out"]["provenance"] = {"model_seeds": {"1": {"regime": _regime(0.08, True)},
                                                                      "2": {"regime": _regime(0.09, True)}}}
    _write(tmp_path / "passes", rows, run)
    md = leaderboard.render([tmp_path / "passes"], "md")
    assert "model seed 1 passes" in md and "model seed 2 passes" in md and "optimal attribution" not in md
    # no check recorded: no note
    _write(tmp_path / "none", rows)
    assert "regime check" not in leaderboard.render([tmp_path / "none"], "md")
