"""The Llama family (RMSNorm, a gated MLP; Llama and Qwen2) on tiny random models loaded through
TransformerBridge: the grid engine's fast path, weight mode and hook mode each equal truncating
the same Hugging Face weight by SVD in plain torch, within 1e-5 (``mlp.W_in`` is ``up_proj``,
``mlp.W_gate`` is ``gate_proj``, ``mlp.W_out`` is ``down_proj``, the attention matrices are
``q/k/v/o_proj``); grouped key-value heads refuse the matrices whose layout they change; an
architecture mechtrunc does not know is refused, never run with another's assumptions."""

from __future__ import annotations

import pytest
import torch

import mechtrunc as mt
from mechtrunc.core import engine
from mechtrunc.core.adapters import adapt
from mechtrunc.core.metrics import metrics_from_logits
from mechtrunc.models.testing import tiny_bridge
from helpers import random_prompts

pytestmark = pytest.mark.usefixtures("single_thread")

#: mechtrunc's name -> the Hugging Face projection it is (``model.layers[l].<part>.<name>``)
HF_NAMES = {"mlp.W_in": ("mlp", "up_proj"), "mlp.W_gate": ("mlp", "gate_proj"), "mlp.W_out": ("mlp", "down_proj"),
            "attn.W_Q": ("self_attn", "q_proj"), "attn.W_K": ("self_attn", "k_proj"),
            "attn.W_V": ("self_attn", "v_proj"), "attn.W_O": ("self_attn", "o_proj")}
FAST = ("mlp.W_in", "mlp.W_gate", "mlp.W_out", "attn.W_V", "attn.W_O")


