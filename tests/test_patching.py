"""Activation patching (mt.Patch, mt.patching_scan), path patching and the corrupted pairs of the
built-in tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechtrunc as mt
from mechtrunc.core.prompts import PromptSet

pytestmark = pytest.mark.usefixtures("single_thread")


def _toy_pair(model_cfg_task=None, n=48, seq_len=64):
    task = mt.RecallTask(mt.RecallConfig(alpha=0.5, seq_len=seq_len))
    return task, *mt.recall_pair(task, n=n, seed=3)


def _random_pair(vocab: int, n=24, length=12, seed=0, model=None):
    """Random clean and corrupted tokens.  With ``model``, the clean answer is what the model
    predicts on the clean prompts, so the clean - corrupted gap of p_answer is resolved (random
    answers leave it at noise level, where normalised effects are undefined)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab, (n, length), generator=g)
    b = torch.randint(0, vocab, (n, length), generator=g)
    pos = torch.full((n,), length - 1)
    clean = PromptSet(a, torch.arange(n), pos, torch.randint(0, vocab, (n,), generator=g),
                      torch.randint(0, vocab, (n, 1), generator=g), ("generic",))
    if model is not None:
        clean = PromptSet(a, clean.rows, pos, mt.item_logits(model, clean).argmax(-1), clean.competitors,
                          clean.competitor_names)
    return clean, b


@pytest.fixture(scope="module")
def models(random_toy, neox_bridge, gpt2_bridge):
    return {"toy": random_toy, "neox": neox_bridge, "gpt2": gpt2_bridge}


@pytest.mark.parametrize("name", ["toy", "neox", "gpt2"])
@pytest.mark.parametrize("site,head", [("resid_pre", None), ("attn_out", None), ("mlp_out", None), ("z", 0),
                                       ("mlp_post", None)])
def test_patch_from_the_clean_prompts_is_the_identity_bit_for_bit(models, name, site, head):
    model = models[name]
    vocab = mt.adapt(model).d_vocab
    clean, _ = _random_pair(vocab, n=70)  # two runner chunks of 64 and 6 sequences
    base = mt.item_logits(model, clean)
    patched = mt.item_logits(model, clean, mt.Patch(site, 1, source=clean, head=head))
    assert torch.equal(base, patched)
    assert torch.equal(mt.item_logits(model, clean), base)  # removed: the model is untouched


@pytest.mark.parametrize("name", ["toy", "neox", "gpt2"])
def test_patching_a_whole_residual_reproduces_the_corrupted_run(models, name):
    model = models[name]
    adapter = mt.adapt(model)
    clean, corrupted = _random_pair(adapter.d_vocab)
    bad = PromptSet(corrupted, clean.rows, clean.pos, clean.answer, clean.competitors, clean.competitor_names)
    want = mt.item_logits(model, bad)
    for layer in range(adapter.n_layers):
        for site in ("resid_pre", "resid_post"):
            got = mt.item_logits(model, clean, mt.Patch(site, layer, source=corrupted))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # a part of the residual is not the whole: patching one position differs
    part = mt.item_logits(model, clean, mt.Patch("resid_pre", 1, source=corrupted, positions=[3]))
    assert (part - want).abs().max() > 1e-3


def _hf_head_patch(hf, proj, clean_tokens, source_tokens, head, d_head):
    """A plain-torch head patch on the Hugging Face model: a pre-hook on the attention output
    projection replaces head ``head``'s slice of its input (the merged z) by the source run's."""
    store = {}
    h = proj.register_forward_pre_hook(lambda mod, args: store.__setitem__("z", args[0].detach().clone()))
    with torch.no_grad():
        hf(source_tokens)
    h.remove()
    sl = slice(head * d_head, (head + 1) * d_head)

    def swap(mod, args):
        z = args[0].clone()
        z[..., sl] = store["z"][..., sl]
        return (z,)

    h = proj.register_forward_pre_hook(swap)
    try:
        with torch.no_grad():
            return hf(clean_tokens).logits
    finally:
        h.remove()


