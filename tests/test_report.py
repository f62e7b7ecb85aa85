"""HTML reports: reading result directories, the three report kinds, `mechtrunc report` errors,
and (marker ``browser``) each report opened in headless Chromium with the network blocked.

Fixtures build tiny results once per module: a toy run trained for a few steps, a truncation
study and a checkpoint study of a small recall-trained GPT-NeoX saved on disk."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

MB = 1_000_000


# ----------------------------------------------------------------------------------------
# fixtures: one result directory of each kind
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    from mechtrunc.models.toy_training import preset, train

    out = tmp_path_factory.mktemp("toy") / "run"
    cfg = preset("cpu", d_model=16, seq_len=32, steps=40, eval_every=20, batch_size=16, test_size=32, seed=0)
    train(cfg, out_dir=out, progress=False)
    return out


def _neox(out: Path, steps: int):
    from mechtrunc.models.testing import train_neox_recall
    from mechtrunc.tasks.recall import RecallConfig

    return train_neox_recall(out, task_config=RecallConfig(alpha=0.5, seq_len=24), n_layers=2, d_model=32,
                             n_heads=2, steps=steps, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    """A 2-layer GPT-NeoX trained 20 steps on recall, saved with save_pretrained, as a bridge,
    with 16 clean test items."""
    from mechtrunc.models.hf import load_model

    d = tmp_path_factory.mktemp("neox") / "model"
    _, task, _ = _neox(d, 20)
    prompts = task.test_set(8, seed=1).to_prompts()
    return d, load_model(d), prompts


@pytest.fixture(scope="module")
def truncation_dir(neox, tmp_path_factory) -> Path:
    from mechtrunc.studies import summarise_study, truncation_study

    model_dir, bridge, prompts = neox
    out = tmp_path_factory.mktemp("trunc") / "study"
    df = truncation_study(bridge, prompts, matrices=("mlp.W_in", "mlp.W_out"), keeps=(1, 0.5, 0.1), out=out,
                          progress=False)
    summarise_study(bridge, prompts, df, metric="logit_diff_noise", out_dir=out)
    return out


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    from mechtrunc import Truncate
    from mechtrunc.models.hf import load_model
    from mechtrunc.studies import checkpoint_study

    root = tmp_path_factory.mktemp("ckpt")
    steps = [0, 2, 8]
    for s in steps:  # training is a pure function of the seed: "step s" = s steps from scratch
        _, task, _ = _neox(root / f"step{s}", s)
    prompts = task.test_set(8, seed=1).to_prompts()
    out = root / "study"
    checkpoint_study(lambda s: load_model(root / f"step{s}"), steps, prompts,
                     truncation=Truncate("mlp.W_out", layer=1, keep=0.1), out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory) -> Path:
    import mechtrunc as mt

    out = tmp_path_factory.mktemp("memory") / "run"
    run = mt.train_memory(mt.MemoryConfig(n_inputs=16, n_outputs=16, d=32, alpha=0.3),
                          mt.MemoryTrainConfig(steps=200, lr=16.0, log_every=10, spectrum_steps=(0, 10, 50, 200)))
    run.save(out)
    return out


@pytest.fixture(scope="module")
def reports(toy_dir, truncation_dir, checkpoint_dir, memory_dir, neox):
    import mechtrunc as mt

    _, bridge, prompts = neox
    return {
        "memory": mt.write_report(memory_dir, progress=False),
        "toy": mt.write_report(toy_dir, progress=False),
        "truncation": mt.write_report(truncation_dir, model=bridge, prompts=prompts, progress=False),
        "checkpoints": mt.write_report(checkpoint_dir, progress=False),
    }


# ----------------------------------------------------------------------------------------
# content, size, offline
# ----------------------------------------------------------------------------------------
EXPECTED_SECTIONS = {
    "toy": ["config", "training", "truncation", "components", "attribution", "causal", "attention", "token-probs"],
    "truncation": ["study", "heatmaps", "best", "attribution", "examples"],
    "checkpoints": ["curves", "intervals", "table"],
    "memory": ["config", "training", "spectrum", "truncation"],
}
KINDS = ["toy", "truncation", "checkpoints", "memory"]


@pytest.mark.parametrize("kind", KINDS)
def test_report_sections_size_and_offline(reports, kind):
    rep = reports[kind]
    html = rep.path.read_text()
    assert [s.id for s in rep.sections] == EXPECTED_SECTIONS[kind]
    assert rep.path.stat().st_size < 10 * MB
    # the JavaScript is inlined once: plotly.js once, circuitsvis' bundle at most once
    assert html.count("plotly.js v") == 1
    assert html.count("var CircuitsVis=") == (0 if kind in ("checkpoints", "memory") else 1)
    # nothing is loaded from elsewhere: no element with a src/href to http(s) (outside the inlined
    # libraries' code), no CDN, no web font; the browser test checks the requests themselves
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"""(src|href)\s*=\s*["']https?:""", markup)
    assert "unpkg.com" not in html and "fonts.googleapis" not in html and "@font-face" not in html
    for key in ("model", "revision", "prompts", "seed", "mechtrunc version", "report made by"):
        assert key in rep.meta, key
    assert "Some sections are missing" not in html
    assert "iframe srcdoc" in rep._repr_html_()


