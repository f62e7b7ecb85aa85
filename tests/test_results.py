"""The results schema (mechtrunc.core.results): metric columns, the keep key, row builders, the
default metric, and reading old result files with their old column names."""

import json

import pandas as pd
import pytest

from mechtrunc.core import results


def test_metric_columns_exclude_descriptors_timing_and_counts():
    row = results.configuration_row(3, "mlp.W_in", 0.5, 4, 8, {"n_items": 10, "p_answer": 0.25, "loss": 1.5},
                                    rule="round", svd="exact", mode="engine", intervention="x", seconds=0.1)
    df = pd.DataFrame([row]).assign(step=7, variant="best", path="fast")
    assert results.metric_columns(df) == ["p_answer", "loss"]
    assert results.check_metric(df, "loss") == "loss"
    with pytest.raises(ValueError, match=r"unknown metric 'keep'; metrics in this table: p_answer, loss"):
        results.check_metric(df, "keep")
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        results.check_metric(df, "nope")


def test_rows_have_the_table_columns_in_order():
    base = results.baseline_row({"p_answer": 0.5}, rule="round", svd="exact", mode="engine", seconds=1.0)
    conf = results.configuration_row(0, "mlp.W_out", 1.0, 8, 8, {"p_answer": 0.5}, rule="round", svd="exact",
                                     mode="engine", intervention="full rank", seconds=0.0)
    assert conf["identity"] is True and base["identity"] is False and base["matrix"] == "none"
    df = results.tidy_truncation(pd.DataFrame([base, conf]))
    assert list(df.columns) == [*results.CONFIG_COLUMNS, "p_answer", "path", "seconds"]
    assert df["path"].tolist() == ["reference", "identity"]  # a full-rank configuration reuses the baseline
    assert str(df["layer"].dtype) == "Int64" and df["layer"].isna().tolist() == [True, False]


def test_keep_key_and_find_row():
    assert results.keep_key(0.1 + 0.2) == results.keep_key(0.3) and results.keep_key(0.3) != results.keep_key(0.31)
    rows = [results.configuration_row(1, "mlp.W_in", k, 1, 8, {"p_answer": k}, rule="round", svd="exact",
                                      mode="hook", intervention="", seconds=0) for k in (0.3, 0.5)]
    df = pd.DataFrame(rows)
    assert results.find_row(df, {"layer": 1, "matrix": "mlp.W_in", "keep": 0.1 + 0.2})["p_answer"] == 0.3
    assert results.find_row(df, {"layer": 2, "matrix": "mlp.W_in", "keep": 0.3}) is None


def test_default_metric_prefers_the_logit_difference():
    assert results.default_metric(["accuracy", "p_answer", "logit_diff_the"]) == "logit_diff_the"
    assert results.default_metric(["accuracy", "logit_diff_noise", "p_answer"]) == "logit_diff_noise"
    assert results.default_metric(["accuracy", "p_answer"]) == "p_answer"
    with pytest.raises(ValueError, match="none of the default metrics"):
        results.default_metric(["loss"])


def test_legacy_names_are_upgraded():
    assert results.upgrade_name("ffn2_removed") == "last_ffn_removed"
    assert results.upgrade_name("ffn2_removed_p_answer") == "last_ffn_removed_p_answer"
    assert results.upgrade_name("ffn2_removedness") == "ffn2_removedness"
    assert results.upgrade_record({"ffn2_removed_accuracy": 0.5, "x": 1}) == {"last_ffn_removed_accuracy": 0.5, "x": 1}
    both = pd.DataFrame({"ffn2_removed_accuracy": [0.1], "last_ffn_removed_accuracy": [0.2]})
    assert results.upgrade_columns(both).to_dict("list") == {"last_ffn_removed_accuracy": [0.2]}
    # P(answer) has one name: the committed tables that said p_correct were rewritten once
    assert results.upgrade_name("p_correct") == "p_correct" and "p_correct" not in results.LEGACY_COLUMNS


def test_no_committed_table_names_the_old_p_correct():
    """Every committed table calls P(answer) ``p_answer`` (no reader renames ``p_correct``)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tables = sorted(root.glob("docs/**/*.csv"))
    assert len(tables) > 20
    old = [str(t.relative_to(root)) for t in tables
           if re.search(r"(?<![A-Za-z0-9])p_correct(?![A-Za-z0-9])", t.read_text().split("\n", 1)[0])]
    assert not old, old
    header = (root / "docs/data/paper_h100_history.csv").read_text().split("\n", 1)[0].split(",")
    assert {"full_p_answer", "last_ffn_removed_p_answer"} <= set(header)


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_read_table_reads_old_files_under_new_names(tmp_path, ext):
    old = pd.DataFrame({"step": [0, 10], "ffn2_removed_accuracy": [0.25, 0.75], "full_p_answer": [0.5, 0.625],
                        "ffn2_removed_p_noise": [0.5, 0.125]})
    path = tmp_path / f"history.{ext}"
    if ext == "csv":
        old.to_csv(path, index=False)
    elif ext == "parquet":
        pytest.importorskip("pyarrow")
        old.to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in old.to_dict("records")))
    df = results.read_table(path)
    assert list(df.columns) == ["step", "last_ffn_removed_accuracy", "full_p_answer", "last_ffn_removed_p_noise"]
    assert df["last_ffn_removed_accuracy"].tolist() == [0.25, 0.75] and df["full_p_answer"].tolist() == [0.5, 0.625]
    with pytest.raises(ValueError, match=r"unknown table extension '\.txt'"):
        results.read_table(tmp_path / "x.txt")


def test_layer_labels_are_0_based_and_old_1_based_files_still_read(tmp_path):
    """The toy's removed-FFN variant was ``ffn2_removed`` (the layer numbered 1-based); it is
    ``last_ffn_removed`` now, an old history reads under that name, and the committed tables hold
    no 1-based label (tools/relabel_layers.py rewrote them once; numbers untouched)."""
    import subprocess
    import sys
    from pathlib import Path

    old = tmp_path / "history.csv"
    old.write_text("step,full_accuracy,ffn2_removed_accuracy,ffn2_removed_p_answer\n100,0.5,0.9,0.7\n")
    df = results.read_table(old)
    assert list(df.columns) == ["step", "full_accuracy", "last_ffn_removed_accuracy", "last_ffn_removed_p_answer"]
    assert df["last_ffn_removed_accuracy"].tolist() == [0.9]
    assert results.upgrade_record({"ffn2_removed_p_noise": 0.1}) == {"last_ffn_removed_p_noise": 0.1}
    root = Path(__file__).resolve().parents[1]
    check = subprocess.run([sys.executable, str(root / "tools" / "relabel_layers.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    sys.path.insert(0, str(root / "tools"))
    try:
        from relabel_layers import relabel
    finally:
        sys.path.pop(0)
    assert relabel("variant,accuracy\nlayer-2 FFN removed,0.98700\nlayer-1 FFN removed,0.021\n"
                   "layer-2 FFN W_in keep 0.1,0.848\nLASER L2 W_out keep 0.5,1e-3\n") == \
        "variant,accuracy\nFFN L1 removed,0.98700\nFFN L0 removed,0.021\nmlp.W_in L1 keep 0.1,0.848\n" \
        "mlp.W_out L1 keep 0.5,1e-3\n"
