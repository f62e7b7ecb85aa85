"""Each kind of study has one module that owns its directory: every file name is written in
that module alone (as a string in code; prose in docstrings and report text may mention it),
the studies hand it their results, and what it reads back equals what the study returned."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import mechtrunc as mt

pytestmark = pytest.mark.usefixtures("single_thread")

PACKAGE = Path(mt.__file__).parent

#: owner module -> the file and folder names it alone may write as a string in code
OWNERS = {
    "studies/store.py": ("study.json", "rows.jsonl", "items.parquet", "item_shards"),
    "studies/truncation_files.py": ("best.json", "attribution_change.csv", "attribution_change_by_layer.csv",
                                    "heldout.csv", "svd_cache", "heatmap_"),
    "studies/checkpoint_files.py": ("shards", "running", "checkpoints.png", "heldout_by_step.csv", "intervals.csv"),
    "studies/lm_files.py": ("curves.csv", "grid_final.csv", "grid_competition.csv", "attribution.csv",
                            "where_the.csv", "ledger.csv"),
    "studies/circuits.py": ("edge_shards", "ledger_shards", "nodes.parquet", "edges.parquet", "ledger.parquet"),
    "models/lm_run.py": ("run.json", "summary.json", "state.pt"),
}
#: names other kinds of run share, by their owners: a toy run and a linear-memory run keep a
#: ``history.csv`` of their own format, written and read where each run is
SHARED = {"history.csv": ("cli/memory.py", "models/lm_run.py", "models/memory.py", "models/toy_training.py",
                          "report/readers.py")}
#: table files composed by their owner from a stem (``write_tables``): written as a whole nowhere
COMPOSED = ("truncation.csv", "truncation.parquet", "checkpoints.csv", "checkpoints.parquet")


def _string_constants() -> dict[str, set[str]]:
    """Module (relative path) -> every string constant in its code, f-string pieces included."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[str(path.relative_to(PACKAGE))] = {node.value for node in ast.walk(ast.parse(path.read_text()))
                                               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return out


def test_each_study_file_name_is_written_in_its_owner_module_alone():
    constants = _string_constants()
    assert set(OWNERS) <= set(constants)
    for owner, names in OWNERS.items():
        for name in names:
            where = sorted(m for m, values in constants.items() if name in values)
            assert where == [owner], f"{name!r} is written in {where}, expected only in {owner}"
    for name in COMPOSED:
        where = sorted(m for m, values in constants.items() if name in values)
        assert where == [], f"{name!r} is written in {where}; its owner composes it from the table's stem"
    for name, owners in SHARED.items():
        where = sorted(m for m, values in constants.items() if name in values)
        assert where == sorted(owners), f"{name!r} is written in {where}, expected only in {sorted(owners)}"


def test_the_string_scan_sees_a_run_file_name_written_outside_its_owner(tmp_path):
    """The scan above finds a run file's name in an f-string or a path join, where the modules
    that read a run used to write them."""
    code = 'import json\nx = run / "summary.json"\ny = f"{run / \'run.json\'} is corrupt"\n'
    values = {node.value for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Constant)}
    assert {"summary.json", "run.json"} <= values


def _prompts(n=12):
    g = torch.Generator().manual_seed(n)
    tokens = torch.randint(0, 512, (n, 8), generator=g)
    return mt.PromptSet(tokens=tokens, rows=torch.arange(n).repeat_interleave(2), pos=torch.tensor([5, 7]).repeat(n),
                        answer=torch.randint(0, 512, (2 * n,), generator=g),
                        competitors=torch.randint(0, 512, (2 * n, 1), generator=g), competitor_names=("the",))