def _bridge(arch: str, tokenizer_dir, seed: int, **config):
    """A tiny random bridge whose RMSNorm weights are not all ones (so the norms are tested too)."""
    model = tiny_bridge(arch, tokenizer_dir, seed=seed, **config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.original_model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def llama(small_tokenizer_dir):
    return _bridge("llama", small_tokenizer_dir, seed=5)


@pytest.fixture(scope="module")
def qwen2(small_tokenizer_dir):  # biased query/key/value projections
    return _bridge("qwen2", small_tokenizer_dir, seed=6)


@pytest.fixture(scope="module")
def llama_gqa(small_tokenizer_dir):
    return _bridge("llama", small_tokenizer_dir, seed=7, num_key_value_heads=2)


def _prompts(vocab: int = 512, n: int = 5, T: int = 9, seed: int = 0) -> mt.PromptSet:
    return random_prompts(vocab, n, T, seed, names=("a", "b"))


@torch.no_grad()
def plain_torch(model, prompts: mt.PromptSet, matrix: str | None = None, layer: int = 0, rank: int = 0) -> dict:
    """The metrics of the bare Hugging Face model with ``matrix``'s weight replaced by its
    rank-``rank`` SVD truncation, in plain torch (no mechtrunc on the model path)."""
    hf = model.original_model
    lin = None
    if matrix is not None:
        part, name = HF_NAMES[matrix]
        lin = getattr(getattr(hf.model.layers[layer], part), name)
        lin = getattr(lin, "original_component", None) or lin
        W = lin.weight.detach().clone()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        lin.weight.copy_(((U[:, :rank] * S[:rank]) @ Vh[:rank]).to(W.dtype))
    try:
        logits = hf(prompts.tokens).logits[prompts.rows, prompts.pos]
    finally:
        if lin is not None:
            lin.weight.copy_(W)
    return metrics_from_logits(logits, prompts)


def _worst(a: dict, b) -> float:
    return max(abs(float(a[k]) - float(b[k])) for k in a if k not in ("variant", "n_items"))


def check_three_modes(model, matrices, layers, prompts, tol=1e-5):
    """Engine (fast path), weight mode and hook mode equal plain-torch SVD truncation."""
    a = adapt(model)
    base = plain_torch(model, prompts)
    ts = [mt.Truncate(m, layer=l, rank=r) for l in layers for m in matrices
          for r in (1, a.matrix(m, l).max_rank // 2)]
    rows = list(engine.run_grid(model, prompts, ts, batch_size=7))
    assert rows[0].baseline and _worst(base, rows[0].metrics) < tol
    for t, row in zip(ts, rows[1:]):
        assert (row.layer, row.matrix, row.rank) == (t.layer, t.matrix, t.rank)
        assert row.path == ("fast" if t.matrix in a.fast_matrices else "reference"), row
        ref = plain_torch(model, prompts, t.matrix, t.layer, t.rank)
        assert _worst(ref, base) > 1e-4, t  # the truncation changes the numbers (10x the tolerance)
        assert _worst(ref, row.metrics) < tol, (t, "engine", _worst(ref, row.metrics))
        for mode in ("weight", "hook"):
            got = mt.evaluate(model, prompts, mt.Truncate(t.matrix, layer=t.layer, rank=t.rank, mode=mode)).iloc[0]
            assert _worst(ref, got) < tol, (t, mode, _worst(ref, got))
    return rows


@pytest.mark.parametrize("fixture", ["llama", "qwen2"])
def test_three_modes_equal_plain_torch_svd(fixture, request):
    model = request.getfixturevalue(fixture)
    a = adapt(model)
    assert a.gated_mlp and a.ln_is_rms and a.n_kv_heads is None
    assert set(FAST) <= set(a.fast_matrices)
    check_three_modes(model, FAST, [0, 2], _prompts())


def test_query_key_and_ov_on_the_gated_family(llama):
    rows = check_three_modes(llama, ("attn.W_Q", "attn.W_K"), [1], _prompts(n=3))
    assert {r.path for r in rows[1:]} == {"reference"}
    # attn.OV: the engine and both modes agree (its reference is the per-head product's SVD)
    prompts = _prompts(n=3)
    t = mt.Truncate("attn.OV", layer=1, keep=0.5)
    (_, row) = engine.run_grid(llama, prompts, [t])
    assert row.path == "fast"
    for mode in ("weight", "hook"):
        got = mt.evaluate(llama, prompts, mt.Truncate("attn.OV", layer=1, keep=0.5, mode=mode)).iloc[0]
        assert _worst(row.metrics, got) < 1e-5


def test_the_gate_hook_is_not_w_in(llama):
    """Projecting the gate's output on W_in's basis (what a hook at ``mlp.hook_pre`` did) gives
    other numbers: the hook W_in truncation uses is ``up_proj``'s own output."""
    a = adapt(llama)
    assert a.out_hook("mlp.W_in", 0) == "blocks.0.mlp.hook_pre_linear"
    assert a.out_hook("mlp.W_gate", 0) == "blocks.0.mlp.hook_pre"
    assert a.out_hook("mlp.W_out", 0) == "blocks.0.hook_mlp_out"
    prompts = _prompts()
    r = a.matrix("mlp.W_in", 0).max_rank // 2
    up, gate = (plain_torch(llama, prompts, m, 0, r) for m in ("mlp.W_in", "mlp.W_gate"))
    assert _worst(up, gate) > 1e-3


def test_grouped_key_value_heads(llama_gqa):
    a = adapt(llama_gqa)
    assert a.n_kv_heads == 2 and a.n_heads == 4
    # every matrix whose layout grouping leaves alone: all three modes equal plain torch
    check_three_modes(llama_gqa, ("mlp.W_in", "mlp.W_gate", "mlp.W_out", "attn.W_O", "attn.W_Q"), [1], _prompts(n=3))
    # those it changes are refused, by name, before anything runs
    for m in ("attn.W_K", "attn.W_V", "attn.OV"):
        msg = rf"matrix '{m}' is not supported on a model with grouped key-value heads \(2 key-value heads for 4"
        with pytest.raises(ValueError, match=msg):
            mt.evaluate(llama_gqa, _prompts(n=2), mt.Truncate(m, layer=0, keep=0.5))
        with pytest.raises(ValueError, match=msg):
            list(engine.run_grid(llama_gqa, _prompts(n=2), [mt.Truncate(m, layer=0, keep=0.5)]))


def test_w_gate_exists_only_in_a_gated_mlp(neox_bridge, llama):
    with pytest.raises(ValueError, match=r"matrix 'mlp\.W_gate' exists only in a gated MLP \(the Llama family\); "
                                         r"this bridge model's MLP is not gated"):
        adapt(neox_bridge).matrix("mlp.W_gate", 0)
    assert adapt(llama).matrix("mlp.W_gate", 0).get().shape == (64, 128)
    # a study grid takes it on a gated MLP and refuses it elsewhere, before any work
    from mechtrunc.studies.grid import Grid

    grid = Grid(layers=[1], matrices=("mlp.W_gate", "mlp.W_in"), keeps=(0.5,))
    assert grid.resolve(llama) == ([1], ["mlp.W_gate", "mlp.W_in"], [0.5])
    with pytest.raises(ValueError, match=r"matrix 'mlp\.W_gate' exists only in a gated MLP"):
        grid.resolve(neox_bridge)
    prompts = _prompts(n=3)
    table = mt.sweep(llama, prompts, [mt.Truncate("mlp.W_gate", layer=1, rank=16)])
    assert _worst(plain_torch(llama, prompts, "mlp.W_gate", 1, 16), table.iloc[0]) < 1e-5


def test_an_unknown_architecture_is_refused(small_tokenizer_dir):
    """A bridge over an architecture mechtrunc does not know raises when adapted, naming it and
    listing the known ones; a bare Hugging Face model other than GPT-NeoX is refused too."""
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    hf = OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                  num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=64)).eval()
    tok = AutoTokenizer.from_pretrained(str(small_tokenizer_dir))
    bridge = TransformerBridge.boot_transformers("facebook/opt-125m", hf_model=hf, tokenizer=tok, device="cpu")
    known = r"known architectures: GPTNeoXForCausalLM, GPT2LMHeadModel, GPTJForCausalLM, LlamaForCausalLM, " \
            r"Qwen2ForCausalLM"
    with pytest.raises(ValueError, match=rf"mechtrunc does not know the architecture 'OPTForCausalLM'.*{known}"):
        adapt(bridge)
    with pytest.raises(ValueError, match=r"does not know the architecture 'OPTForCausalLM'"):
        mt.evaluate(bridge, _prompts(n=2), mt.Truncate("mlp.W_in", layer=0, keep=0.5, mode="hook"))
    with pytest.raises(TypeError, match=r"got OPTForCausalLM"):
        adapt(hf)