def test_toy_report_numbers_match_the_run(reports, toy_dir):
    """The report's final-metrics table and attribution come from the run and mt.attribute."""
    import mechtrunc as mt

    cfg = json.loads((toy_dir / "config.json").read_text())
    html = reports["toy"].path.read_text()
    acc = cfg["final"]["full"]["accuracy"]
    assert f"{acc:.4g}" in html
    model, tc, task = mt.load_run(toy_dir)
    prompts = task.test_set(tc.test_size, seed=tc.seed + 10_000).to_prompts()
    ch = mt.attribute_change(model, prompts, mt.Ablate("mlp", layer=1))
    total = ch[ch["kind"] == "total"].iloc[0]
    assert f"{total['clean']:.4g}" in html and f"{total['intervened']:.4g}" in html
    assert reports["toy"].meta["seed"] == 0


def test_truncation_report_best_and_examples(reports, truncation_dir):
    rep = reports["truncation"]
    html = rep.path.read_text()
    best = json.loads((truncation_dir / "best.json").read_text())["best"]
    assert f"layer {best['layer']} <code>{best['matrix']}</code> keep {best['keep']:g}" in html
    assert html.count("top 5</th>") == 2 * 3  # full and truncated, for 3 example prompts
    assert html.count('data-component="AttentionHeads"') == 3


def test_truncation_report_shows_paired_intervals(reports, truncation_dir):
    """With the study's per-item table the best configuration and the main table carry the
    change against the full model and its paired bootstrap interval, n_boot stated; the numbers
    are those of mechtrunc.analysis.selection.change_intervals on the stored items."""
    from mechtrunc.report.readers import read_result
    from mechtrunc.report.truncation import change_intervals_of
    from mechtrunc.analysis.selection import change_intervals
    from mechtrunc.studies import read_items

    html = reports["truncation"].path.read_text()
    assert "paired bootstrap interval" in html and "1000 resamples" in html
    assert "<th>ci_low</th>" in html and "<th>ci_high</th>" in html and "<th>change logit_diff_noise</th>" in html
    res = read_result(truncation_dir)
    iv = change_intervals_of(res, "logit_diff_noise")
    best = json.loads((truncation_dir / "best.json").read_text())["best"]
    from mechtrunc.core.results import find_row

    row = find_row(res.table, best)
    i = list(res.table.index).index(row.name)
    assert f"{iv['ci_low'].iloc[i]:.4g}" in html and f"{iv['ci_high'].iloc[i]:.4g}" in html
    items = read_items(truncation_dir)
    one = lambda c: {"logit_diff_noise": torch.tensor(items[items["config"] == c].sort_values("item")[
        "logit_diff_noise"].to_numpy())}
    ref = change_intervals(one(0), one(i), ["logit_diff_noise"], n_boot=1000).iloc[0]
    assert iv["change"].iloc[i] == pytest.approx(ref["change"], abs=1e-9)
    # one item per sequence here: the sequence bootstrap is the item bootstrap
    if items[items["config"] == 0]["sequence"].is_unique and items[items["config"] == 0]["sequence"].is_monotonic_increasing:
        assert (iv["ci_low"].iloc[i], iv["ci_high"].iloc[i]) == pytest.approx((ref["ci_low"], ref["ci_high"]), abs=1e-9)


def test_checkpoint_report_crossover(reports, checkpoint_dir):
    import pandas as pd

    from mechtrunc.report.checkpoints import crossover_steps

    df = pd.read_csv(checkpoint_dir / "checkpoints.csv")
    cross = crossover_steps(df, "noise")
    for variant, sub in df.groupby("variant"):
        above = sub.sort_values("step")
        above = above[above["p_answer"] > above["p_noise"]]
        want = int(above["step"].iloc[0]) if len(above) else None
        got = cross.set_index("variant").iloc[:, 0][variant]
        assert (got is None or pd.isna(got)) if want is None else int(got) == want
    assert sorted(reports["checkpoints"].meta) and "callable" not in str(reports["checkpoints"].meta["model"])