def test_truncation_directory_reads_back_what_the_study_returned(neox_bridge, tmp_path):
    """The owner's reader gives the returned table, items, summary and held-out choice back (the
    report renders what the study computed); an interrupted study's finished rows come back in
    the final table's types and values."""
    from mechtrunc.studies import Grid, heldout_configuration, summarise_study, truncation_study
    from mechtrunc.studies.truncation_files import TruncationDirectory

    prompts = _prompts()
    grid = dict(layers=(0, 1), matrices=("mlp.W_out",), keeps=(1, 0.5, 0.1))
    out = tmp_path / "study"
    df, items = truncation_study(neox_bridge, prompts, **grid, out=out, progress=False, return_items=True)
    summary = summarise_study(neox_bridge, prompts, df, "logit_diff_the", out, items=items)
    held = heldout_configuration(neox_bridge, prompts, Grid(**grid), metric="logit_diff_the", items=items,
                                 n_boot=50, out=out)
    assert held["path"] == out / "heldout.csv"
    assert held["mode"] == "engine"  # the grid mode: the engine evaluated the choice, as in the study's rows

    got = TruncationDirectory(out).read()
    assert got["incomplete"] is None
    pd.testing.assert_frame_equal(got["table"], df, check_dtype=False)
    pd.testing.assert_frame_equal(got["items"], items, check_dtype=False)
    assert got["best"] == json.loads(json.dumps(summary.best)) and got["best"]["best"]["metric"] == "logit_diff_the"
    assert list(got["attribution"]["component"]) == list(summary.attribution["component"])
    assert list(got["heldout"]["part"]) == ["select", "eval"]
    assert got["heldout"]["truncated"].to_numpy() == pytest.approx(held["table"]["truncated"].to_numpy())
    assert TruncationDirectory(out).read_best() == got["best"]

    # interrupted after 3 rows: the log's finished rows, typed as the final table, plus a cut line
    part = tmp_path / "part"
    part.mkdir()
    (part / "study.json").write_text((out / "study.json").read_text())
    lines = (out / "rows.jsonl").read_text().splitlines()
    (part / "rows.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:15])
    got = TruncationDirectory(part).read()
    assert "3 finished rows" in got["incomplete"] and got["items"] is None and got["best"] is None
    finished = got["table"].set_index("intervention")
    assert len(finished) == 3 and list(finished.columns) == [c for c in df.columns if c != "intervention"]
    expected = df.set_index("intervention").loc[finished.index]
    pd.testing.assert_frame_equal(finished, expected)  # the final table's types and values


def test_truncation_directory_without_rows_or_best_says_what_to_run(tmp_path):
    from mechtrunc.studies.truncation_files import TruncationDirectory

    with pytest.raises(ValueError, match="not finished a single row yet"):
        TruncationDirectory(tmp_path).read()
    with pytest.raises(ValueError, match=r"best\.json' does not exist: run `mechtrunc pythia truncate --out"):
        TruncationDirectory(tmp_path).read_best()


def test_a_study_kept_in_memory_writes_nothing(neox_bridge, tmp_path, monkeypatch):
    """``out=None`` everywhere: the owners' writers do nothing (no file appears anywhere)."""
    from mechtrunc.studies import Grid, heldout_configuration, truncation_study
    from mechtrunc.studies.checkpoints import step_intervals

    monkeypatch.chdir(tmp_path)
    prompts = _prompts()
    df, items = truncation_study(neox_bridge, prompts, layers=(0,), matrices=("mlp.W_in",), keeps=(0.5,),
                                 progress=False, return_items=True)
    held = heldout_configuration(neox_bridge, prompts, Grid(layers=(0,), matrices=("mlp.W_in",), keeps=(0.5,)),
                                 metric="logit_diff_the", items=items, n_boot=20)
    assert "path" not in held and len(df) == 2
    iv = step_intervals(items.assign(step=0), "p_answer", n_boot=20)
    assert len(iv) == 2 and list(tmp_path.iterdir()) == []


def test_lm_study_directory_refuses_other_settings_and_caches_tables(tmp_path):
    from mechtrunc.studies.lm_files import TABLES, LMStudyDirectory

    d = LMStudyDirectory(tmp_path)
    assert d.read() == (None, {})
    settings = {"n_prompts": 8, "keeps": [0.5], "loss_budget": 0.1, "prompt_format": "story"}
    d.check_settings(settings, format_key="prompt_format")
    calls = []
    compute = lambda: calls.append(1) or pd.DataFrame({"step": [0, 1], "p_answer": [0.25, 0.5]})  # noqa: E731
    first = d.table("curves", compute)
    again = d.table("curves", compute)
    assert calls == [1] and again.equals(first) and (tmp_path / "study" / TABLES["curves"]).is_file()
    d.table("attribution", pd.DataFrame)  # an empty table reads back empty
    read_settings, tables = d.read()
    assert read_settings == settings and set(tables) == {"curves", "attribution"} and tables["attribution"].empty
    with pytest.raises(ValueError, match=r"other settings \(n_prompts: 8 there, 9 here\)"):
        d.check_settings({**settings, "n_prompts": 9}, format_key="prompt_format")
    with pytest.raises(ValueError, match="prompts of another format"):
        d.check_settings({**settings, "prompt_format": "bare"}, format_key="prompt_format")
    with pytest.raises(ValueError, match="unknown study table 'nope'"):
        d.table("nope", compute)


def test_lm_run_directory_writes_and_reads_a_run_and_says_what_is_wrong(tmp_path):
    """The owner of a language-model run's directory: what it writes reads back, a run is
    finished with its last checkpoint and summary, and each way a directory is not a run gets one
    message (the command line, the study and the report all show these)."""
    from mechtrunc._choices import LM_RUN_FORMAT
    from mechtrunc.models.lm_run import LMRunDirectory, RunFormatError, checkpoint_dirs, run_dir, step_name, step_of

    run = LMRunDirectory(tmp_path / "run")
    run.dir.mkdir()
    assert not run.is_run() and run_dir(run.dir) is None
    with pytest.raises(ValueError, match=r"run is not a mechtrunc lm run directory \(no run.json\); train one"):
        run.read_run()
    run.write_run({"steps": 4})
    assert run.read_run() == {"format": LM_RUN_FORMAT, "config": {"steps": 4}} and run.read_config() == {"steps": 4}
    assert run.read_history() is None and run.read_summary() is None and run.steps() == []

    def save(d):
        d.mkdir()
        (d / "config.json").write_text("{}")

    for step in (0, 2, 4):
        run.write_checkpoint(step, save)
    run.write_checkpoint(4, save)  # rewritten whole, no step4.tmp left
    (run.dir / "step3").mkdir()  # no model: not a checkpoint to study, still a step directory
    run.write_state(lambda path: path.write_text("state"))
    assert sorted(p.name for p in run.dir.iterdir()) == ["run.json", "state.pt", "step0", "step2", "step3", "step4"]
    assert run.steps() == [0, 2, 4] and list(checkpoint_dirs(run.dir)) == [0, 2, 3, 4]
    assert step_name(200) == "step200" and step_of("step200") == 200 and step_of("step2.tmp") is None
    assert run_dir(run.dir / "step2") == run.dir == run_dir(run.dir) and run_dir(run.dir / "study") is None
    with pytest.raises(ValueError, match=r"step2 is one checkpoint of the run .*run: give the run directory"):
        LMRunDirectory(run.dir / "step2").read_run()

    run.write_history([(1, 2.5, 0.001, 64), (2, 2.25, 0.001, 128)])
    assert run.read_history().to_dict("list") == {"step": [1, 2], "loss": [2.5, 2.25], "lr": [0.001, 0.001],
                                                   "tokens": [64, 128]}
    assert not run.finished(4)
    with pytest.raises(ValueError, match=r"run has not finished training \(no step4/\); rerun `mechtrunc lm train`"):
        run.check_finished(4)
    run.write_summary({"steps": 4, "final_loss": 2.25})
    assert run.finished(4) and not run.finished(8) and run.read_summary() == {"steps": 4, "final_loss": 2.25}

    run.summary_path.write_text("{cut")
    with pytest.raises(ValueError, match=r"summary.json' is not readable JSON"):
        run.read_summary()
    run.history_path.write_text("")
    assert run.read_history().empty
    run.run_path.write_text("{cut")
    with pytest.raises(ValueError, match=r"run.json is not readable JSON of a run .*the run directory looks corrupt"):
        run.read_run()
    run.run_path.write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(RunFormatError, match=r"has format 'other/1', not 'mechtrunc-lm-run/1'"):
        run.read_run()
    run.run_path.write_text(json.dumps({"format": LM_RUN_FORMAT}))
    with pytest.raises(ValueError, match=r"has no 'config' entry; the run directory looks corrupt"):
        run.read_run()
