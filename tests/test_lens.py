"""mechtrunc.analysis.lens: the vocabulary lens of weight components, generic tokens found from data, the
ranking of generic components (over checkpoints too) and the logit lens at every residual site."""

from __future__ import annotations

import copy

import pytest
import torch

import mechtrunc as mt
from mechtrunc.analysis.lens import LENS_SITES, component_directions
from mechtrunc.models.memory import MemoryConfig, noise_component, spectrum, train_memory

pytestmark = pytest.mark.usefixtures("single_thread")


def _random_prompts(vocab: int, n_seq: int = 6, length: int = 12, seed: int = 0) -> mt.PromptSet:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n_seq, length), generator=g)
    rows = torch.arange(n_seq).repeat_interleave(2)
    pos = torch.tensor([length - 1, length // 2] * n_seq)
    answer = torch.randint(0, vocab, (2 * n_seq,), generator=g)
    comps = torch.randint(0, vocab, (2 * n_seq, 1), generator=g)
    return mt.PromptSet(tokens, rows, pos, answer, comps, competitor_names=("other",))


def _model_and_prompts(request, name):
    if name == "toy":
        model, _, prompts = request.getfixturevalue("trained_toy")
        return model, prompts
    model = request.getfixturevalue(name)
    return model, _random_prompts(mt.adapt(model).d_vocab)


# ------------------------------------------------------------------------------- logit lens
@pytest.mark.parametrize("name", ["toy", "neox_bridge", "gpt2_bridge"])
def test_logit_lens_at_the_last_resid_post_is_the_model(request, name):
    model, prompts = _model_and_prompts(request, name)
    L = mt.adapt(model).n_layers
    cases = {"clean": [], "intervened": [mt.Truncate("mlp.W_out", layer=L - 1, keep=0.25, mode="hook"),
                                          mt.Ablate("head", layer=0, head=0)]}
    for label, ivs in cases.items():
        df = mt.logit_lens(model, prompts, *ivs)
        assert list(df["site"].head(3)) == list(LENS_SITES) and len(df) == 3 * L
        assert list(df["depth"]) == list(range(3 * L))
        last = df[(df["layer"] == L - 1) & (df["site"] == "resid_post")].iloc[0]
        own = mt.metrics_from_logits(mt.item_logits(model, prompts, *ivs), prompts)
        c = prompts.competitor_names[0]
        for metric in ("p_answer", f"p_{c}", "loss", f"logit_diff_{c}", "accuracy"):
            assert last[metric] == pytest.approx(own[metric], abs=1e-5), (label, metric)
        assert df.attrs["model"]["p_answer"] == pytest.approx(own["p_answer"], abs=1e-6)
        # the stream is continuous: layer l's resid_post is layer l+1's resid_pre
        post = df[df["site"] == "resid_post"].set_index("layer")
        pre = df[df["site"] == "resid_pre"].set_index("layer")
        for l in range(L - 1):
            assert post.loc[l, "p_answer"] == pytest.approx(pre.loc[l + 1, "p_answer"], abs=1e-6)
    # an intervention that acts changes the lens downstream of it only
    clean, cut = (mt.logit_lens(model, prompts, *ivs) for ivs in cases.values())
    assert clean.loc[0, "p_answer"] == pytest.approx(cut.loc[0, "p_answer"], abs=1e-7)  # layer-0 resid_pre
    assert abs(clean.iloc[-1]["p_answer"] - cut.iloc[-1]["p_answer"]) > 1e-6


def test_resid_mid_is_read_at_its_hook_or_computed_on_parallel_blocks(request, trained_toy):
    toy, _, prompts = trained_toy
    assert mt.logit_lens(toy, prompts, sites=["resid_mid"]).attrs["resid_mid"] == "hook_resid_mid"
    neox = request.getfixturevalue("neox_bridge")
    assert mt.logit_lens(neox, _random_prompts(512), sites="resid_mid").attrs["resid_mid"] == "resid_pre + attn_out"
    # on a sequential model the computed resid_mid equals the hook: check it on the toy by hand
    acts = mt.run_items(toy, prompts, capture=("blocks.1.hook_resid_pre", "blocks.1.hook_attn_out",
                                               "blocks.1.hook_resid_mid"))[1]
    assert torch.allclose(acts["blocks.1.hook_resid_pre"] + acts["blocks.1.hook_attn_out"],
                          acts["blocks.1.hook_resid_mid"], atol=1e-6)


def test_logit_lens_compare_shows_where_removing_the_ffn_acts(trained_toy, tmp_path):
    model, _, prompts = trained_toy
    df = mt.logit_lens_compare(model, prompts, {"full": [], "FFN removed": mt.Ablate("mlp", layer=1)})
    assert list(df["label"].unique()) == ["full", "FFN removed"] and len(df) == 12
    full, cut = (df[df["label"] == k].reset_index(drop=True) for k in ("full", "FFN removed"))
    # identical up to layer 2's resid_mid; the last resid_post differs by the FFN's noise push
    assert (full.loc[:4, "p_noise"] - cut.loc[:4, "p_noise"]).abs().max() < 1e-6
    assert cut.loc[5, "p_noise"] == pytest.approx(cut.loc[4, "p_noise"], abs=1e-6)  # no FFN: mid == post
    # measured: P(noise) 0.472 with the FFN, 0.230 without (the FFN writes the noise association)
    assert full.loc[5, "p_noise"] > cut.loc[5, "p_noise"] + 0.15
    png = mt.viz.logit_lens_plot(df, tmp_path / "lens.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown metric"):
        mt.viz.logit_lens_plot(df, tmp_path / "x.png", metrics=["p_the"])


# ------------------------------------------------------------------------------- vocabulary lens
def test_vocab_lens_ranks_the_token_a_hand_built_component_writes(random_toy):
    model = copy.deepcopy(random_toy)
    d, V, m = model.cfg.d_model, model.cfg.d_vocab, model.cfg.d_mlp
    g = torch.Generator().manual_seed(0)
    t, u = 17, 23
    with torch.no_grad():
        model.W_U.copy_(torch.randn(d, V, generator=g) / d**0.5)
        x_t = model.W_U[:, t]
        model.W_U[:, u] -= (model.W_U[:, u] @ x_t) / (x_t @ x_t) * x_t  # orthogonal: an exact SVD
        # W_out: rank two; the larger component writes W_U[:, t], the smaller -W_U[:, u]
        a, b = torch.linalg.qr(torch.randn(m, 2, generator=g))[0].T
        model.blocks[1].mlp.W_out.copy_(3 * torch.outer(a, model.W_U[:, t]) - torch.outer(b, model.W_U[:, u]))
        # W_in: rank one, writing the hidden unit 5, which W_out reads into W_U[:, u]
        model.blocks[0].mlp.W_in.copy_(torch.outer(torch.randn(d, generator=g), torch.eye(m)[5]))
        model.blocks[0].mlp.W_out.zero_()
        model.blocks[0].mlp.W_out[5] = model.W_U[:, u]
    df = mt.vocab_lens(model, "mlp.W_out", 1, k=3, components=[0, 1])
    top = df[(df["side"] == "top") & (df["rank"] == 1)].set_index("component")
    assert top.loc[0, "token"] == t and top.loc[1, "token"] == u
    assert top.loc[0, "singular_value"] > top.loc[1, "singular_value"] > 0
    # the push of the top token is S * |W_U[:, t] - mean| . (W_U[:, t] - mean) / |W_U[:, t]|: by hand
    W_U = model.W_U.detach()
    R = W_U - W_U.mean(1, keepdim=True)
    o = W_U[:, t] / W_U[:, t].norm()
    assert top.loc[0, "push"] == pytest.approx(float(top.loc[0, "singular_value"] * (o @ R[:, t])), rel=1e-5)
    assert (df.groupby(["component", "side"]).size() == 3).all()
    bottom = df[df["side"] == "bottom"]
    assert (bottom["push"] < 0).all() and (df[df["side"] == "top"]["push"] > 0).all()
    w_in = mt.vocab_lens(model, "mlp.W_in", 0, k=1, components=0)
    assert int(w_in[w_in["side"] == "top"]["token"].iloc[0]) == u


def test_vocab_lens_reads_through_the_final_layernorm(neox_bridge):
    """On a LayerNorm model the push is (centred o_i) . (w_ln * (W_U[:, t] - mean)) * S[i]."""
    adapter = mt.adapt(neox_bridge)
    df = mt.vocab_lens(neox_bridge, "mlp.W_out", 2, k=2, components=[3])
    _, S, Vh = adapter.svd(adapter.matrix("mlp.W_out", 2))
    w_ln = adapter.final_ln()[0].float()
    W_U = adapter.W_U().float()
    o = Vh[3] - Vh[3].mean()
    push = S[3] * (o @ ((W_U - W_U.mean(1, keepdim=True)) * w_ln[:, None]))
    push = push * (1 if push[push.abs().argmax()] > 0 else -1)
    top = df[df["side"] == "top"]
    assert top["token"].tolist() == push.topk(2).indices.tolist()
    assert top["push"].tolist() == pytest.approx(push.topk(2).values.tolist(), rel=1e-5)
    assert set(df["token_str"]) <= {f"w{i}" for i in range(511)}  # decoded by the bridge's tokenizer


def test_head_matrices_follow_the_interventions_basis(trained_toy, neox_bridge):
    model = trained_toy[0]
    from mechtrunc.core.interventions import ov_basis

    adapter = mt.adapt(neox_bridge)
    _, Vh = ov_basis(adapter, 1)
    parts = component_directions(neox_bridge, "attn.OV", 1, head=2)
    assert torch.allclose(parts["out"].abs(), Vh[2].abs(), atol=1e-5)
    df = mt.vocab_lens(neox_bridge, "attn.W_O", 1, k=1)  # every head
    assert sorted(df["head"].unique()) == [0, 1, 2, 3] and len(df) == 4 * adapter.d_head * 2
    assert len(mt.vocab_lens(model, "attn.OV", 0, k=2, head=0)) == 2 * 2 * model.cfg.d_head


# ------------------------------------------------------------------------------- generic tokens
def test_the_toy_noise_component_is_found_without_being_told(trained_toy):
    model, task, clean = trained_toy
    noise = task.config.noise_id
    cfg_seed = 7
    noisy = task.sample(64, seed=cfg_seed).to_prompts(clean=False)
    generic = mt.generic_tokens(noisy, k=3)
    assert int(generic["token"].iloc[0]) == noise  # measured: 48 % of the training targets
    assert generic["frequency"].iloc[0] > 0.3
    # over all tokens of the sequences the space character wins: why PromptSets count answers
    assert int(mt.generic_tokens(task.sample(64, seed=cfg_seed).inputs, k=1)["token"].iloc[0]) != noise
    ranked = mt.rank_generic_components(model, "mlp.W_out", 1, generic.head(1), itos=task.itos)
    # the toy noise analysis (analyses/toy_noise_components.py) ranks with the noise token given
    reference = mt.rank_components(model, layer=1, tokens=[noise], matrix="mlp.W_out", prompts=clean)
    best = int(reference["component"].iloc[0])
    assert int(ranked["component"].iloc[0]) == best and int(ranked["generic_rank"].iloc[0]) == 1
    assert ranked["top_str"].iloc[0] == task.itos[noise]
    with_data = mt.rank_generic_components(model, "mlp.W_out", 1, generic.head(1), prompts=clean)
    assert int(with_data["component"].iloc[0]) == best and with_data["activation_score"].iloc[0] > 0
    for prompts in (None, clean):  # oriented by weights, then by the observed coefficients
        lens = mt.vocab_lens(model, "mlp.W_out", 1, k=5, components=[best], prompts=prompts, itos=task.itos)
        first = lens[(lens["side"] == "top") & (lens["rank"] == 1)].iloc[0]
        assert int(first["token"]) == noise and first["token_str"] == task.itos[noise]
    assert lens.attrs["sign_from"] == "activations" and lens["mean_coef"].iloc[0] > 0


def test_the_memory_noise_component_is_found_without_being_told():
    cfg = MemoryConfig(n_inputs=32, n_outputs=32, d=64, alpha=0.3, seed=1, target_seed=2, noise_token=5)
    model = train_memory(cfg, steps=300, lr=32.0, log_every=300, spectrum_steps=[]).model
    _, targets = model.sample(2000, torch.Generator().manual_seed(0))
    generic = mt.generic_tokens(targets, k=2)
    assert int(generic["token"].iloc[0]) == 5
    ranked = mt.rank_generic_components(model, "W", 0, generic.head(1))
    assert int(ranked["component"].iloc[0]) == noise_component(spectrum(model))
    lens = mt.vocab_lens(model, "W", k=1, components=int(ranked["component"].iloc[0]))
    assert int(lens[lens["side"] == "top"]["token"].iloc[0]) == 5


def test_generic_tokens_of_text_and_a_tokenizer(neox_bridge):
    tok = neox_bridge.tokenizer
    df = mt.generic_tokens(["w3 w7 w3 w9 w3 w7"], k=2, tokenizer=tok)
    assert df["token_str"].tolist() == ["w3", "w7"] and df["count"].tolist() == [3, 2]
    assert df["frequency"].iloc[0] == pytest.approx(0.5)
    assert mt.generic_tokens(torch.tensor([[1, 1, 2], [2, 2, 0]]), k=1, exclude=[2])["token"].tolist() == [1]
    ranked = mt.rank_generic_components(neox_bridge, "mlp.W_out", None, ["w3"])
    assert sorted(ranked["layer"].unique()) == [0, 1, 2] and ranked.attrs["generic"] == [3]
    assert ranked["generic_score"].is_monotonic_decreasing


def test_generic_tokens_never_count_special_tokens_or_padding():
    """Padding and end-of-text are masked out before counting: on right-padded prompts of very
    different lengths, and on a stream of stories each opening with <|endoftext|>, the generic
    token is a real word, and the frequencies are shares of the real tokens."""
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.tasks._tokens import tokenize_prompts

    tok = lm_tokenizer()
    texts = ["<|endoftext|> Sarah walked to the market in the town of the river.", "<|endoftext|> Sarah went"]
    texts += ["<|endoftext|> John ran"] * 6
    tokens, pos = tokenize_prompts(tok, texts)
    pad, eot = tok.pad_token_id, tok.eos_token_id
    assert int((tokens == pad).sum()) > int((tokens == tok.encode(" the")[0]).sum())  # padding would win
    real = [t for text in texts for t in tok.encode(text, add_special_tokens=False) if t not in (pad, eot)]
    want = sorted(__import__("collections").Counter(real).items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    for data, kw in ((tokens, {}), (mt.PromptSet(tokens=tokens, rows=torch.arange(8), pos=pos, answer=pos,
                                                  competitors=pos[:, None]), {"count": "tokens"})):
        got = mt.generic_tokens(data, k=2, tokenizer=tok, **kw)
        assert list(zip(got["token"], got["count"])) == want, got
        assert got["frequency"].iloc[0] == pytest.approx(want[0][1] / len(real))
    # a PromptSet's tokens without a tokenizer: the padded positions still never count
    ps = mt.PromptSet(tokens=torch.tensor([[5, 5, 9, 9, 9], [5, 9, 9, 9, 9]]), rows=torch.arange(2),
                      pos=torch.tensor([1, 0]), answer=torch.tensor([1, 1]), competitors=torch.tensor([[2], [2]]))
    assert mt.generic_tokens(ps, k=1, count="tokens")["count"].tolist() == [3]  # three 5s, no 9
    assert mt.generic_tokens(ps, k=1)["token"].tolist() == [1]  # the answers, as before
    with pytest.raises(ValueError, match=r"count must be 'answers' or 'tokens'"):
        mt.generic_tokens(ps, count="all")
    with pytest.raises(ValueError, match=r"only special or excluded tokens"):
        mt.generic_tokens(torch.tensor([pad, eot, pad]), tokenizer=tok)


def test_generic_components_appear_over_training(trained_toy):
    model, task, _ = trained_toy
    untrained = mt.ToyTransformer(model.cfg)
    noise = task.config.noise_id
    df = mt.generic_components_by_step([(0, untrained), (300, model)], "mlp.W_out", [noise], layer=1)
    assert df["step"].tolist() == [0, 300] and (df["layer"] == 1).all()
    # measured: at init some of the 64 random components has the noise token on top by chance
    # (best score 0.195, z 2.57, component 6); after 300 steps the largest component carries it
    # (score 0.533, z 4.66, component 0)
    start, end = df.iloc[0], df.iloc[1]
    assert end["generic_rank"] == 1 and int(end["component"]) == 0
    assert end["generic_score"] > 2 * start["generic_score"] and end["generic_z"] > start["generic_z"] + 1.5


# ------------------------------------------------------------------------------- command line
def _cli_json(argv, capsys):
    import json

    from mechtrunc.cli import main

    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_the_cli_offers_the_matrices_and_heads_the_lens_reads():
    """The command line lists the lens' matrices without importing torch; its lists are the lens'."""
    from mechtrunc.analysis import lens
    from mechtrunc.cli import lens as cli_lens

    assert cli_lens._LENS_MATRICES == lens.LENS_MATRICES
    assert cli_lens._HEAD_MATRICES == lens.HEAD_MATRICES


def test_cli_lens_on_a_toy_run_and_a_memory_run(tmp_path, capsys):
    run = tmp_path / "toy"
    mt.train(mt.preset("cpu", d_model=16, seq_len=32, steps=40, eval_every=40, test_size=32), out_dir=run,
             progress=False)
    out = _cli_json(["lens", "logit", str(run), "--remove-ffn", "1", "--json"], capsys)
    assert out["resid_mid"] == "hook_resid_mid" and len(out["rows"]) == 12
    last = [r for r in out["rows"] if r["label"] == "full model" and r["layer"] == 1 and r["site"] == "resid_post"][0]
    own = _cli_json(["toy", "eval", str(run), "--json"], capsys)["full"]
    assert last["p_answer"] == pytest.approx(own["p_answer"], abs=1e-5)
    assert last["p_noise"] == pytest.approx(own["p_noise"], abs=1e-5)
    vocab = _cli_json(["lens", "vocab", str(run), "--layer", "1", "--k", "2", "--top", "2", "--json"], capsys)
    assert len(vocab["ranking"]) == 2 and len(vocab["lens"]) == 2 * 2 * 2
    assert vocab["generic"][0]["token"] == vocab["generic_counts"][0]["token"]
    cfg = MemoryConfig(n_inputs=16, n_outputs=16, d=32, alpha=0.3, seed=1, target_seed=2, noise_token=3)
    mem = tmp_path / "memory"
    train_memory(cfg, steps=200, lr=32.0, log_every=200, spectrum_steps=[200]).save(mem)
    got = _cli_json(["lens", "vocab", str(mem), "--matrix", "W", "--k", "1", "--top", "1", "--json"], capsys)
    assert got["generic"][0]["token"] == 3 and got["ranking"][0]["top_token"] == 3
    top = [r for r in got["lens"] if r["side"] == "top"][0]
    assert top["token"] == 3 and top["component"] == got["ranking"][0]["component"]


def test_a_the_component_appears_in_the_language_models_ffn(nano_run):
    """On the project's own language model (conftest's nano run, 200 steps): " the" is found
    from held-out corpus text without being named, and an FFN output component promoting it
    appears early in training (measured once: none at step 0, rank 1 with z > 5 from step 4; the
    analysis is analyses/lens_lm.py)."""
    from mechtrunc.models.hf import load_model
    from mechtrunc.studies.lm import corpus_tokens

    out, _ = nano_run
    steps = sorted(int(p.name[4:]) for p in out.glob("step*"))
    tok = load_model(out / f"step{steps[-1]}", local_files_only=True).tokenizer
    found = mt.generic_tokens(corpus_tokens(n_windows=64), k=3, tokenizer=tok)
    the = tok.encode(" the", add_special_tokens=False)[0]
    assert the in found["token"].tolist()[:2], found
    df = mt.generic_components_by_step(((s, load_model(out / f"step{s}", local_files_only=True)) for s in (0, 8, steps[-1])),
                                       "mlp.W_out", [the])
    first = df[df["step"] == 0]
    assert (first["generic_rank"] > 1).all() and (first["generic_z"] < 4).all(), first
    for s in (8, steps[-1]):
        later = df[df["step"] == s]
        assert ((later["generic_rank"] == 1) & (later["generic_z"] > 5)).any(), later


def test_cli_lens_on_a_language_model_run_uses_the_runs_own_prompts(nano_run, capsys):
    """`lens logit|vocab` on a language-model run score the run's own held-out prompts (those of
    `patch` and `lm study`, in the training stories' format): the logit lens at the last
    resid_post gives the study's P(" the") and P(IO) on the same checkpoint and prompts; a
    checkpoint directory of the run is read the same way; the generic token of `lens vocab` is
    the most frequent real token of those prompts, never padding or end of text."""
    from collections import Counter

    from mechtrunc.models.lm.prompts import run_corpus, run_prompts
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.studies.lm import learning_curves, lm_study_prompts, run_steps

    run, _ = nano_run
    final = run_steps(run)[-1]
    study = learning_curves(run, lm_study_prompts(lm_tokenizer(), run_corpus(run), n=24), steps=[final])
    select = study[study["prompts"] == "ioi/select"].iloc[0]  # the select draw: prompt seed 0
    for model in (run, run / f"step{final}"):
        out = _cli_json(["lens", "logit", str(model), "--n", "24", "--json"], capsys)
        assert out["n_items"] == 24
        top = max(r["layer"] for r in out["rows"])
        last = [r for r in out["rows"] if r["label"] == "full model" and r["layer"] == top and r["site"] == "resid_post"][0]
        assert last["p_the"] == pytest.approx(select["p_the"], abs=1e-5)
        assert last["p_answer"] == pytest.approx(select["p_answer"], abs=1e-5)
    tok = lm_tokenizer()
    vocab = _cli_json(["lens", "vocab", str(run), "--n", "24", "--n-generic", "3", "--top", "1", "--json"], capsys)
    got = [g["token"] for g in vocab["generic"]]
    assert not set(got) & set(tok.all_special_ids), vocab["generic"]
    prompts = run_prompts(run, "ioi", n=24, seed=0)
    counts = Counter(t for text in prompts.texts for t in tok.encode(text, add_special_tokens=False)
                     if t not in tok.all_special_ids)
    assert got == [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