def test_checkpoint_report_intervals(reports, checkpoint_dir):
    """The intervals section's numbers are step_intervals of the study's per-item values: each
    P(answer) the table's, inside its interval, and the paired change's interval that of the
    per-prompt differences."""
    import numpy as np
    import pandas as pd
    import torch

    from mechtrunc.core.metrics import bootstrap_intervals
    from mechtrunc.studies import read_checkpoint_items, step_intervals

    df = pd.read_csv(checkpoint_dir / "checkpoints.csv")
    items = read_checkpoint_items(checkpoint_dir)
    iv = step_intervals(items, "p_answer")
    np.testing.assert_allclose(iv["value"], df["p_answer"], atol=1e-6)
    assert ((iv["low"] <= iv["value"]) & (iv["value"] <= iv["high"]) & (iv["high"] > iv["low"])).all()
    at8 = items[items.step == 8]
    full = at8[at8.variant == "full"].sort_values("item")
    trunc = at8[at8.variant == "truncated"].sort_values("item")
    diff = torch.tensor(trunc["p_answer"].to_numpy() - full["p_answer"].to_numpy())[None]
    lo, hi = bootstrap_intervals(diff, n_boot=1000, seed=0, clusters=torch.tensor(full["sequence"].to_numpy()))
    r = iv[(iv.step == 8) & (iv.variant == "truncated")].iloc[0]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((float(lo[0]), float(hi[0])), abs=1e-12)
    html = reports["checkpoints"].path.read_text()
    assert f"{r['change']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]" in html
    assert "Error bars on P(answer): 95% bootstrap intervals" in html


def test_study_report_without_a_loadable_model(truncation_dir, tmp_path):
    """No model: the table sections render, the page says why the others are missing."""
    import mechtrunc as mt

    d = tmp_path / "study"
    shutil.copytree(truncation_dir, d)
    (d / "attribution_change.csv").unlink()
    (d / "report.html").unlink(missing_ok=True)
    rep = mt.write_report(d, model=str(tmp_path / "no-such-model"), progress=False)
    html = rep.path.read_text()
    assert "Some sections are missing" in html and "no-such-model" in html
    assert [s.id for s in rep.sections] == EXPECTED_SECTIONS["truncation"]
    assert "heatmaps-fig" in html


def test_cli_study_report_reads_model_from_study_json(truncation_dir, tmp_path, capsys):
    """study.json records the model directory: it is loaded; the recall prompts are not a named
    task, so the example section says how to give them, and the rest renders."""
    from mechtrunc.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(truncation_dir), "--out", str(out), "--no-progress"]) == 0
    html = out.read_text()
    assert "does not record the prompt task" in html
    assert "source: attribution_change.csv" in html  # the study's own file, not recomputed
    assert f"mechtrunc report {truncation_dir} --out {out}" in html
    assert "sections, " in capsys.readouterr().out


