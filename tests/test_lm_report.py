"""`mechtrunc lm study RUN` and the report page of a language-model run, on the nano
run of conftest (copied: the fixture is shared by the session)."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from mechtrunc.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

N = 16  # prompts per set: small, the numbers are checked against study_run's tables, not for meaning
STUDY_SECTIONS = ["config", "training", "checkpoints", "curves", "order", "grid", "best", "where"]
BARE_SECTIONS = ["config", "training", "checkpoints", "study"]


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("study", "report.html", "state.pt"))
    return dst


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def studied(nano_run, tmp_path_factory):
    """A copy of the nano run studied through the CLI with ``--n 16 --json``: (run, JSON, seconds)."""
    run = _copy_run(nano_run[0], tmp_path_factory.mktemp("lm_report") / "nano")
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(buf):
        assert main(["lm", "study", str(run), "--n", str(N), "--json", "--no-progress"]) == 0
    return run, json.loads(buf.getvalue()), time.perf_counter() - t0


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def test_study_json_equals_study_run_tables(studied):
    from mechtrunc.studies.lm import study_run

    run, rep, _ = studied
    tables = study_run(run, n_prompts=N)  # the cache: nothing is recomputed
    summary = tables["summary"].iloc[0]
    assert set(rep["summary"]) == set(summary.index)
    for key, value in rep["summary"].items():
        want = _num(summary[key].item() if hasattr(summary[key], "item") else summary[key])
        assert value == want, key
    assert rep["n_prompts"] == N and rep["loss_budget"] == 0.1 and rep["study_dir"] == str(run / "study")
    best = tables["best"]
    assert [(t["checkpoint"], t["task"]) for t in rep["truncations"]] == [("final", "ioi"), ("final", "factual")]
    for t in rep["truncations"]:
        rows = best[(best["checkpoint"] == t["checkpoint"]) & (best["task"] == t["task"])].set_index("metric")
        if t["baseline"]:
            assert rows.empty and t["metrics"] == {}
            continue
        assert t["intervention"] == rows["intervention"].iloc[0]
        assert (t["layer"], t["matrix"], t["keep"]) == (int(rows["layer"].iloc[0]), rows["matrix"].iloc[0],
                                                        float(rows["keep"].iloc[0]))
        assert set(t["metrics"]) == set(rows.index) >= {"p_answer", "p_the"}
        for metric, m in t["metrics"].items():
            for k in ("full", "intervened", "change", "ci_low", "ci_high"):
                assert m[k] == rows.loc[metric, k], (metric, k)


def test_study_rerun_reads_the_cache(studied, capsys):
    run, rep, first = studied
    tables = sorted((run / "study").glob("*.csv"))
    assert {p.name for p in tables} >= {"curves.csv", "grid_final.csv", "best_final_ioi.csv", "where_the.csv"}
    stamps = {p.name: p.stat().st_mtime_ns for p in tables}
    t0 = time.perf_counter()
    code, out, err = _run(["lm", "study", str(run), "--n", str(N), "--json", "--no-progress"], capsys)
    again = time.perf_counter() - t0
    assert code == 0, err
    assert json.loads(out) == rep
    assert {p.name: p.stat().st_mtime_ns for p in sorted((run / "study").glob("*.csv"))} == stamps  # not rewritten
    assert again < max(3.0, first / 2), (again, first)
    # the human summary: the order of learning and the chosen truncations with their intervals
    code, out, err = _run(["lm", "study", str(run), "--n", str(N)], capsys)
    assert code == 0, err
    s = rep["summary"]
    the = rf"step {int(s['step_the'])}\b" if s["step_the"] is not None else "never"
    assert re.search(r"step_the\s+" + the, out), out
    for key in ("step_fact_beats_the", "step_ioi_beats_the", "step_io_beats_s", "step_competition"):
        assert key in out
    ioi = rep["truncations"][0]
    if not ioi["baseline"]:
        m = ioi["metrics"]["p_answer"]
        assert (f"P(answer) {m['full']:.4f} -> {m['intervened']:.4f} ({m['change']:+.4f}, 95% CI "
                f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}])") in out
        assert f"layer {ioi['layer']} {ioi['matrix']} keep {ioi['keep']:g}" in out
    assert f"mechtrunc report {run}" in out


def test_study_bad_usage_exits_2_naming_the_path(studied, tmp_path, capsys):
    run, _, _ = studied
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run / "run.json", unfinished)
    not_a_run = tmp_path / "other"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("x")
    cases = [
        ([str(tmp_path / "missing")], f"{tmp_path / 'missing'} does not exist"),
        ([str(run / "run.json")], f"{run / 'run.json'} is a file, not a directory"),
        ([str(not_a_run)], f"{not_a_run} is not a mechtrunc lm run directory (no run.json)"),
        ([str(unfinished)], f"{unfinished} has not finished training (no step200/)"),
        ([str(run), "--n", "8"], f"{run / 'study'} holds a study with other settings (n_prompts: {N} there, 8 here)"),
        ([str(run), "--n", "0"], "argument --n: expected a positive integer, got '0'"),
    ]
    for args, message in cases:
        code, out, err = _run(["lm", "study", *args, "--no-progress"], capsys)
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err, err
        assert err.count("\n") <= 3 and out == "", err  # one message (argparse adds its usage line)
    assert not (unfinished / "study").exists()


def test_report_of_a_studied_run(studied, tmp_path, capsys):
    """`mechtrunc report RUN`: every section, the study's own numbers; in headless Chromium with
    the network blocked: no console error, every chart drawn, the page not blank."""
    from test_report import _browser_or_fail

    from mechtrunc.report import detect, read_result
    from mechtrunc.report.browser import check_page

    run, rep, _ = studied
    assert detect(run) == "lm" and "language-model run" in read_result(run)._repr_html_()
    out = tmp_path / "lm.html"
    code, printed, err = _run(["report", str(run), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert printed.startswith("lm report (8 sections")
    html = out.read_text()
    for text in ("Language-model run report: nano", "Learning curves", "Order of learning", "Truncation grid",
                 "Chosen truncations", "Where the &#x27; the&#x27; association lives",
                 f"mechtrunc lm study {run} --n {N}", f"mechtrunc report {run} --out {out}"):
        assert text in html, text
    assert "No study yet" not in html
    assert "</code> is missing" not in html
    curves = pd.read_csv(run / "study" / "curves.csv")
    assert f"<td>step_the</td><td>{int(rep['summary']['step_the'])}</td>" in html
    assert f"{len(set(curves['step']))} checkpoints" in html
    ioi = rep["truncations"][0]
    if not ioi["baseline"]:
        m = ioi["metrics"]["p_the"]
        assert f"{m['change']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]" in html
    where = pd.read_csv(run / "study" / "where_the.csv")
    assert f"{where['p_the_mlp_removed'].iloc[0]:.4g}" in html

    _browser_or_fail()
    res = check_page(out, screenshot=tmp_path / "lm.png")
    assert res.blocked == [] and res.failed == [], (res.blocked, res.failed)
    assert res.console_errors == [], res.console_errors
    assert res.sections == ["about"] + STUDY_SECTIONS
    assert len(res.charts) == 4  # training loss, learning curves, grid, chosen truncations
    for chart_id, w, h, n_nodes in res.charts:
        assert w >= 600 and h >= 250 and n_nodes > 20, (chart_id, w, h, n_nodes)
    assert res.screenshot_std > 10, "the screenshot is (nearly) blank"


def test_report_without_a_study_says_how_to_make_it(nano_run, tmp_path):
    import mechtrunc as mt

    run = _copy_run(nano_run[0], tmp_path / "nano")
    rep = mt.write_report(run, progress=False)
    assert [s.id for s in rep.sections] == BARE_SECTIONS
    html = rep.path.read_text()
    assert "No study yet" in html and f"mechtrunc lm study {run}" in html
    assert rep.meta["prompts"] == f"no study yet (mechtrunc lm study {run})"
    assert not (run / "study").exists()  # the report never starts a study


def test_report_of_an_interrupted_study_and_an_unfinished_run(studied, nano_run, tmp_path):
    import mechtrunc as mt

    run = _copy_run(studied[0], tmp_path / "partial")
    shutil.copytree(studied[0] / "study", run / "study")
    (run / "study" / "where_the.csv").unlink()  # the study stopped before its last table
    rep = mt.write_report(run, progress=False)
    assert [s.id for s in rep.sections] == STUDY_SECTIONS
    html = rep.path.read_text()
    assert "study/where_the.csv</code> is missing" in html and f"mechtrunc lm study {run} --n {N}" in html

    half = tmp_path / "training"
    half.mkdir()
    for name in ("run.json", "step0", "step1", "step2"):
        src = nano_run[0] / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, half / name)
    rep = mt.write_report(half, progress=False)
    html = rep.path.read_text()
    assert "Incomplete run." in html and "the last checkpoint is step 2 of 200" in html
    assert [s.id for s in rep.sections] == BARE_SECTIONS


def test_report_bad_lm_directories(studied, tmp_path, capsys):
    run = studied[0]
    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(run / "run.json", empty)
    for path, message in ((run / "study", "is the study folder of a language-model run"),
                          (empty, "has not saved a single checkpoint yet")):
        code, _, err = _run(["report", str(path), "--out", str(tmp_path / "r.html"), "--no-progress"], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
