"""The leaderboard renders from stored results alone: numbers, best marks, formats, figures, HTML page."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from genattr.cli import main
from genattr.harness import leaderboard, results

# (method, K, query) -> values; loss is lower-is-better
LKO = {("unlearning", 1): [0.9, 0.7, 0.8], ("unlearning", 4): [1.6, 1.2, 1.7],
       ("random", 1): [0.2, 0.4, 0.3], ("random", 4): [0.5, 0.3, 0.4]}
CM = {("unlearning", "object"): [1.0, 0.5], ("unlearning", "style"): [1.0, 1.0],
      ("pixel", "object"): [1.0, 1.0], ("pixel", "style"): [0.5, 0.0]}


def _row(bench, method, cell_id, group, metrics, hib, bhash="b" * 64, mcfg=None, scale="tiny"):
    mcfg = mcfg or {}
    return {"schema_version": 1, "benchmark": bench, "benchmark_version": "1", "benchmark_config_hash": bhash,
            "method": method, "method_version": "1", "method_config": mcfg,
            "config_hash": results.config_hash(bhash, method, "1", mcfg), "cell_id": cell_id, "params": {},
            "group": group, "metrics": metrics, "higher_is_better": hib, "seed": 0, "scale": scale,
            "timings": {"cell_s": 0.1, "setup_s": 0.0}, "worker": {"executor": "local"},
            "finished_at": "2026-01-01T00:00:00+00:00"}


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
                             {"delta-loss": v, "loss": -v},
                             {"delta-loss": True, "loss": False}))
    for (m, split), vals in CM.items():
        for q, v in enumerate(vals):
            rows.append(_row("customized-model", m, f"{m}/{split}/q{q}", {"split": split},
                             {"recall@10": v, "ap": v / 2}, {"recall@10": True, "ap": True}, bhash="e" * 64))
    _write(tmp_path / "run", rows)
    return tmp_path / "run"


def test_mean_standard_error_and_best_from_results_alone(run_dir):
    doc = json.loads(leaderboard.render([run_dir], "json"))
    boards = {b["benchmark"]: b for b in doc["benchmarks"]}
    assert set(boards) == {"leave-k-out", "customized-model"}
    lko = boards["leave-k-out"]
    # K_frac is determined by K: left out of the labels, kept as a group key
    assert lko["groups"] == ["K=1", "K=4"] and lko["metrics"] == ["delta-loss", "loss"]
    assert lko["group_keys"] == ["K", "K_frac"] and lko["label_keys"] == ["K"]
    got = {(r["method"], r["group"], r["metric"]): r for r in lko["summary"]}
    for (m, k), vals in LKO.items():
        r = got[(m, f"K={k}", "delta-loss")]
        assert r["mean"] == pytest.approx(np.mean(vals))
        assert r["sem"] == pytest.approx(np.std(vals, ddof=1) / math.sqrt(len(vals)))
        assert r["n"] == 3
    # higher is better for ΔL, lower for loss: both make unlearning the best here
    assert got[("unlearning", "K=1", "delta-loss")]["best"] and not got[("random", "K=1", "delta-loss")]["best"]
    assert got[("unlearning", "K=4", "loss")]["best"] and not got[("random", "K=4", "loss")]["best"]
    cm = {(r["method"], r["group"], r["metric"]): r for r in boards["customized-model"]["summary"]}
    assert boards["customized-model"]["groups"] == ["object", "style"]
    assert cm[("pixel", "object", "recall@10")]["best"] and not cm[("unlearning", "object", "recall@10")]["best"]
    assert cm[("unlearning", "style", "ap")]["best"]
    assert cm[("unlearning", "style", "recall@10")]["sem"] == pytest.approx(0.0)


def test_markdown_tables_mark_the_best(run_dir):
    md = leaderboard.render([run_dir], "md")
    assert "## leave-k-out" in md and "## customized-model" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| method") and "K=1" in ln)
    assert "delta-loss ↑ K=1" in header and "loss ↓ K=4" in header
    unl = next(ln for ln in md.splitlines() if ln.startswith("| unlearning") and "**" in ln and "0.8" in ln)
    assert f"**{np.mean(LKO[('unlearning', 1)]):.4g} ± " in unl
    rnd = next(ln for ln in md.splitlines() if ln.startswith("| random"))
    assert "**" not in rnd
    pix = next(ln for ln in md.splitlines() if ln.startswith("| pixel"))
    assert pix.count("**") == 4  # best recall@10 and ap on object, not on style


def test_csv_is_the_long_summary(run_dir):
    text = leaderboard.render([run_dir], "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 * 2 * 2 + 2 * 2 * 2  # methods × groups × metrics, per benchmark
    r = next(r for r in rows if r["benchmark"] == "leave-k-out" and r["method"] == "random" and r["group"] == "K=4"
             and r["metric"] == "delta-loss")
    assert float(r["mean"]) == pytest.approx(0.4) and r["group.K"] in ("4", "4.0") and r["best"] == "False"


def test_html_page_is_self_contained_with_every_table_figure_and_provenance(run_dir, tmp_path):
    out = tmp_path / "board.html"
    assert main(["leaderboard", str(run_dir), "--format", "html", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for bench in ("leave-k-out", "customized-model"):
        assert f'id="table-{bench}"' in page
    assert page.count("<img ") == 2 and page.count("data:image/png;base64,") == 2
    assert not re.search(r'(src|href)="(https?:|//)', page)  # nothing fetched from elsewhere
    assert "<strong>" in page and "Provenance" in page and "f" * 16 in page  # dataset fingerprint
    # every row of every table appears
    for method in ("unlearning", "random", "pixel"):
        assert f"<th>{method}</th>" in page


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


def test_renders_without_torch(run_dir):
    code = ("import sys; from genattr.harness import leaderboard; "
            f"leaderboard.render([{str(run_dir)!r}], 'html'); leaderboard.render([{str(run_dir)!r}], 'md'); "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]


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
    assert len(small["methods"]) == 2 and all(m.startswith("m@") for m in small["methods"])
    assert sorted(r["mean"] for r in small["summary"]) == [5.0, 9.0]
    tiny = doc["benchmarks"][0]["summary"]
    assert tiny[0]["mean"] == 1.5 and tiny[0]["group"] == "all" and not tiny[0]["best"]  # nothing to compare


def test_wide_boards_split_into_several_markdown_tables(tmp_path):
    metrics = {f"m{i}": float(i) for i in range(6)}
    hib = {k: True for k in metrics}
    rows = [_row("wide", meth, f"{meth}/{s}/q{q}", {"split": s}, {k: v + q for k, v in metrics.items()}, hib)
            for meth in ("a", "b") for s in ("x", "y") for q in range(2)]
    _write(tmp_path / "wide", rows)
    md = leaderboard.render([tmp_path / "wide"], "md")
    headers = [ln for ln in md.splitlines() if ln.startswith("| method")]
    per_table = leaderboard.MD_MAX_COLUMNS // 2
    assert len(headers) == -(-6 // per_table)
    assert all(h.count("|") - 2 <= leaderboard.MD_MAX_COLUMNS for h in headers)
    assert "m0 ↑ x" in headers[0] and "m5 ↑ y" in headers[-1]


def test_a_column_where_every_method_ties_has_no_best(tmp_path):
    hib = {"recall": True}
    rows = [_row("t", m, f"{m}/q{q}", {}, {"recall": 0.0}, hib) for m in ("a", "b") for q in range(2)]
    _write(tmp_path / "tie", rows)
    doc = json.loads(leaderboard.render([tmp_path / "tie"], "json"))
    assert [r["best"] for r in doc["benchmarks"][0]["summary"]] == [False, False]
