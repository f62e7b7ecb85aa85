"""Attribution reconciles with the model's logit difference, on the toy, GPT-NeoX and GPT-2;
attribute_change isolates the component an intervention touches; direction finders."""

import pytest
import torch

import mechtrunc as mt


def _random_prompts(vocab: int, n: int = 6, p: int = 12, seed: int = 0) -> mt.PromptSet:
    g = torch.Generator().manual_seed(seed)
    return mt.PromptSet(
        tokens=torch.randint(0, vocab, (n, p), generator=g), rows=torch.arange(n),
        pos=torch.randint(3, p, (n,), generator=g), answer=torch.randint(0, vocab, (n,), generator=g),
        competitors=torch.randint(0, vocab, (n, 2), generator=g), competitor_names=("a", "b"),
    )


@pytest.fixture(params=["toy", "neox", "gpt2"])
def model_and_vocab(request, random_toy, neox_bridge, gpt2_bridge):
    return {"toy": (random_toy, 65), "neox": (neox_bridge, 500), "gpt2": (gpt2_bridge, 500)}[request.param]


def test_parts_add_up_to_logit_difference(model_and_vocab):
    model, vocab = model_and_vocab
    prompts = _random_prompts(vocab)
    df = mt.attribute(model, prompts)
    for comp in ("a", "b"):
        sub = df[df.competitor == comp]
        parts = sub[sub.kind != "total"].attribution.sum()
        total = sub[sub.kind == "total"].attribution.item()
        assert abs(parts - total) < 1e-4
        assert abs(total - df.attrs["logit_diff"][comp]) < 1e-4
        # nothing unexplained without edits
        assert abs(sub[sub.kind == "other"].attribution.item()) < 1e-5
    adapter = mt.adapt(model)
    n_heads = (df.kind == "head").sum() // 2
    assert n_heads == adapter.n_layers * adapter.n_heads


def test_logit_difference_matches_evaluate(model_and_vocab):
    model, vocab = model_and_vocab
    prompts = _random_prompts(vocab, seed=3)
    df = mt.attribute(model, prompts)
    row = mt.evaluate(model, prompts).iloc[0]
    assert df.attrs["logit_diff"]["a"] == pytest.approx(row["logit_diff_a"], abs=1e-5)


def test_attribution_reconciles_under_interventions(model_and_vocab):
    model, vocab = model_and_vocab
    prompts = _random_prompts(vocab, seed=1)
    d = mt.adapt(model).d_model
    ivs = (mt.Truncate("attn.W_O", layer=0, keep=0.25, mode="hook"),
           mt.ProjectOut("resid_post", layer=1, directions=torch.randn(2, d, generator=torch.Generator().manual_seed(0))))
    df = mt.attribute(model, prompts, *ivs)
    sub = df[df.competitor == "a"]
    assert abs(sub[sub.kind == "total"].attribution.item() - df.attrs["logit_diff"]["a"]) < 1e-4
    # the residual-stream projection is visible as the 'other' part
    assert abs(sub[sub.kind == "other"].attribution.item()) > 1e-4


def test_attribute_change_isolates_ablated_mlp(model_and_vocab):
    model, vocab = model_and_vocab
    prompts = _random_prompts(vocab, seed=2)
    last = mt.adapt(model).n_layers - 1
    ch = mt.attribute_change(model, prompts, mt.Ablate("mlp", layer=last))
    sub = ch[ch.competitor == "a"].set_index("component")
    # the ablated MLP's direct effect goes to exactly zero...
    assert sub.loc[f"L{last}.mlp", "intervened"] == pytest.approx(0.0, abs=1e-6)
    # ...and the total change equals the change of the model's logit difference
    ld = ch.attrs["logit_diff"]
    assert sub.loc["total", "change"] == pytest.approx(ld["intervened"]["a"] - ld["clean"]["a"], abs=1e-4)
    # without a final LayerNorm, upstream heads' direct effects cannot change (with one, they
    # change through the final LayerNorm's scale, which depends on the ablated MLP too)
    if mt.adapt(model).final_ln() is None:
        upstream = [c for c in sub.index if c.startswith("L0H")]
        assert sub.loc[upstream, "change"].abs().max() < 1e-5


def test_trained_toy_noise_components(trained_toy):
    model, task, prompts = trained_toy
    noise = task.config.noise_id
    ranking = mt.rank_components(model, layer=1, tokens=[noise], prompts=prompts)
    assert list(ranking.columns[:4]) == ["component", "singular_value", "alignment", "weight_score"]
    assert ranking["activation_score"].is_monotonic_decreasing
    top = tuple(int(i) for i in ranking["component"].head(4))
    full = mt.evaluate(model, prompts).iloc[0]
    removed = mt.evaluate(model, prompts, mt.RemoveComponents("mlp.W_out", layer=1, indices=top)).iloc[0]
    assert ranking["activation_score"].iloc[0] > 0
    # removing the components that push the noise token lowers P(noise)
    assert removed["p_noise"] < full["p_noise"]
    # token directions are the centred unembedding columns on the toy
    d = mt.token_directions(model, [noise])
    W_U = model.W_U.detach()
    assert torch.allclose(d[0], W_U[:, noise] - W_U.mean(1), atol=1e-6)


def test_token_ids_errors(random_toy, neox_bridge):
    with pytest.raises(ValueError, match="out of range"):
        mt.token_ids(random_toy, [65])
    with pytest.raises(ValueError, match="no tokenizer"):
        mt.token_ids(random_toy, ["a"])
    with pytest.raises(ValueError, match="not a single token"):
        mt.token_ids(neox_bridge, ["w1 w2"])
    with pytest.raises(ValueError, match="mlp.W_out"):
        mt.rank_components(random_toy, 1, [2], matrix="mlp.W_in")


def test_sweep_rows_match_single_evaluations(random_toy):
    prompts = _random_prompts(65, seed=4)
    grid = [None, mt.Truncate("mlp.W_in", layer=1, keep=0.5), [mt.Ablate("mlp", layer=0), mt.Ablate("attn", layer=1)]]
    df = mt.sweep(random_toy, prompts, grid)
    assert list(df["variant"]) == ["full", "truncate L1.mlp.W_in keep=0.5", "ablate L0.mlp (zero) + ablate L1.attn (zero)"]
    assert df.loc[1, "kind"] == "truncate" and df.loc[1, "matrix"] == "mlp.W_in" and df.loc[1, "keep"] == 0.5
    single = mt.evaluate(random_toy, prompts, grid[1]).iloc[0]
    assert df.loc[1, "p_answer"] == pytest.approx(single["p_answer"], abs=1e-7)
    assert df.loc[0, "p_answer"] == pytest.approx(mt.evaluate(random_toy, prompts).iloc[0]["p_answer"], abs=1e-7)


def test_token_ids_outside_vocabulary_are_rejected(random_toy):
    prompts = _random_prompts(65)
    bad = mt.PromptSet(prompts.tokens, prompts.rows, prompts.pos, prompts.answer + 100, prompts.competitors,
                       prompts.competitor_names)
    with pytest.raises(ValueError, match=r"answer holds token id \d+, outside the model's vocabulary \(valid ids 0..64\)"):
        mt.evaluate(random_toy, bad)