@pytest.mark.parametrize("name", ["neox", "gpt2"])
def test_head_patch_agrees_with_a_plain_torch_hook_on_the_hugging_face_model(models, name):
    bridge = models[name]
    adapter = mt.adapt(bridge)
    hf = bridge.original_model
    clean, corrupted = _random_pair(adapter.d_vocab, seed=4)
    layer, head = 1, 2
    block = hf.gpt_neox.layers[layer].attention.dense if name == "neox" else hf.transformer.h[layer].attn.c_proj
    want = _hf_head_patch(hf, block, clean.tokens, corrupted, head, adapter.d_head)[clean.rows, clean.pos]
    got = mt.item_logits(bridge, clean, mt.Patch("z", layer, head=head, source=corrupted))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and the patch changed something (the test can fail)
    assert (got - mt.item_logits(bridge, clean)).abs().max() > 1e-3


def test_patch_positions_per_row_and_position_map(random_toy):
    task, clean, corrupted = _toy_pair()
    roles = clean.role_positions()
    after = roles["after1"]
    # per-row positions equal a loop of one-sequence patches at fixed positions
    got = mt.item_logits(random_toy, clean, mt.Patch("resid_pre", 1, source=corrupted, positions=after))
    for i in (0, 5, 11):
        one = clean.subset_sequences(torch.tensor([i]))
        want = mt.item_logits(random_toy, one, mt.Patch("resid_pre", 1, source=corrupted.tokens[i:i + 1],
                                                        positions=[int(after[i])]))
        torch.testing.assert_close(got[i:i + 1], want, atol=1e-6, rtol=0)
    # a position map between prompts of different lengths
    short = clean.tokens[:, :40]
    iv = mt.Patch("resid_pre", 0, source=short, positions=[50], source_positions=[10])
    out = mt.item_logits(random_toy, clean, iv)
    assert out.shape == (len(clean), mt.adapt(random_toy).d_vocab)


def test_patch_composes_and_runs_inside_sweep_and_attribution(random_toy):
    task, clean, corrupted = _toy_pair()
    p = mt.Patch("z", 1, head=0, source=corrupted)
    t = mt.Truncate("mlp.W_in", layer=1, keep=0.5)
    df = mt.sweep(random_toy, clean, [None, p, t, [t, p]])
    assert list(df["variant"]) == ["full", "patch L1H0.z", t.label, f"{t.label} + patch L1H0.z"]
    both = mt.evaluate(random_toy, clean, t + p)["p_answer"].item()
    assert both == pytest.approx(df["p_answer"].iloc[3], abs=1e-6)
    att = mt.attribute_change(random_toy, clean, p)
    total = att[att["kind"] == "total"]["change"].item()
    ld = att.attrs["logit_diff"]
    assert total == pytest.approx(ld["intervened"]["noise"] - ld["clean"]["noise"], abs=1e-4)


def test_scan_rows_equal_one_patch_at_a_time(neox_bridge):
    adapter = mt.adapt(neox_bridge)
    clean, corrupted = _random_pair(adapter.d_vocab, n=10, length=6, seed=5, model=neox_bridge)
    bad = PromptSet(corrupted, clean.rows, clean.pos, clean.answer, clean.competitors, clean.competitor_names)
    df = mt.patching_scan(neox_bridge, clean, corrupted, sites=("resid_pre", "z"), positions=[0, 5],
                          direction="both", metric="p_answer", batch_size=32)
    assert len(df) == 2 * (3 * 3 + 3 * 4 * 3)  # directions x (resid layers x groups + z layers x heads x groups)
    for _, row in df.sample(8, random_state=0).iterrows():
        pos = None if row["position"] == "all" else [int(row["position"])]
        head = None if pd_isna(row["head"]) else int(row["head"])
        target, source = (bad, clean.tokens) if row["direction"] == "denoising" else (clean, corrupted)
        want = mt.evaluate(neox_bridge, target, mt.Patch(row["site"], int(row["layer"]), source=source, head=head,
                                                         positions=pos))["p_answer"].item()
        assert row["value"] == pytest.approx(want, abs=1e-5), dict(row)
    # 2 recording runs + 2 baselines + per direction ceil(45 patches / 3 per forward)
    assert df.attrs["forwards"] == 4 + 2 * 15
    # the normalised effect: 1 = clean, 0 = corrupted
    whole = df[(df["site"] == "resid_pre") & (df["position"] == "all")]
    assert whole[whole["direction"] == "denoising"]["effect"].tolist() == pytest.approx([1, 1, 1], abs=1e-5)
    assert whole[whole["direction"] == "noising"]["effect"].tolist() == pytest.approx([0, 0, 0], abs=1e-5)


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


