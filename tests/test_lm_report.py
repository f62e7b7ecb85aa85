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
STUDY_SECTIONS = ["config", "training", "checkpoints", "curves", "order", "grid", "best", "where", "ledger"]
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
    assert printed.startswith("lm report (9 sections")
    html = out.read_text()
    for text in ("Language-model run report: nano", "Learning curves", "Order of learning", "Truncation grid",
                 "Chosen truncations", "Where the &#39; the&#39; association lives",
                 "Margin ledger across checkpoints",
                 "logit(IO) - logit(' the') split into", "to_the_share / 2 = 0.35",
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
    assert len(res.charts) == 5  # training loss, learning curves, grid, chosen truncations, margin ledger
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


# ----------------------------------------------------------------------------------------
# a run on the noisy-recall corpus: its own tasks (recall, binding), threshold and ledger
# ----------------------------------------------------------------------------------------
RECALL_NOISE = 0.3


@pytest.fixture(scope="module")
def recall_studied(tmp_path_factory):
    """The nano model trained 100 steps on the ``recall`` corpus (recall_noise 0.3) and studied
    (8 prompts per set, keeps 0 and 0.5; about 20 s on one core): (run, study_run's tables)."""
    from mechtrunc.models.lm import corpus_preset, lm_preset, train_lm
    from mechtrunc.studies.lm import study_run

    run = tmp_path_factory.mktemp("lm_recall") / "recall"
    train_lm(lm_preset("nano", steps=100, corpus=corpus_preset("recall", recall_noise=RECALL_NOISE)), run,
             progress=False)
    return run, study_run(run, n_prompts=8, keeps=(0.0, 0.5))


def test_run_tasks_and_threshold_follow_the_corpus():
    from types import SimpleNamespace

    from mechtrunc.models.lm import corpus_preset
    from mechtrunc.report.lm import _the_threshold, prompt_names, run_tasks

    def run(corpus):
        return SimpleNamespace(config={"corpus": corpus.to_dict()})

    default, recall = run(corpus_preset("default")), run(corpus_preset("recall", recall_noise=0.4))
    over = run(corpus_preset("recall_overweighted"))
    assert run_tasks(default) == ("ioi", "factual", "generic") and _the_threshold(default) == 0.35
    assert prompt_names(default) == "IOI, factual and generic ' to'"
    assert run_tasks(recall) == ("recall", "binding") and _the_threshold(recall) == 0.2
    assert prompt_names(recall) == "recall and binding"
    # over-weighted: generic " to" sentences (to_the_share 1), never a noisy repeat: the generic prompts' rule
    assert run_tasks(over) == ("recall", "binding", "generic") and _the_threshold(over) == 0.5


def test_ledger_summary_names_the_mlp_that_moves_the_most():
    from mechtrunc.report.lm import ledger_summary

    rows = []
    for step, (rem0, rem1, dla0, dla1) in {0: (0.01, -0.02, 0.3, -0.1), 8: (0.2, -0.05, -0.6, 0.4)}.items():
        rows += [("L0.mlp", "mlp", 0, dla0), ("L1.mlp", "mlp", 1, dla1), ("total", "total", None, 1.5 + step),
                 ("full", "full_p_the", None, 0.4), ("full", "full_p_answer", None, 0.1 + step / 100),
                 ("L0.mlp", "mlp_removed_p_the", 0, rem0), ("L1.mlp", "mlp_removed_p_the", 1, rem1),
                 ("L0.mlp", "mlp_removed_p_answer", 0, -0.03), ("L1.mlp", "mlp_removed_p_answer", 1, 0.07)]
        rows = [(*r, step) if len(r) == 4 else r for r in rows]
    ledger = pd.DataFrame(rows, columns=["component", "kind", "layer", "value", "step"]).sample(frac=1, random_state=0)
    got = ledger_summary(ledger).set_index("step")
    assert list(got.index) == [0, 8]
    # step 0: L1's removal moves P(' the') most (|-0.02| > 0.01); L1 pushes ' the' hardest (-0.1)
    assert got.loc[0, "MLP removal moving P(' the') most"] == "L1.mlp"
    assert got.loc[0, "its change of P(' the')"] == -0.02 and got.loc[0, "its change of P(answer)"] == 0.07
    assert (got.loc[0, "MLP pushing ' the' most (direct)"], got.loc[0, "its direct contribution"]) == ("L1.mlp", -0.1)
    # step 8: L0 (a rise of 0.2 counts as much as a drop), and L0 pushes ' the' (-0.6)
    assert got.loc[8, "MLP removal moving P(' the') most"] == "L0.mlp"
    assert got.loc[8, "its change of P(' the')"] == 0.2 and got.loc[8, "its change of P(answer)"] == -0.03
    assert got.loc[8, "MLP pushing ' the' most (direct)"] == "L0.mlp"
    assert (got.loc[8, "margin"], got.loc[8, "P(answer)"], got.loc[8, "P(' the')"]) == (9.5, 0.18, 0.4)


def test_report_of_a_recall_run(recall_studied, tmp_path, capsys):
    """A noisy-recall run's report: the recall and binding tasks everywhere, the threshold
    recall_noise / 2 (what the study used), ' the' after 'went to', the margin ledger; in
    headless Chromium: no console error, every chart drawn."""
    from test_report import _browser_or_fail

    from mechtrunc.report import html_table
    from mechtrunc.report.browser import check_page
    from mechtrunc.report.lm import ledger_summary
    from mechtrunc.studies.lm import learning_steps

    run, tables = recall_studied
    out = tmp_path / "recall.html"
    code, printed, err = _run(["report", str(run), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    html = out.read_text()
    summary = tables["summary"].iloc[0]
    for text in ("recall (one city stated)", "binding (several cities stated)", "P(absent city)",
                 "P(other stated city)", f"recall_noise / 2 = {RECALL_NOISE / 2:g}", "<td>step_recall_beats_the</td>",
                 "<td>step_binding</td>", "held-out recall and binding prompts", "final checkpoint, recall/eval",
                 "final checkpoint, binding/eval", "after &#39;went to&#39; on the recall eval prompts",
                 "logit(answer) - logit(' the') split into", "Every checkpoint on the recall <i>eval</i>"):
        assert text in html, text
    for text in ("to_the_share / 2", "<td>step_ioi_beats_the</td>", "<td>step_fact_beats_the</td>", "ioi/eval",
                 "</code> is missing", "No study yet"):
        assert text not in html, text
    # the order of learning is the study's (threshold recall_noise / 2), which to_the_share / 2 would not give
    assert not math.isnan(summary["step_the"])
    assert f"<td>step_the</td><td>{int(summary['step_the'])}</td>" in html
    to_the = learning_steps(tables["curves"], the_threshold=0.7 / 2)["step_the"]
    assert to_the != summary["step_the"], "this run does not tell the two thresholds apart"
    # chosen truncations for recall and binding, with P(other city) where one beats the full model
    best = tables["best"]
    for task in ("recall", "binding"):
        assert f"<td>{task}</td>" in html
        rows = best[best["task"] == task].set_index("metric")
        if len(rows):
            m = rows.loc["p_other"]
            assert f"{m['change']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]" in html
    where = tables["where"]
    assert f"{where['p_the_mlp_removed'].iloc[0]:.4g}" in html
    # the ledger table: its row of the final checkpoint
    ledger = ledger_summary(tables["ledger"])
    assert list(ledger["step"]) == sorted(set(tables["curves"]["step"])) and ledger["step"].iloc[-1] == 100
    last_row = re.findall(r"<tr>.*?</tr>", html_table(ledger.tail(1)))[-1]
    assert last_row in html and "<td>L" in last_row, last_row

    _browser_or_fail()
    res = check_page(out, screenshot=tmp_path / "recall.png")
    assert res.blocked == [] and res.failed == [] and res.console_errors == [], (res.failed, res.console_errors)
    assert res.sections == ["about"] + STUDY_SECTIONS
    n_grids = len(tables["grid"]["checkpoint"].unique())
    bars = len(best) > 0
    # training loss, learning curves, a recall and a binding grid per grid checkpoint, the chosen truncations'
    # bars (when one beats the full model), the margin ledger
    assert len(res.charts) == 2 + 2 * n_grids + bars + 1, res.charts
    for chart_id, w, h, n_nodes in res.charts:
        assert w >= 600 and h >= 250 and n_nodes > 20, (chart_id, w, h, n_nodes)


def test_recall_report_without_a_ledger_says_how_to_add_it(recall_studied, tmp_path):
    import mechtrunc as mt

    run = _copy_run(recall_studied[0], tmp_path / "recall")
    shutil.copytree(recall_studied[0] / "study", run / "study")
    (run / "study" / "ledger.csv").unlink()
    rep = mt.write_report(run, progress=False)
    assert [s.id for s in rep.sections] == STUDY_SECTIONS
    html = rep.path.read_text()
    assert "study/ledger.csv</code> is missing: the study predates the margin ledger" in html
    assert f"mechtrunc lm study {run} --n 8" in html
    assert html.count("</code> is missing") == 1  # every other table is there
