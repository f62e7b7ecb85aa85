"""The toy Transformer: TransformerLens hook and weight names, the paper's frozen / identity
parameters, the two attention paths, FFN variants, persistence and its error messages."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mechtrunc import ToyConfig, ToyTransformer
from mechtrunc.models.toy import FFN_KINDS

D, L, CTX, VOCAB = 32, 2, 32, 65

pytestmark = pytest.mark.usefixtures("single_thread")



def _toy(**kw) -> ToyTransformer:
    args = dict(d_model=D, n_ctx=CTX, seed=3)
    args.update(kw)
    return ToyTransformer(ToyConfig(**args)).eval()


def _tokens(b=3, p=16, seed=0, vocab=VOCAB):
    return torch.randint(0, vocab, (b, p), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def toy():
    return _toy()


# ------------------------------------------------------------------------------------------
# names and shapes
# ------------------------------------------------------------------------------------------
def test_hook_names_exist(toy):
    names = set(toy.hook_dict)
    expected = {"hook_embed", "hook_pos_embed"}
    for l in range(L):
        expected |= {f"blocks.{l}.{h}" for h in
                     ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")}
        expected |= {f"blocks.{l}.attn.{h}" for h in
                     ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")}
        expected |= {f"blocks.{l}.mlp.{h}" for h in ("hook_pre", "hook_post")}
    assert expected <= names, expected - names


def test_config_defaults():
    cfg = ToyConfig()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        2, 256, 1, 256, 1024, 65, 256)
    assert cfg.ffn == ["relu", "relu"]
    assert cfg.identity_query and cfg.freeze_embed and cfg.freeze_unembed and cfg.freeze_pos
    assert FFN_KINDS == ("relu", "linear", "none")


def test_weight_names_and_shapes():
    m = _toy(n_heads=2)
    h, dh = 2, D // 2
    assert m.W_E.shape == (VOCAB, D)
    assert m.W_pos.shape == (CTX, D)
    assert m.W_U.shape == (D, VOCAB)
    sd = m.state_dict()
    for l in range(L):
        a, f = m.blocks[l].attn, m.blocks[l].mlp
        assert a.W_Q.shape == a.W_K.shape == a.W_V.shape == (h, D, dh)
        assert a.W_O.shape == (h, dh, D)
        assert f.W_in.shape == (D, 4 * D) and f.W_out.shape == (4 * D, D)
        for n in ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out"):
            assert f"blocks.{l}.{n}" in sd
    assert {"W_E", "W_pos", "W_U"} <= set(sd)
    # no biases, no LayerNorm anywhere
    assert not any("b_" in k or "ln" in k.lower() for k in sd)
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == VOCAB * D * 2 + CTX * D + L * (4 * D * D + 2 * 4 * D * D)


def test_identity_query_and_frozen_defaults():
    m = _toy(n_heads=2)
    for block in m.blocks:
        Wq = block.attn.W_Q  # [h, d, dh]
        full = Wq.permute(1, 0, 2).reshape(D, D)
        assert torch.equal(full, torch.eye(D))
        assert not Wq.requires_grad
        for name in ("W_K", "W_V", "W_O"):
            assert getattr(block.attn, name).requires_grad
        assert block.mlp.W_in.requires_grad and block.mlp.W_out.requires_grad
    assert not m.W_E.requires_grad and not m.W_pos.requires_grad and not m.W_U.requires_grad
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{l}.{n}" for l in range(L) for n in
                         ("attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")}


def test_unfrozen_and_trained_query_options():
    m = _toy(identity_query=False, freeze_embed=False, freeze_unembed=False, freeze_pos=False)
    assert m.W_E.requires_grad and m.W_pos.requires_grad and m.W_U.requires_grad
    assert m.blocks[0].attn.W_Q.requires_grad
    assert not torch.equal(m.blocks[0].attn.W_Q[0], torch.eye(D))


# ------------------------------------------------------------------------------------------
# initialisation: the released code's, parameter by parameter
# ------------------------------------------------------------------------------------------
_INIT_CFG = dict(d_model=64, n_ctx=128, d_vocab=65, seed=0)


@pytest.fixture(scope="module")
def init_toy():
    return ToyTransformer(ToyConfig(**_INIT_CFG))


def _param(model, name):
    obj = model
    for part in name.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


# name -> ("normal", std) for N(0, std^2), or ("uniform", bound) for U(-bound, bound)
_D = _INIT_CFG["d_model"]
_INITS = {
    "W_E": ("normal", 1.0),  # nn.Embedding
    "W_pos": ("normal", 1.0),  # torch.randn
    "W_U": ("uniform", 1 / math.sqrt(_D)),  # nn.Linear(d, vocab): std 1/sqrt(3 d)
    **{f"blocks.{l}.attn.{w}": ("uniform", 1 / math.sqrt(_D)) for l in (0, 1) for w in ("W_K", "W_V", "W_O")},
    **{f"blocks.{l}.mlp.W_in": ("uniform", 1 / math.sqrt(_D)) for l in (0, 1)},  # nn.Linear(d, 4d)
    **{f"blocks.{l}.mlp.W_out": ("uniform", 1 / math.sqrt(4 * _D)) for l in (0, 1)},  # nn.Linear(4d, d)
}


@pytest.mark.parametrize("name", list(_INITS))
def test_parameter_init_distribution(init_toy, name):
    W = _param(init_toy, name).detach().double()
    kind, scale = _INITS[name]
    assert abs(float(W.mean())) < 0.05 * scale * 4
    if kind == "normal":
        assert float(W.std()) == pytest.approx(scale, rel=0.05), name
        assert float(W.abs().max()) > 2.5 * scale  # unbounded: not a uniform of the same std
    else:
        assert float(W.abs().max()) <= scale, name  # inside the bound
        assert float(W.abs().max()) > 0.97 * scale  # and fills it
        assert float(W.std()) == pytest.approx(scale / math.sqrt(3), rel=0.05), name


def test_frozen_and_fixed_parameters(init_toy):
    for name in ("W_E", "W_pos", "W_U", "blocks.0.attn.W_Q", "blocks.1.attn.W_Q"):
        assert not _param(init_toy, name).requires_grad, name
    for l in (0, 1):
        assert torch.equal(init_toy.blocks[l].attn.W_Q[0], torch.eye(_D))
        for w in ("W_K", "W_V", "W_O"):
            assert getattr(init_toy.blocks[l].attn, w).requires_grad


def test_normal_unembed_option_keeps_the_rest():
    released = ToyTransformer(ToyConfig(**_INIT_CFG))
    normal = ToyTransformer(ToyConfig(**_INIT_CFG, init="normal_unembed"))
    assert float(normal.W_U.std()) == pytest.approx(1 / math.sqrt(_D), rel=0.05)
    assert float(normal.W_U.abs().max()) > 2.5 / math.sqrt(_D)
    sr, sn = released.state_dict(), normal.state_dict()
    assert all(torch.equal(sr[k], sn[k]) for k in sr if k != "W_U")
    with pytest.raises(ValueError, match="unknown init 'xavier'; valid: released, normal_unembed"):
        ToyConfig(init="xavier")


# ------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------
def test_forward_matches_manual_computation(toy):
    toks = _tokens()
    with torch.no_grad():
        x = toy.W_E[toks] + toy.W_pos[: toks.shape[1]]
        p = toks.shape[1]
        mask = torch.ones(p, p, dtype=torch.bool).tril()
        for blk in toy.blocks:
            a = blk.attn
            q = torch.einsum("bpd,hde->bphe", x, a.W_Q)
            k = torch.einsum("bpd,hde->bphe", x, a.W_K)
            v = torch.einsum("bpd,hde->bphe", x, a.W_V)
            s = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(D)
            s = s.masked_fill(~mask, float("-inf")).softmax(-1)
            z = torch.einsum("bhqk,bkhe->bqhe", s, v)
            x = x + torch.einsum("bphe,hed->bpd", z, a.W_O)
            x = x + torch.relu(x @ blk.mlp.W_in) @ blk.mlp.W_out
        want = x @ toy.W_U
        got = toy(toks)
    assert got.shape == (3, 16, VOCAB)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_run_with_cache_and_causal_pattern(toy):
    toks = _tokens(p=12)
    logits, cache = toy.run_with_cache(toks)
    assert torch.allclose(logits, toy(toks), atol=1e-5)
    for l in range(L):
        pat = cache[f"blocks.{l}.attn.hook_pattern"]
        assert pat.shape == (3, 1, 12, 12)
        assert torch.allclose(pat.sum(-1), torch.ones(3, 1, 12), atol=1e-6)
        upper = torch.ones(12, 12, dtype=torch.bool).triu(1)
        assert (pat[..., upper] == 0).all()
        assert (pat[..., ~upper] > 0).all()
        assert cache[f"blocks.{l}.attn.hook_z"].shape == (3, 12, 1, D)
        assert cache[f"blocks.{l}.attn.hook_q"].shape == (3, 12, 1, D)
        assert cache[f"blocks.{l}.attn.hook_attn_scores"].shape == (3, 1, 12, 12)
        assert cache[f"blocks.{l}.mlp.hook_pre"].shape == (3, 12, 4 * D)
        assert (cache[f"blocks.{l}.mlp.hook_post"] >= 0).all()
        # residual bookkeeping
        pre, mid, post = (cache[f"blocks.{l}.hook_resid_{s}"] for s in ("pre", "mid", "post"))
        assert torch.allclose(mid, pre + cache[f"blocks.{l}.hook_attn_out"], atol=1e-5)
        assert torch.allclose(post, mid + cache[f"blocks.{l}.hook_mlp_out"], atol=1e-5)
    assert torch.allclose(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    # embeddings in TransformerLens shapes, [batch, pos, d_model]
    assert cache["hook_embed"].shape == cache["hook_pos_embed"].shape == (3, 12, D)
    assert torch.equal(cache["hook_embed"], toy.W_E[toks])
    assert torch.equal(cache["hook_pos_embed"][1], toy.W_pos[:12])
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])
    assert torch.allclose(logits, cache["blocks.1.hook_resid_post"] @ toy.W_U, atol=1e-5)
    # first position attends only to itself
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"][:, :, 0, 0], torch.ones(3, 1))


def test_fused_and_explicit_attention_paths_agree(toy):
    toks = _tokens(b=4, p=CTX, seed=1)
    with torch.no_grad():
        fast = toy(toks)
        _, cache = toy.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
        assert torch.allclose(cache["blocks.1.hook_resid_post"] @ toy.W_U, fast, atol=1e-5)
        seen = []
        slow = toy.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: seen.append(1)),
                                                   ("blocks.1.attn.hook_pattern", lambda a, hook: seen.append(1))])
    assert len(seen) == 2  # the explicit path actually ran in both layers
    assert (fast - slow).abs().max() < 1e-5
    assert not torch.equal(fast, torch.zeros_like(fast))


def test_pattern_hook_can_edit_attention(toy):
    toks = _tokens(p=8)
    uniform = lambda pat, hook: torch.ones_like(pat).tril() / torch.arange(1, 9).view(1, 1, 8, 1)
    with torch.no_grad():
        base = toy(toks)
        edited = toy.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
        # the same edit done by hand on the scores: all keys equal -> uniform causal attention
        zero_scores = lambda s, hook: torch.zeros_like(s).masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
        via_scores = toy.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_attn_scores", zero_scores)])
    assert (edited - base).abs().max() > 1e-3
    assert torch.allclose(edited, via_scores, atol=1e-5)


def test_sequence_longer_than_context_raises(toy):
    with pytest.raises(ValueError, match=f"sequence length {CTX + 1} exceeds n_ctx {CTX}"):
        toy(_tokens(p=CTX + 1))


# ------------------------------------------------------------------------------------------
# FFN variants
# ------------------------------------------------------------------------------------------
def test_ffn_kinds():
    toks = _tokens(p=10)
    relu, lin, none = _toy(ffn="relu"), _toy(ffn="linear"), _toy(ffn="none")
    assert relu.cfg.ffn == ["relu", "relu"] and not relu.cfg.attn_only
    assert none.cfg.attn_only and all(b.mlp is None for b in none.blocks)
    _, c = lin.run_with_cache(toks)
    assert torch.equal(c["blocks.0.mlp.hook_post"], c["blocks.0.mlp.hook_pre"])
    assert (c["blocks.0.mlp.hook_pre"] < 0).any()
    _, c = relu.run_with_cache(toks)
    assert torch.equal(c["blocks.0.mlp.hook_post"], torch.relu(c["blocks.0.mlp.hook_pre"]))
    # attention-only: resid_post == resid_mid and no MLP hooks fire
    _, c = none.run_with_cache(toks)
    assert torch.equal(c["blocks.1.hook_resid_post"], c["blocks.1.hook_resid_mid"])
    assert "blocks.0.mlp.hook_pre" not in c and "blocks.0.hook_mlp_out" not in c
    # same seed -> same attention weights whatever the FFN kind, different outputs
    assert torch.equal(relu.blocks[0].attn.W_K, lin.blocks[0].attn.W_K)
    with torch.no_grad():
        assert (relu(toks) - lin(toks)).abs().max() > 1e-3


def test_ffn_per_layer_list():
    m = _toy(ffn=["none", "relu"])
    assert m.cfg.ffn == ["none", "relu"] and not m.cfg.attn_only
    assert m.blocks[0].mlp is None and m.blocks[1].mlp.kind == "relu"
    m3 = _toy(n_layers=3, ffn=["linear", "none", "relu"])
    assert [b.mlp.kind if b.mlp else None for b in m3.blocks] == ["linear", None, "relu"]
    _, c = m.run_with_cache(_tokens(p=6))
    assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.0.hook_resid_mid"])
    assert not torch.equal(c["blocks.1.hook_resid_post"], c["blocks.1.hook_resid_mid"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ffn="gelu"), r"unknown ffn kind 'gelu'; valid: relu, linear, none"),
        (dict(ffn=["relu"]), r"ffn lists 1 kinds for 2 layers"),
        (dict(n_layers=0), r"n_layers must be >= 1, got 0"),
        (dict(d_model=30, n_heads=4), r"d_model 30 is not divisible by n_heads 4"),
        (dict(d_head=8), r"identity_query needs n_heads \* d_head == d_model"),
        (dict(d_vocab=0), r"d_vocab must be >= 1, got 0"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToyConfig(**{"d_model": D, **kwargs})


# ------------------------------------------------------------------------------------------
# seeds and persistence
# ------------------------------------------------------------------------------------------
def test_same_seed_same_init_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = _toy(seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)  # model init does not consume the global RNG
    b, c = _toy(seed=5), _toy(seed=6)
    for (na, pa), (nb, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    assert not torch.equal(a.W_E, c.W_E)
    assert not torch.equal(a.blocks[0].mlp.W_in, c.blocks[0].mlp.W_in)


def test_save_load_roundtrip(tmp_path):
    m = _toy(ffn=["linear", "relu"], n_heads=2)
    with torch.no_grad():
        m.blocks[0].attn.W_K.add_(0.5)  # not the seed's init any more
    toks = _tokens()
    out = m.save(tmp_path / "run", extra={"note": "hi"})
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    meta = json.loads((out / "config.json").read_text())
    assert meta["note"] == "hi" and meta["model"]["ffn"] == ["linear", "relu"]
    loaded = ToyTransformer.load(out)
    assert loaded.cfg == m.cfg
    with torch.no_grad():
        assert torch.equal(loaded(toks), m(toks))
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.W_E.requires_grad and loaded.blocks[0].attn.W_K.requires_grad


def test_load_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"model directory .*nope.* does not exist"):
        ToyTransformer.load(missing)


def test_load_dir_without_files(tmp_path):
    with pytest.raises(ValueError, match=r"not a mechtrunc model directory: config\.json is missing"):
        ToyTransformer.load(tmp_path)
    _toy().save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"not a mechtrunc model directory: model\.safetensors is missing"):
        ToyTransformer.load(tmp_path / "m")


def test_load_corrupt_config(tmp_path):
    d = _toy().save(tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"corrupt model directory"):
        ToyTransformer.load(d)
    (d / "config.json").write_text(json.dumps({"model": {"d_model": D, "n_ctx": CTX, "bogus": 1}}))
    with pytest.raises(ValueError, match=r"corrupt model directory.*bogus"):
        ToyTransformer.load(d)
    # a config whose sizes do not match the weights
    (d / "config.json").write_text(json.dumps({"model": {"d_model": 2 * D, "n_ctx": CTX}}))
    with pytest.raises(ValueError, match=r"corrupt model directory"):
        ToyTransformer.load(d)


def test_load_truncated_safetensors(tmp_path):
    d = _toy().save(tmp_path / "m")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"corrupt model directory"):
        ToyTransformer.load(d)
    w.write_bytes(b"")
    with pytest.raises(ValueError, match=r"corrupt model directory"):
        ToyTransformer.load(d)
