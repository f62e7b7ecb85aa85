"""Held-out selection and paired bootstrap intervals (mechtrunc.analysis.selection)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.core.metrics import bootstrap_ci, bootstrap_intervals, bootstrap_means
from mechtrunc.analysis.selection import (
    ITEM_COLUMNS, best_within_budget, change_intervals, choose_configuration, heldout_choice, heldout_selection,
    item_table,
    split_prompts, split_sequences,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _prompts(n_seq: int, meta=None, items_per_seq: int = 1) -> mt.PromptSet:
    rows = torch.arange(n_seq).repeat_interleave(items_per_seq)
    n = len(rows)
    return mt.PromptSet(tokens=torch.zeros(n_seq, 4, dtype=torch.long), rows=rows,
                        pos=torch.arange(n) % 4, answer=torch.ones(n, dtype=torch.long),
                        competitors=torch.zeros(n, 1, dtype=torch.long), meta=dict(meta or {}))


def _noise_items(n_configs: int, n_items: int, seed: int) -> pd.DataFrame:
    """A model-free item table where every configuration's per-item values are i.i.d. draws from
    one distribution: no configuration is better than the full model (config 0)."""
    rng = np.random.default_rng(seed)
    frames = []
    for c in range(n_configs + 1):
        frames.append(pd.DataFrame({
            "config": c, "baseline": c == 0, "layer": None if c == 0 else 0, "matrix": "none" if c == 0 else "W",
            "keep": np.nan if c == 0 else c / (n_configs + 1), "rank": None if c == 0 else c,
            "max_rank": None if c == 0 else n_configs + 1, "identity": False,
            "intervention": "full" if c == 0 else f"W keep {c}", "path": "synthetic",
            "item": np.arange(n_items), "sequence": np.arange(n_items),
            "p_answer": rng.beta(2.0, 5.0, n_items)}))
    return pd.concat(frames, ignore_index=True)


# --- the split -------------------------------------------------------------------------------


def test_split_is_grouped_seeded_disjoint_and_covers_every_sequence():
    n = 90
    ps = _prompts(n, {"template": [i % 9 for i in range(n)], "other": list(range(n))})
    sel, ev = split_prompts(ps, select=0.5, seed=3)
    a, b = (torch.tensor(p.meta["split"]["sequences"]) for p in (sel, ev))
    assert set(a.tolist()).isdisjoint(b.tolist()) and sorted(a.tolist() + b.tolist()) == list(range(n))
    assert sel.n_sequences + ev.n_sequences == n and len(sel) + len(ev) == len(ps)
    tpl_sel, tpl_ev = set(sel.meta["template"]), set(ev.meta["template"])
    assert tpl_sel.isdisjoint(tpl_ev) and len(tpl_sel | tpl_ev) == 9  # templates do not cross
    assert sel.meta["split"]["groups"] == "template"
    assert 0.35 <= sel.n_sequences / n <= 0.65
    again = split_sequences(ps, 0.5, seed=3)
    assert torch.equal(again[0], a) and torch.equal(again[1], b)  # seeded
    other = [split_sequences(ps, 0.5, seed=s)[0].tolist() for s in range(6)]
    assert len({tuple(o) for o in other}) > 1  # the seed matters
    # no template: one group per sequence; the items of a sequence stay together
    toy = _prompts(40, items_per_seq=3)
    s2, e2 = split_prompts(toy, select=0.25, seed=0)
    assert s2.meta["split"]["groups"] == "sequence" and s2.n_sequences == 10 and len(s2) == 30
    # a meta key or explicit labels
    s3, _ = split_prompts(ps, groups="other", seed=1)
    assert s3.meta["split"]["groups"] == "other" and s3.n_sequences == 45
    s4, e4 = split_prompts(ps, groups=[i // 45 for i in range(n)])
    assert {s4.n_sequences, e4.n_sequences} == {45}


@pytest.mark.parametrize("kwargs, match", [
    ({"select": 0.0}, r"select must be a fraction in \(0, 1\).*got 0.0"),
    ({"select": 1.5}, r"select must be a fraction in \(0, 1\).*got 1.5"),
    ({"select": True}, r"select must be a fraction"),
    ({"groups": "speaker"}, r"group key 'speaker' is not in the prompt set's meta; per-sequence keys there: "
                            r"'template'"),
    ({"groups": [0, 1]}, r"one label per sequence \(12\), got 2"),
    ({"groups": [7] * 12}, r"a side would be left empty"),
])
def test_split_errors_name_the_bad_value(kwargs, match):
    ps = _prompts(12, {"template": [i % 3 for i in range(12)]})
    with pytest.raises(ValueError, match=match):
        split_prompts(ps, **kwargs)


# --- the bootstrap ---------------------------------------------------------------------------


def test_bootstrap_intervals_cover_the_true_mean_at_the_stated_rate():
    """400 seeded repeats of 200 items from a known skewed distribution (exponential, mean 1):
    the 95% percentile intervals cover the true mean 93-97% of the time."""
    gen = torch.Generator().manual_seed(17)
    values = torch.empty(400, 200, dtype=torch.double).exponential_(1.0, generator=gen)
    lo, hi = bootstrap_intervals(values, n_boot=1000, level=0.95, seed=5)
    coverage = ((lo <= 1.0) & (1.0 <= hi)).double().mean().item()
    assert 0.93 <= coverage <= 0.97, coverage
    lo90, hi90 = bootstrap_intervals(values, n_boot=1000, level=0.80, seed=5)
    assert 0.77 <= ((lo90 <= 1.0) & (1.0 <= hi90)).double().mean().item() <= 0.83
    # one row of the vectorised bootstrap is bootstrap_ci, draw for draw
    assert (lo[3].item(), hi[3].item()) == pytest.approx(bootstrap_ci(values[3], n_boot=1000, seed=5), abs=1e-12)


def test_cluster_bootstrap_resamples_whole_sequences():
    v = torch.randn(30, generator=torch.Generator().manual_seed(0)).double()
    per_item = bootstrap_means(v, n_boot=500, seed=2)
    same = bootstrap_means(v.repeat_interleave(4), n_boot=500, seed=2, clusters=torch.arange(30).repeat_interleave(4))
    assert torch.allclose(per_item, same)  # 4 equal items per sequence: the sequence bootstrap
    naive = bootstrap_means(v.repeat_interleave(4), n_boot=500, seed=2)
    assert naive.std() < 0.6 * same.std()  # treating them as independent items would be too narrow


def test_change_intervals_are_paired():
    gen = torch.Generator().manual_seed(1)
    before = {"p_answer": torch.rand(300, generator=gen)}
    after = {"p_answer": before["p_answer"] + 0.01 + 0.001 * torch.randn(300, generator=gen)}
    t = change_intervals(before, after, ["p_answer"], n_boot=500).iloc[0]
    assert t["n_boot"] == 500 and t["n_items"] == 300
    assert t["change"] == pytest.approx(0.01, abs=5e-4)
    # paired: the interval is the difference's (width ~ 0.0002), not that of two independent means (~0.06)
    assert 0 < t["ci_high"] - t["ci_low"] < 0.001 and t["ci_low"] > 0
    with pytest.raises(ValueError, match=r"unknown metric 'p_the'"):
        change_intervals(before, after, ["p_the"])


# --- held-out selection on noise -------------------------------------------------------------


def test_on_pure_noise_in_sample_reports_a_gain_and_held_out_reports_none():
    items = _noise_items(n_configs=60, n_items=400, seed=0)
    out = heldout_choice(items, "p_answer", seed=0, n_boot=1000).set_index("part")
    assert out.attrs["n_boot"] == 1000 and (out["n_boot"] == 1000).all()
    assert not out.loc["select", "baseline"]  # the max of 60 noisy means beats the full model...
    sel, ev = out.loc["select"], out.loc["eval"]
    assert sel["change"] > 0 and sel["ci_low"] > 0  # ...in sample, "significantly"
    assert ev["ci_low"] <= 0.0 <= ev["ci_high"]  # held out: no gain
    assert ev["change"] < sel["change"]
    assert sel["n_items"] + ev["n_items"] == 400
    # over several seeds the in-sample gain is always positive, the held-out interval holds 0 nearly always
    runs = [heldout_choice(_noise_items(30, 300, s), "p_answer", seed=s, n_boot=500).set_index("part")
            for s in range(1, 9)]
    assert all(r.loc["select", "change"] > 0 for r in runs)
    assert sum(r.loc["eval", "ci_low"] <= 0 <= r.loc["eval", "ci_high"] for r in runs) >= 7


def test_choose_configuration_respects_the_collateral_budget():
    table = pd.DataFrame({"baseline": [True, False, False, False], "identity": [False, False, True, False],
                          "p_answer": [0.5, 0.9, 0.95, 0.6], "loss": [2.0, 2.5, 2.0, 2.05]})
    assert choose_configuration(table, "p_answer")["p_answer"] == 0.9  # identity rows never chosen
    within = choose_configuration(table, "p_answer", collateral="loss", budget=0.1)
    assert within["p_answer"] == 0.6 and within["collateral_increase"] == pytest.approx(0.05)
    none = choose_configuration(table, "p_answer", collateral="loss", budget=0.01)
    assert none["baseline"] and none["gain"] == 0.0
    assert choose_configuration(table, "loss")["loss"] == 2.0 and choose_configuration(table, "loss")["baseline"]
    with pytest.raises(ValueError, match=r"budget needs a collateral"):
        choose_configuration(table, "p_answer", budget=0.1)


def test_best_within_budget_visits_the_best_first_and_measures_only_what_it_needs():
    scores, coll = [0.9, 0.7, 0.95, 0.6, 0.4], [3.0, 2.05, float("nan"), 2.0, 2.0]
    asked = []

    def lazy(i):
        asked.append(i)
        return coll[i]

    pick, refused = best_within_budget(scores, lazy, 0.1, base_score=0.5, base_collateral=2.0)
    # 0.95 has no collateral value (NaN: never within), 0.9 is over the budget, 0.7 fits
    assert pick == 1 and asked == [2, 0, 1]
    assert [i for i, _ in refused] == [2, 0] and refused[1][1] == pytest.approx(1.0)
    assert best_within_budget(scores, coll, 0.1, base_score=0.5, base_collateral=2.0)[0] == 1  # a sequence alike
    assert best_within_budget(scores, None, None, base_score=0.5)[0] == 2  # no budget: the best
    # nothing gains more than min_gain within the budget: keep the baseline, the collateral of
    # candidates that do not gain is never asked for
    asked.clear()
    assert best_within_budget(scores, lazy, 0.01, base_score=0.65, base_collateral=2.0)[0] is None
    assert asked == [2, 0, 1]
    assert best_within_budget([0.5, 0.5], None, None, base_score=0.5)[0] is None  # a tie is no gain
    assert best_within_budget([0.7, 0.7], None, None, base_score=0.5)[0] == 0  # ties: the first
    with pytest.raises(ValueError, match=r"budget needs a collateral"):
        best_within_budget(scores, None, 0.1, base_score=0.5)


# --- on the toy model ------------------------------------------------------------------------


def test_heldout_selection_on_the_toy_layer2_ffn(trained_toy):
    """LASER on the toy's FFN L1 (layer 1) lowers P(noise): chosen on the select part, the
    drop holds on the eval part with an interval below 0, computed on the eval items only."""
    model, _, prompts = trained_toy
    truncs = [mt.Truncate(m, layer=1, keep=k) for m in ("mlp.W_in", "mlp.W_out") for k in (0.01, 0.05, 0.1, 0.5)]
    out = heldout_selection(model, prompts, truncs, metric="p_noise", higher_is_better=False, seed=0, n_boot=500)
    print("\n" + out[["part", "matrix", "keep", "full", "truncated", "change", "ci_low", "ci_high", "n_items",
                      "n_sequences"]].to_string())
    sel, ev = out.set_index("part").loc["select"], out.set_index("part").loc["eval"]
    assert not sel["baseline"] and sel["layer"] == 1 and sel["intervention"] == ev["intervention"]
    assert ev["change"] < 0 and ev["ci_high"] < 0  # the direction holds on held-out prompts
    # the eval row is computed on the eval part's items only
    sel_seq, ev_seq = split_sequences(prompts, 0.5, seed=0)
    ev_prompts = prompts.subset_sequences(ev_seq)
    assert ev["n_items"] == len(ev_prompts) and ev["n_sequences"] == len(ev_seq)
    iv = mt.Truncate(ev["matrix"], layer=1, keep=float(ev["keep"]), mode="hook")
    full = mt.evaluate(model, ev_prompts).iloc[0]["p_noise"]
    trunc = mt.evaluate(model, ev_prompts, iv).iloc[0]["p_noise"]
    assert ev["full"] == pytest.approx(full, abs=1e-5) and ev["change"] == pytest.approx(trunc - full, abs=1e-5)
    # the interval is the sequence bootstrap of the eval items' paired differences
    items = item_table(model, prompts, truncs, metrics=["p_noise"])
    assert list(items.columns) == list(ITEM_COLUMNS) + ["p_noise"]
    base = items[items["baseline"]].set_index("item")["p_noise"]
    chosen = items[items["intervention"] == ev["intervention"]].set_index("item")["p_noise"]
    on_eval = np.isin(prompts.rows.numpy(), ev_seq.numpy())
    diff = torch.tensor((chosen - base).to_numpy()[on_eval])
    lo, hi = bootstrap_intervals(diff[None], n_boot=500, seed=0, clusters=prompts.rows[on_eval])
    assert (ev["ci_low"], ev["ci_high"]) == pytest.approx((lo.item(), hi.item()), abs=1e-12)
    # a collateral budget on the toy's own loss (PromptSet collateral): nothing may raise it by > 0.1 nats
    capped = heldout_selection(model, prompts, truncs, metric="p_noise", higher_is_better=False, n_boot=200,
                               collateral=prompts, budget=0.1).set_index("part")
    assert capped.loc["eval", "collateral_change"] <= 0.1 and capped.loc["eval", "budget"] == 0.1
    # a callable collateral (lower is better): the unconstrained choice costs 1 nat, so another is chosen
    seen = []
    first = (ev["matrix"], float(ev["keep"]))
    cost = lambda iv: seen.append(iv) or (1.0 if iv is not None and (iv.matrix, iv.keep) == first else 0.0)
    other = heldout_selection(model, prompts, truncs, metric="p_noise", higher_is_better=False, n_boot=200,
                              collateral=cost).set_index("part")
    assert (other.loc["eval", "matrix"], other.loc["eval", "keep"]) != first and not other.loc["eval", "baseline"]
    assert other.loc["eval", "collateral_change"] == 0.0 and other.loc["eval", "budget"] == 0.1
    assert None in seen and len(seen) == 1 + len(truncs)  # once per configuration, the full model included


# --- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    from mechtrunc.models.testing import build_random_pythia

    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4}, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("tiny_pythia"), n_layers=2, seed=0)


@pytest.mark.parametrize("extra, message", [
    (["--select", "0.3"], "--select only apply with --heldout"),
    (["--heldout", "--select", "1"], "--select must be a fraction in (0, 1)"),
    (["--heldout", "--budget", "0.2"], "--budget bounds the loss on --collateral text"),
    (["--heldout", "--collateral", "/nonexistent/text.txt"], "no such file"),
    (["--heldout", "--svd", "randomized", "--mode", "hook"], "--heldout runs on the grid engine"),
])
def test_pythia_truncate_heldout_usage_errors_exit_2(extra, message, capsys):
    from mechtrunc.cli import main

    code = main(["pythia", "truncate", "--model", "EleutherAI/pythia-70m", "--out", "X", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "mechtrunc: error:" in err and "Traceback" not in err


def test_pythia_truncate_heldout_prints_the_eval_change_and_the_collateral(tiny_pythia, tmp_path, capsys):
    from mechtrunc.cli import main

    text = tmp_path / "ref.txt"
    text.write_text("The cat sat on the mat and looked at the garden, where the birds were singing. " * 20)
    out = tmp_path / "run"
    assert main(["pythia", "truncate", "--model", str(tiny_pythia), "--n", "36", "--keeps", "0.5", "0.1",
                 "--batch-size", "8", "--no-progress", "--out", str(out), "--heldout", "--collateral", str(text),
                 "--budget", "0.5", "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "held-out choice by p_answer" in printed and "grouped by template" in printed
    assert "eval (held out):" in printed and "200 resamples" in printed
    assert f"collateral: loss on {text}" in printed and "budget 0.5" in printed
    table = pd.read_csv(out / "heldout.csv")
    assert list(table["part"]) == ["select", "eval"] and (table["n_boot"] == 200).all()
    assert table["n_items"].sum() == 36 and (table["collateral_change"] <= 0.5).all()


def test_the_collateral_budget_closes_the_logit_difference_trap_on_a_language_model(nano_run):
    """A measured case, as a regression test on the project's own language model (conftest's
    nano run): choosing in-sample by logit(IO) - logit(" the") picks an edit that wrecks the
    model (measured once, on prompts opening with <|endoftext|>: layer 0 W_in keep 0.05, +5.5
    logit difference, held-out text loss 2.31 -> 3.78 nats); held-out selection with the default
    0.1-nat budget on that loss never returns a configuration outside the budget, whatever the
    metric."""
    from mechtrunc.models.lm.prompts import lm_ioi_prompts
    from mechtrunc.models.hf import load_model
    from mechtrunc.analysis.selection import heldout_selection, item_table, next_token_prompts
    from mechtrunc.studies import best_configuration, truncation_study
    from mechtrunc.studies.lm import corpus_tokens

    run, _ = nano_run
    model = load_model(run / "step200", local_files_only=True)
    ioi = lm_ioi_prompts(model.tokenizer, n=100, seed=0)
    text = next_token_prompts(corpus_tokens(n_windows=16))
    keeps = (0.5, 0.2, 0.1, 0.05, 0.01)
    grid = [mt.Truncate(m, layer=l, keep=k) for l in range(mt.adapt(model).n_layers)
            for m in ("mlp.W_in", "mlp.W_out") for k in keeps]
    trap = best_configuration(truncation_study(model, ioi, keeps=(1, *keeps), progress=False), "logit_diff_the")
    loss = item_table(model, text, [mt.Truncate(trap["matrix"], layer=trap["layer"], keep=trap["keep"])],
                      metrics=["loss"]).groupby("config")["loss"].mean()
    assert trap["improvement"] > 2 and loss.iloc[1] - loss.iloc[0] > 1.0, (trap, loss)
    for metric in ("logit_diff_the", "p_answer"):
        t = heldout_selection(model, ioi, grid, metric=metric, collateral=text)
        assert (t["collateral_change"] <= t["budget"] + 1e-9).all(), t
        assert t["budget"].iloc[0] == pytest.approx(0.1)