def test_interrupted_study_is_marked_incomplete(truncation_dir, tmp_path, capsys):
    from mechtrunc.cli import main

    d = tmp_path / "study"
    d.mkdir()
    shutil.copy(truncation_dir / "study.json", d)
    lines = (truncation_dir / "rows.jsonl").read_text().splitlines()
    (d / "rows.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # cut mid-line
    assert main(["report", str(d), "--out", str(tmp_path / "r.html"), "--no-progress"]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Incomplete study" in html and "3 finished rows" in html
    assert "paired bootstrap interval" not in html  # no per-item values were copied: no intervals
    # with the finished rows' item shards (written before each row), the partial table has intervals
    shutil.copytree(truncation_dir / "item_shards", d / "item_shards")
    assert main(["report", str(d), "--out", str(tmp_path / "r2.html"), "--no-progress"]) == 0
    html = (tmp_path / "r2.html").read_text()
    assert "Incomplete study" in html and "paired bootstrap interval" in html


def test_interrupted_checkpoint_study_from_shards(checkpoint_dir, tmp_path):
    """Per-checkpoint Parquet shards without the merged table: reported, marked incomplete."""
    import pandas as pd

    import mechtrunc as mt

    d = tmp_path / "study"
    (d / "shards").mkdir(parents=True)
    shutil.copy(checkpoint_dir / "study.json", d)
    df = pd.read_csv(checkpoint_dir / "checkpoints.csv")
    for step in (0, 2):
        df[df["step"] == step].to_parquet(d / "shards" / f"step{step}.parquet")
    (d / "shards" / "step8.parquet").write_bytes(b"PAR1 cut")  # the one being written when killed
    rep = mt.write_report(d, progress=False)
    html = rep.path.read_text()
    assert "Incomplete study" in html and "2 finished checkpoints" in html
    assert "INCOMPLETE" in rep.meta["status"]
    assert len(mt.report.read_result(d).table) == 4  # 2 finished steps x (full, truncated)


def test_register_section_adds_a_section(checkpoint_dir):
    from mechtrunc.report import SECTIONS, Section, build_report, read_result, register_section

    def extra(ctx):
        return Section("extra", "Extra analysis", parts=[f"<p>{len(ctx.result.table)} rows</p>"])

    register_section("checkpoints", extra)
    try:
        rep = build_report(read_result(checkpoint_dir), progress=False)
        assert [s.id for s in rep.sections] == EXPECTED_SECTIONS["checkpoints"] + ["extra"]
        assert "<p>6 rows</p>" in rep.html()  # 3 steps x (full, truncated)
    finally:
        SECTIONS["checkpoints"].remove(extra)
    with pytest.raises(ValueError, match="unknown report kind 'nope'"):
        register_section("nope", extra)


def test_report_objects_render_in_notebooks(truncation_dir, checkpoint_dir, toy_dir):
    from mechtrunc.report import read_result

    for d, word in ((truncation_dir, "truncation study"), (checkpoint_dir, "checkpoint study"), (toy_dir, "toy run")):
        r = read_result(d)
        assert word in r._repr_html_() and "<table" in r._repr_html_()


# ----------------------------------------------------------------------------------------
# bad input: exit 2, a clear message, no traceback
# ----------------------------------------------------------------------------------------
def _run(argv, capsys):
    from mechtrunc.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err + (captured.out if code == 0 else "")


def test_report_help(capsys):
    code, _ = _run(["report", "--help"], capsys)
    assert code == 0


def test_report_bad_input(tmp_path, truncation_dir, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    f = tmp_path / "file.csv"
    f.write_text("a,b\n")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(truncation_dir / "study.json", half)  # started, no row finished
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "study.json").write_text("{cut")
    cases = [
        ([str(tmp_path / "empty")], "holds none of the known results"),
        ([str(f)], "file.csv is not a directory; give a run or study directory"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(half)], "has not finished a single row"),
        ([str(bad_json)], "is not readable JSON"),
        ([str(truncation_dir), "--out", str(tmp_path)], "is a directory"),
    ]
    for args, message in cases:
        code, err = _run(["report", *args, "--no-progress"], capsys)
        assert code == 2, args
        assert message in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------------------
# in a real browser, network blocked
# ----------------------------------------------------------------------------------------
def _browser_or_fail():
    """The browser tests run wherever Chromium is installed; in CI (CI=true) a missing browser
    or Playwright is a failure, not a skip (.ci/run installs both)."""
    from mechtrunc.report.browser import find_chromium

    problem = None
    try:
        import playwright  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem is None and find_chromium() is None:
        problem = "Chromium is not installed (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run in CI: {problem}")
        pytest.skip(problem)


MIN_VIEW = {"AttentionHeads": (400, 150), "ColoredTokens": (200, 12)}


def test_memory_report_numbers_match_the_run(reports, memory_dir):
    import mechtrunc as mt

    html = reports["memory"].path.read_text()
    model = mt.LinearMemory.load(memory_dir)
    spec = mt.memory.spectrum(model)
    i = mt.memory.noise_component(spec)
    removed = mt.memory.clean_metrics(model, mt.RemoveComponents("W", indices=[i]))
    assert f"remove component {i} (noise-aligned)" in html
    assert f"{removed['p_noise']:.4g}" in html  # the table shows the library's own numbers
    assert i == 0  # the trained memory's noise association is its top singular component


@pytest.mark.browser
@pytest.mark.parametrize("kind", KINDS)
def test_report_renders_offline_in_chromium(reports, kind, tmp_path):
    _browser_or_fail()
    from mechtrunc.report.browser import check_page

    rep = reports[kind]
    res = check_page(rep.path, screenshot=tmp_path / f"{kind}.png")
    assert res.blocked == [], f"requests tried to leave the page: {res.blocked}"
    assert res.failed == [], f"failed requests: {res.failed}"
    assert res.console_errors == [], res.console_errors
    assert res.sections == ["about"] + EXPECTED_SECTIONS[kind]
    n_figs = sum(len(s.figures) for s in rep.sections)
    assert len(res.charts) == n_figs > 0
    for chart_id, w, h, n_nodes in res.charts:  # every plotly chart drew its svg at the set size
        assert w >= 600 and h >= 250 and n_nodes > 20, (chart_id, w, h, n_nodes)
    n_views = sum(isinstance(p, __import__("mechtrunc").report.CircuitsView) for s in rep.sections for p in s.parts)
    assert len(res.views) == n_views
    for view_id, comp, w, h, n_nodes, canvas in res.views:  # every circuitsvis view built its DOM
        min_w, min_h = MIN_VIEW.get(comp, (100, 10))
        assert w >= min_w and h >= min_h and n_nodes >= 5, (view_id, comp, w, h, n_nodes)
        if comp == "AttentionHeads":  # the zoomed pattern was drawn, not just the thumbnails
            assert canvas > 150, (view_id, canvas)
    assert res.screenshot_std > 10, "the screenshot is (nearly) blank"


