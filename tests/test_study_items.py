"""The per-item side table of a truncation study (honest numbers): one engine pass,
resumable, feeding held-out selection and the report's intervals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.analysis.selection import ITEM_COLUMNS
from mechtrunc.studies import Grid, heldout_configuration, read_items, truncation_study

pytestmark = pytest.mark.usefixtures("single_thread")

GRID = dict(layers=(0, 1), matrices=("mlp.W_in", "mlp.W_out"), keeps=(1, 0.5, 0.1))


def _prompts(model, n=24):
    """``n`` random sequences of 8 tokens, two items each (positions 5 and 7), one competitor."""
    g = torch.Generator().manual_seed(n)
    tokens = torch.randint(0, 512, (n, 8), generator=g)
    rows = torch.arange(n).repeat_interleave(2)
    return mt.PromptSet(tokens=tokens, rows=rows, pos=torch.tensor([5, 7]).repeat(n),
                        answer=torch.randint(0, 512, (2 * n,), generator=g),
                        competitors=torch.randint(0, 512, (2 * n, 1), generator=g), competitor_names=("the",))


@pytest.mark.parametrize("mode", ["engine", "hook"])
def test_side_table_equals_evaluate_per_item(neox_bridge, tmp_path, mode):
    from mechtrunc.core.metrics import item_metrics
    from mechtrunc.core.runner import item_logits

    prompts = _prompts(neox_bridge)
    df, items = truncation_study(neox_bridge, prompts, **GRID, out=tmp_path, progress=False, mode=mode,
                                 return_items=True)
    assert (tmp_path / "items.parquet").is_file()
    stored = read_items(tmp_path)
    pd.testing.assert_frame_equal(stored, items, check_dtype=False)
    n = len(prompts)
    assert len(items) == len(df) * n and list(items.columns[: len(ITEM_COLUMNS)]) == list(ITEM_COLUMNS)
    metrics = [c for c in items.columns if c not in ITEM_COLUMNS]
    # the means of each configuration's items are its row
    means = items.groupby("config")[metrics].mean()
    for m in metrics:
        np.testing.assert_allclose(means[m].to_numpy(), df[m].to_numpy(), atol=1e-5)
    # per item: equal to evaluate's logits scored item by item
    for cid in (0, 5):  # the baseline and layer 0 W_out keep 0.5
        row = df.iloc[cid]
        ivs = () if row["baseline"] else (mt.Truncate(row["matrix"], layer=int(row["layer"]), keep=float(row["keep"]),
                                                      mode="hook"),)
        ref = item_metrics(item_logits(neox_bridge, prompts, *ivs), prompts)
        got = items[items["config"] == cid].sort_values("item")
        assert not row["identity"]
        for m in metrics:
            np.testing.assert_allclose(got[m].to_numpy(), ref[m].double().numpy(), atol=2e-5, rtol=1e-4)
        assert mt.evaluate(neox_bridge, prompts, *ivs).iloc[0]["p_answer"] == pytest.approx(
            got["p_answer"].mean(), abs=1e-5)
    # identity rows hold the baseline's items
    ident = df.index[df["identity"].astype(bool)].tolist()
    assert ident and all((items[items["config"] == i][metrics].to_numpy()
                          == items[items["config"] == 0][metrics].to_numpy()).all() for i in ident)


def test_interrupted_and_resumed_study_holds_each_item_once(neox_bridge, tmp_path, monkeypatch):
    import mechtrunc.core.engine as engine

    prompts = _prompts(neox_bridge)
    real = engine.run_grid
    calls = []

    def dying(*a, **k):  # yields the baseline and layer 0's rows, then dies
        calls.append(len(a[2]))
        for i, r in enumerate(real(*a, **k)):
            if r.layer == 1:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(engine, "run_grid", dying)
    with pytest.raises(KeyboardInterrupt):
        truncation_study(neox_bridge, prompts, **GRID, out=tmp_path, progress=False)
    assert not (tmp_path / "items.parquet").exists()
    done = len((tmp_path / "rows.jsonl").read_text().splitlines())
    assert done == 1 + 4 and len(list((tmp_path / "item_shards").glob("*.parquet"))) == done
    # a crash between an item shard and its row: that row is recomputed, its shard replaced
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    (tmp_path / "rows.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    # and a row whose shard is gone (written before the side table existed) is recomputed too
    first = json.loads(lines[1])
    from mechtrunc.studies import ItemStore
    from mechtrunc.core.results import keep_key

    (tmp_path / "item_shards" / f"{ItemStore.name((first['layer'], first['matrix'], keep_key(first['keep'])))}.parquet").unlink()
    monkeypatch.setattr(engine, "run_grid", real)
    df = truncation_study(neox_bridge, prompts, **GRID, out=tmp_path, progress=False)
    items = read_items(tmp_path)
    fresh_df, fresh = truncation_study(neox_bridge, prompts, **GRID, out=None, progress=False, return_items=True)
    assert not items.duplicated(["config", "item"]).any()
    assert items.groupby("config").size().tolist() == [len(prompts)] * len(df)
    metrics = [c for c in items.columns if c not in ITEM_COLUMNS]
    np.testing.assert_allclose(items[metrics].to_numpy(), fresh[metrics].to_numpy(), atol=1e-6)
    assert items[["config", "layer", "matrix", "keep", "item"]].equals(fresh[["config", "layer", "matrix", "keep", "item"]])


def test_heldout_on_stored_items_equals_a_fresh_pass(neox_bridge, tmp_path, monkeypatch):
    import mechtrunc.core.engine as engine

    prompts = _prompts(neox_bridge, n=36)
    grid = Grid(**GRID)
    df, items = truncation_study(neox_bridge, prompts, **GRID, out=tmp_path, progress=False, return_items=True)
    fresh = heldout_configuration(neox_bridge, prompts, grid, n_boot=200)
    calls = []
    real = engine.run_grid
    monkeypatch.setattr(engine, "run_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    stored = heldout_configuration(neox_bridge, prompts, grid, n_boot=200, items=items)
    assert calls == []  # no forward pass
    for k in ("layer", "matrix", "keep", "rank", "baseline", "groups", "n_boot"):
        assert stored[k] == fresh[k]
    for part in ("select", "eval"):
        for k in ("full", "truncated", "change", "ci_low", "ci_high"):
            assert stored[part][k] == pytest.approx(fresh[part][k], abs=1e-6)
    with pytest.raises(ValueError, match="does not belong to these prompts"):
        heldout_configuration(neox_bridge, _prompts(neox_bridge, n=30), grid, items=items)


def test_cli_heldout_makes_one_grid_pass(tiny_pythia, tmp_path, monkeypatch, capsys):
    import mechtrunc.core.engine as engine
    from mechtrunc.cli import main

    calls = []
    real = engine.run_grid

    def counting(model, prompts, truncations, **k):
        truncations = list(truncations)
        calls.append((len(prompts), len(truncations)))
        return real(model, prompts, truncations, **k)

    monkeypatch.setattr(engine, "run_grid", counting)
    out = tmp_path / "run"
    assert main(["pythia", "truncate", "--model", str(tiny_pythia), "--n", "36", "--keeps", "0.5", "0.1",
                 "--batch-size", "8", "--no-progress", "--out", str(out), "--heldout", "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "held-out choice by p_answer" in printed
    assert [c for c in calls if c[0] == 36 and c[1] > 1] == [(36, 2 * 2 * 2)]  # one grid pass on the prompts
    assert (out / "items.parquet").is_file() and (out / "heldout.csv").is_file()


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    from mechtrunc.models.testing import build_random_pythia

    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4}, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("tiny_pythia"), n_layers=2, seed=0)


def test_cli_best_json_holds_the_intervals(tiny_pythia, tmp_path, capsys):
    from mechtrunc.cli import main
    from mechtrunc.core.results import find_row
    from mechtrunc.analysis.selection import table_change_intervals

    out = tmp_path / "run"
    assert main(["pythia", "truncate", "--model", str(tiny_pythia), "--n", "24", "--keeps", "0.5", "0.1",
                 "--batch-size", "8", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "paired bootstrap, 1000 resamples" in printed
    best = json.loads((out / "best.json").read_text())
    iv = best["intervals"]
    assert iv["n_boot"] == 1000 and iv["level"] == 0.95 and iv["n_items"] == 24
    m = best["best"]["metric"]
    df = pd.read_parquet(out / "truncation.parquet")
    t = table_change_intervals(df, read_items(out), m)
    i = list(df.index).index(find_row(df, best["best"]).name)
    assert iv["metrics"][m] == pytest.approx({k: t[k].iloc[i] for k in ("change", "ci_low", "ci_high")})
    assert iv["metrics"][m]["ci_low"] <= iv["metrics"][m]["change"] <= iv["metrics"][m]["ci_high"]


def test_a_metric_the_prompts_cannot_be_scored_by_fails_before_the_grid(neox_bridge, tmp_path, monkeypatch):
    """Competitors named c0 (a prompt file without names): ``logit_diff_the`` is refused by the
    study itself, naming the competitors and the valid metrics, before any configuration runs;
    summarise_study and heldout_configuration check the same way."""
    from mechtrunc.studies import grid as grid_module
    from mechtrunc.studies import summarise_study

    p = _prompts(neox_bridge)
    prompts = mt.PromptSet(p.tokens, p.rows, p.pos, p.answer, p.competitors, ("c0",))
    ran = []
    monkeypatch.setattr(grid_module, "evaluate_grid", lambda *a, **k: ran.append(1))
    expected = "unknown metric 'logit_diff_the' for these prompts (competitors: c0); valid: accuracy, p_answer, " \
               "loss, p_c0, acc_vs_c0, logit_diff_c0"
    with pytest.raises(ValueError) as info:
        truncation_study(neox_bridge, prompts, **GRID, out=tmp_path / "study", progress=False, metric="logit_diff_the")
    assert str(info.value) == expected
    assert ran == [] and not (tmp_path / "study" / "rows.jsonl").exists()
    with pytest.raises(ValueError, match="competitors: c0"):
        heldout_configuration(neox_bridge, prompts, Grid(**GRID), metric="logit_diff_the")
    with pytest.raises(ValueError, match="competitors: c0"):
        summarise_study(neox_bridge, prompts, pd.DataFrame(), metric="logit_diff_the", out_dir=tmp_path / "report")
    assert not (tmp_path / "report").exists()