@pytest.mark.slow
def test_scan_on_the_trained_toy_finds_the_induction_and_previous_token_heads(demo_toy):
    task = mt.RecallTask(demo_toy.config.recall_config())
    clean, corrupted = mt.recall_pair(task, n=128)
    df = mt.patching_scan(demo_toy.model, clean, corrupted, sites=("z",), direction="both")
    eff = df.set_index(["direction", "layer", "position"])["effect"]
    # measured once on the demo model (analyses/causal_toy.py, docs/causal.md): 1.00 and 1.00
    assert eff["denoising", 1, "end"] > 0.9  # L1 induction head at the repeated trigger
    assert eff["denoising", 0, "after1"] > 0.9  # L0 previous-token head after the first trigger
    assert abs(eff["denoising", 0, "end"]) < 0.1 and abs(eff["denoising", 1, "after1"]) < 0.1
    assert eff["noising", 1, "end"] < 0.1 and eff["noising", 0, "after1"] < 0.2
    # the previous-token head reaches the induction head through its keys, not its queries
    k = mt.path_patch(demo_toy.model, clean, corrupted, (0, 0), ("k", 1, 0), direction="noising")["effect"]
    q = mt.path_patch(demo_toy.model, clean, corrupted, (0, 0), ("q", 1, 0), direction="noising")["effect"]
    assert k < 0.9 and q > 0.99, (k, q)


def test_path_into_the_logits_from_the_last_layer_equals_the_head_patch(neox_bridge):
    adapter = mt.adapt(neox_bridge)  # parallel blocks: a last-layer head reaches only the logits
    clean, corrupted = _random_pair(adapter.d_vocab, n=16, length=8, seed=6)
    last = adapter.n_layers - 1
    for head in range(adapter.n_heads):
        path = mt.path_patch(neox_bridge, clean, corrupted, (last, head), "logits", metric="p_answer",
                             direction="noising")
        full = mt.evaluate(neox_bridge, clean, mt.Patch("z", last, head=head, source=corrupted))["p_answer"].item()
        assert path["value"] == pytest.approx(full, abs=1e-6)
    # an earlier head's path to the logits is not its total effect (it also feeds later layers)
    path = mt.path_patch(neox_bridge, clean, corrupted, (0, 1), "logits", metric="p_answer", direction="noising")["value"]
    full = mt.evaluate(neox_bridge, clean, mt.Patch("z", 0, head=1, source=corrupted))["p_answer"].item()
    assert abs(path - full) > 1e-5


def test_path_to_a_receiver_is_zero_when_the_sender_does_not_change(neox_bridge, gpt2_bridge):
    for model in (neox_bridge, gpt2_bridge):
        adapter = mt.adapt(model)
        clean, corrupted = _random_pair(adapter.d_vocab, n=8, length=6, seed=7)
        df = mt.path_patching_scan(model, clean, clean.tokens, ("mlp", 2), metric="p_answer", direction="noising")
        assert (df["value"] - df["clean"]).abs().max() < 1e-6
        df = mt.path_patching_scan(model, clean, corrupted, ("v", 2, 1), metric="p_answer", direction="noising")
        assert len(df) == 2 * adapter.n_heads and (df["value"] - df["clean"]).abs().max() > 1e-6