@pytest.mark.browser
def test_report_figures_save_as_svg(reports, tmp_path):
    """Every chart can be saved for a paper (plotly static export through kaleido and Chromium)."""
    _browser_or_fail()
    rep = reports["checkpoints"]
    paths = rep.save_figures(tmp_path, "svg")
    assert [p.name for p in paths] == [f"{k}.svg" for k in rep.figures]
    svg = paths[0].read_text()
    assert svg.startswith("<svg") and "P(answer), full" in svg


def test_demo_ends_with_the_report(tmp_path, monkeypatch, capsys):
    """`mechtrunc demo` (make demo) writes the toy run's report and prints its path; the cpu
    preset is shrunk here so the test takes seconds."""
    import mechtrunc.models.toy_training as training
    from mechtrunc.cli import main

    real = training.preset
    monkeypatch.setattr(training, "preset", lambda name, **kw: real(
        name, **{**kw, "d_model": 16, "seq_len": 32, "steps": 20, "eval_every": 10, "batch_size": 8, "test_size": 16}))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"Report: {(out / 'report.html').resolve()}"
    assert "mechtrunc demo --out" in (out / "report.html").read_text()


def test_toy_truncation_section_intervals_are_paired_over_sequences(trained_toy):
    """Each change cell of the toy report's truncation table is the change against the full
    model with the paired interval over test sequences (all items of a sequence resampled
    together), computed here independently from the per-item values."""
    import torch

    import mechtrunc as mt
    from mechtrunc.core.metrics import bootstrap_intervals
    from mechtrunc.report.toy import N_BOOT, _truncation_grid

    model, _, prompts = trained_toy
    df = _truncation_grid(model, prompts, last=1)
    assert df["change of accuracy [95% CI]"].iloc[0] == ""  # the full model itself
    _, full = mt.evaluate(model, prompts, items=True)
    _, cut = mt.evaluate(model, prompts, mt.Ablate("mlp", layer=1), items=True)
    diff = (cut["p_noise"] - full["p_noise"]).double()[None]
    lo, hi = bootstrap_intervals(diff, n_boot=N_BOOT, seed=0, clusters=prompts.rows)
    want = f"{float(diff.mean()):+.3f} [{float(lo[0]):+.3f}, {float(hi[0]):+.3f}]"
    assert df["change of p_noise [95% CI]"].iloc[1] == want
    # clustering matters: the interval over sequences is wider than the naive item bootstrap
    lo_i, hi_i = bootstrap_intervals(diff, n_boot=N_BOOT, seed=0)
    assert float(hi[0] - lo[0]) > float(hi_i[0] - lo_i[0])
    assert len(torch.unique(prompts.rows)) < len(prompts)


def test_report_page_escapes_injected_markup():
    """The page templates escape every title, label, table cell and metadata value, and a value
    a section builder puts into its text with ``fragment``: an injected ``<script>`` stays text."""
    import pandas as pd

    from mechtrunc.report import Report, Section, html_table, note
    from mechtrunc.report.page import fragment

    bad = "<script>alert('x')</script>"
    label = fragment("<p>Best truncation: <code>{}</code>.</p>", f"L0 {bad}")
    sec = Section("s1", f"Section {bad}", intro=fragment("Metric <b>{}</b>", bad))
    sec.add(label, html_table(pd.DataFrame({bad: [1.5], "label": [bad]})), note(fragment("Not computed: {}", bad)))
    page = Report(f"Title {bad}", "toy", meta={"model": bad, bad: {"k": bad}}, sections=[sec], source=bad).html()
    assert "<script>alert" not in page and page.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") == 13  # each place once (the title twice)
    # the markup written in the code stays markup
    assert "<p>Best truncation: <code>L0 &lt;script&gt;" in page and "Metric <b>&lt;script&gt;" in page
    assert '<td class="num">1.5</td>' in page and '<div class="note note-info">Not computed: &lt;script&gt;' in page
    assert page.startswith("<!DOCTYPE html>\n<html lang='en'>") and page.endswith("</main></body></html>\n")