def test_ioi_abc_corruption(pythia_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pythia_tokenizer_dir))
    prompts = mt.ioi_prompts(tok, n=40, seed=1)
    clean, bad = mt.ioi_abc(prompts, tok, seed=0)
    assert bad.tokens.shape == clean.tokens.shape and torch.equal(bad.answer, clean.answer)
    roles = clean.role_positions()
    assert list(roles) == ["io", "s1", "s2", "end"] and torch.equal(roles["end"], clean.pos)
    ids = lambda name: tok(" " + name, add_special_tokens=False)["input_ids"][0]
    for i in range(len(prompts)):
        io, s = prompts.meta["io"][i], prompts.meta["subject"][i]
        names = {bad.texts[i][m.start():m.end()] for m in __import__("re").finditer(r"[A-Z][a-z]+", bad.texts[i])}
        assert io not in names and s not in names, bad.texts[i]
        r = [int(roles[k][i]) for k in ("io", "s1", "s2")]
        # the role positions hold the names' tokens (a name at the start of a text has no space)
        for k, name in zip(r, (io, s, s)):
            assert clean.tokens[i, k] in (ids(name), tok(name, add_special_tokens=False)["input_ids"][0])
        new = [int(bad.tokens[i, k]) for k in r]
        assert len(set(new)) == 3 and all(int(clean.tokens[i, k]) != v for k, v in zip(r, new))
        # nothing else changed (a name opening a text may take two tokens: "Hel", "en")
        diff = (bad.tokens[i] != clean.tokens[i]).nonzero().flatten().tolist()
        assert all(d in r or (d - 1 in r and d - 1 == 0) for d in diff), (diff, r, bad.texts[i])


def test_factual_swap_and_recall_pair(pythia_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pythia_tokenizer_dir))
    facts = mt.factual_prompts(tok)
    clean, bad = mt.factual_swap(facts, tok, seed=0)
    assert clean.meta["dropped"] + clean.n_sequences == facts.n_sequences and clean.n_sequences > 20
    assert bad.tokens.shape == clean.tokens.shape
    for i in range(clean.n_sequences):
        j = facts.texts.index(bad.texts[i])
        assert facts.meta["relation"][j] == clean.meta["relation"][i] and int(facts.answer[j]) != int(clean.answer[i])
    task = mt.RecallTask(mt.RecallConfig(alpha=0.5, seq_len=64))
    clean, bad = mt.recall_pair(task, n=32, seed=1)
    roles = clean.role_positions()
    trig = task.fixed_triggers[0]
    rows = torch.arange(clean.n_sequences)
    assert (clean.tokens[rows, roles["trigger1"]] == trig).all() and (bad.tokens[rows, roles["trigger1"]] != trig).all()
    assert (clean.tokens[rows, roles["end"]] == trig).all() and torch.equal(roles["end"], clean.pos)
    assert int((bad.tokens != clean.tokens).sum()) == clean.n_sequences
    assert torch.equal(clean.answer, clean.tokens[rows, roles["after1"]])  # the answer is the output after the first trigger


@pytest.mark.parametrize("call,err,message", [
    (lambda m, c, b: mt.patching_scan(m, c, b[:5]), ValueError, "unpaired prompt sets: clean is 24 x 12 tokens, corrupted is 5 x 12"),
    (lambda m, c, b: mt.patching_scan(m, c, b[:, :7]), ValueError, "corrupted is 24 x 7"),
    (lambda m, c, b: mt.patching_scan(m, c, b, positions=[12]), ValueError, "position 12 of group '12' is outside the prompts (valid 0..11)"),
    (lambda m, c, b: mt.patching_scan(m, c, b, direction="sideways"), ValueError, "unknown direction 'sideways'"),
    (lambda m, c, b: mt.patching_scan(m, c, b, metric="p_nope"), ValueError, "unknown metric 'p_nope'"),
    (lambda m, c, b: mt.Patch("mlp_out", 0, source=b, head=1), ValueError, "site 'mlp_out' has no heads"),
    (lambda m, c, b: mt.item_logits(m, c, mt.Patch("resid_pre", 0, source=b, positions=[20])), ValueError,
     "position 20 is outside the source prompts (length 12; valid 0..11)"),
    (lambda m, c, b: mt.item_logits(m, c, mt.Patch("resid_pre", 0, source=b[:3])), ValueError,
     "the run has 24 sequences but the paired source has 3"),
    (lambda m, c, b: mt.item_logits(m, c, mt.Patch("z", 0, head=9, source=b)), ValueError, "head 9 is out of range"),
    (lambda m, c, b: mt.path_patch(m, c, b, (2, 0), ("mlp", 1)), ValueError, "receiver layer 1 does not read"),
    (lambda m, c, b: mt.path_patch(m, c, b, (0, 0), ("o", 1, 0)), ValueError, "unknown receiver ('o', 1, 0)"),
    (lambda m, c, b: mt.Patch("resid_mid", 0, source=b).apply(m).__enter__(), ValueError,
     "runs attention and MLP in parallel, so site 'resid_mid' does not exist"),
])
def test_bad_patching_input_names_the_value(neox_bridge, call, err, message):
    clean, corrupted = _random_pair(mt.adapt(neox_bridge).d_vocab)
    with pytest.raises(err, match=__import__("re").escape(message)):
        call(neox_bridge, clean, corrupted)


def test_cli_patch_scan_and_path_on_a_toy_run_and_a_language_model_run(tmp_path, nano_run, capsys):
    import json

    from mechtrunc.cli import main

    cfg = mt.preset("cpu", d_model=16, seq_len=32, steps=4, eval_every=4, batch_size=8, test_size=8, seed=0)
    mt.train(cfg, out_dir=tmp_path / "toy", progress=False)
    out_csv = tmp_path / "scan.csv"
    assert main(["patch", "scan", str(tmp_path / "toy"), "--n", "16", "--sites", "z", "resid_pre", "--json",
                 "--out", str(out_csv), "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    model, _, task = mt.load_run(tmp_path / "toy")
    clean, corrupted = mt.recall_pair(task, n=16, seed=10_000)
    want = mt.patching_scan(model, clean, corrupted, sites=("z", "resid_pre"))
    assert [r["value"] for r in rep["rows"]] == pytest.approx(want["value"].tolist(), abs=1e-6)
    assert len(__import__("pandas").read_csv(out_csv)) == len(want)
    assert main(["patch", "path", str(tmp_path / "toy"), "--n", "16", "--receiver", "k:1:0", "--json"]) == 0
    path = json.loads(capsys.readouterr().out)
    assert [r["receiver"] for r in path["rows"]] == ["L1H0.k"]
    # a language-model run: its last checkpoint, IOI prompts of the corpus, the ABC corruption
    run, _ = nano_run
    assert main(["patch", "scan", str(run), "--task", "ioi", "--n", "8", "--sites", "z", "--json", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    adapter = mt.adapt(__import__("mechtrunc.models.hf", fromlist=["x"]).load_model(run / "step200", local_files_only=True))
    assert len(rep["rows"]) == adapter.n_layers * adapter.n_heads * 5  # groups: all, io, s1, s2, end
    assert rep["metric"] == "logit_diff_the"


def test_effects_carry_bootstrap_intervals(neox_bridge):
    adapter = mt.adapt(neox_bridge)
    clean, corrupted = _random_pair(adapter.d_vocab, n=20, length=6, seed=8, model=neox_bridge)
    df = mt.patching_scan(neox_bridge, clean, corrupted, sites=("resid_pre", "z"), positions=[2], metric="p_answer",
                          direction="both", n_boot=500)
    assert df.attrs["n_boot"] == 500
    inner = df[df["effect_low"].notna()]
    assert len(inner) == len(df)
    assert ((inner["effect_low"] <= inner["effect"] + 1e-9) & (inner["effect"] <= inner["effect_high"] + 1e-9)).all()
    # a whole residual reproduces the clean (or corrupted) run in every resample: a zero-width interval
    whole = df[(df["site"] == "resid_pre") & (df["position"] == "all")]
    for d, want in (("denoising", 1.0), ("noising", 0.0)):
        w = whole[whole["direction"] == d]
        assert w["effect_low"].tolist() == pytest.approx([want] * 3, abs=1e-6)
        assert w["effect_high"].tolist() == pytest.approx([want] * 3, abs=1e-6)
    # one head at one position moves a random model a little: its interval has width
    heads = df[(df["site"] == "z") & (df["position"] == "2")]
    assert (heads["effect_high"] - heads["effect_low"]).max() > 1e-3
    none = mt.patching_scan(neox_bridge, clean, corrupted, sites=("z",), positions=[2], n_boot=0)
    assert none["effect_low"].isna().all()
    path = mt.path_patch(neox_bridge, clean, corrupted, (1, 0), ("v", 2, 1), metric="p_answer", n_boot=500)
    assert path["effect_low"] <= path["effect"] <= path["effect_high"]
    with pytest.raises(ValueError, match="n_boot must be a non-negative integer"):
        mt.patching_scan(neox_bridge, clean, corrupted, n_boot=-1)


def test_an_unresolved_gap_leaves_the_normalised_effects_undefined(neox_bridge):
    """Normalising by a clean - corrupted gap whose bootstrap interval contains zero gives
    numbers such as 2.5 [-13, 14]: the effects are NaN instead, the gap and its interval are in
    attrs, and the raw values stay.  A resolved gap normalises as before."""
    adapter = mt.adapt(neox_bridge)
    clean, corrupted = _random_pair(adapter.d_vocab, n=24, length=8, seed=3)
    for scan in (lambda c: mt.patching_scan(neox_bridge, c, corrupted, sites=("resid_pre", "z"), positions=[4],
                                            direction="both", n_boot=500),
                 lambda c: mt.path_patching_scan(neox_bridge, c, corrupted, "logits", n_boot=500)):
        df = scan(clean)
        a = df.attrs
        assert a["gap"] == pytest.approx(a["clean"] - a["corrupted"]) and a["gap"] != 0
        assert a["gap_low"] <= 0.0 <= a["gap_high"] and a["normalised"] is False
        assert df["effect"].isna().all() and df["effect_low"].isna().all() and df["effect_high"].isna().all()
        assert df["value"].notna().all()
    df = mt.patching_scan(neox_bridge, clean, corrupted, sites=("resid_pre",), direction="denoising",
                                  n_boot=500)
    whole = df[df["position"] == "all"]
    assert whole["value"].tolist() == pytest.approx([df.attrs["clean"]] * len(whole), abs=1e-6)  # raw values intact
    resolved, _ = _random_pair(adapter.d_vocab, n=24, length=8, seed=3, model=neox_bridge)
    df = mt.patching_scan(neox_bridge, resolved, corrupted, sites=("resid_pre",), positions=[4], metric="p_answer",
                          n_boot=500)
    a = df.attrs
    assert a["normalised"] is True and 0.0 < a["gap_low"] <= a["gap"] <= a["gap_high"]
    assert df["effect"].tolist() == pytest.approx(((df["value"] - a["corrupted"]) / a["gap"]).tolist())
    assert df["effect_low"].notna().all()
    none = mt.patching_scan(neox_bridge, clean, corrupted, sites=("z",), positions=[4], n_boot=0)
    assert none.attrs["normalised"] is True and np.isnan(none.attrs["gap_low"])  # no interval: only a zero gap fails


def test_cli_patch_warns_when_the_gap_cannot_be_normalised(tmp_path, capsys):
    """A toy model trained 4 steps: clean and corrupted differ by about 0.01 with an interval
    across zero.  `patch scan` and `patch path` print one warning line naming the gap and its
    interval, and the raw change instead of the undefined effect; --json keeps stdout one JSON
    document and says normalised: false (the warning on stderr)."""
    import json

    from mechtrunc.cli import main

    cfg = mt.preset("cpu", d_model=16, seq_len=32, steps=4, eval_every=4, batch_size=8, test_size=8, seed=0)
    mt.train(cfg, out_dir=tmp_path / "toy", progress=False)
    run = str(tmp_path / "toy")
    assert main(["patch", "scan", run, "--n", "16", "--sites", "z", "resid_pre", "--json", "--no-progress"]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep["normalised"] is False and rep["gap_low"] <= 0 <= rep["gap_high"]
    assert all(r["effect"] is None for r in rep["rows"])
    assert cap.err.count("warning: the clean - corrupted gap of logit_diff_noise is ") == 1
    assert f"{rep['gap']:+.4f} [{rep['gap_low']:+.4f}, {rep['gap_high']:+.4f}]" in cap.err
    for argv in (["patch", "scan", run, "--n", "16", "--sites", "z", "resid_pre", "--no-progress"],
                 ["patch", "path", run, "--n", "16", "--receiver", "k:1:0"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        warn = [line for line in out.splitlines() if line.startswith("warning:")]
        assert len(warn) == 1 and f"{rep['gap']:+.4f} [{rep['gap_low']:+.4f}, {rep['gap_high']:+.4f}]" in warn[0]
        assert "normalised effects are undefined" in warn[0]
        header = next(line for line in out.splitlines() if line.split()[:1] in (["direction"], ["sender_layer"]))
        assert header.split()[-1] == "change" and "effect" not in header
