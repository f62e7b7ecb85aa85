"""The grid engine (mechtrunc.core.engine.run_grid) on every adapted architecture: its rows equal the
reference (hook mode, one ``mt.evaluate`` per truncation) within 1e-5 in float32, and the fast
path (not the fallback) computed them for the MLP matrices, ``attn.W_V``, ``attn.W_O`` and
``attn.OV``; ``attn.W_Q`` takes the reference path with the same numbers.  ``mt.sweep`` over
plain truncations goes through the engine."""

from __future__ import annotations

import pytest
import torch

import mechtrunc as mt
from mechtrunc.core import engine
from mechtrunc.core.adapters import adapt
from helpers import random_prompts

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = ("mlp.W_in", "mlp.W_out", "attn.W_V", "attn.W_O", "attn.OV")


def _prompts(vocab: int, n: int = 5, T: int = 9, seed: int = 0) -> mt.PromptSet:
    return random_prompts(vocab, n, T, seed)


def check(model, prompts, truncations, fast=True, tol=1e-5, **kw):
    """Run the grid; every row equals its reference evaluation; every row took the expected path."""
    rows = list(engine.run_grid(model, prompts, truncations, **kw))
    assert rows[0].baseline
    assert len(rows) == 1 + len(set(truncations))
    for r in rows:
        iv = () if r.baseline else (r.truncation.__class__(**{**r.truncation.__dict__, "mode": "hook"}),)
        ref = mt.evaluate(model, prompts, *iv).iloc[0]
        assert set(r.metrics) == set(ref.index) - {"variant"}
        worst = max(abs(v - ref[k]) for k, v in r.metrics.items())
        assert worst < tol, (r.truncation, worst)
        if not r.baseline:
            assert r.path == ("fast" if fast else "reference"), r
    return rows


def grid(matrices, layers, keeps=(0.5, 0.1, 0)):
    return [mt.Truncate(m, layer=l, keep=k) for l in layers for m in matrices for k in keeps]


@pytest.mark.parametrize("fixture", ["random_toy", "neox_bridge", "neox_seq_bridge", "gpt2_bridge", "gptj_bridge"])
def test_engine_equals_reference_on_every_architecture(fixture, request):
    model = request.getfixturevalue(fixture)
    a = adapt(model)
    assert set(FAST) <= set(a.fast_matrices)
    prompts = _prompts(a.d_vocab)
    rows = check(model, prompts, grid(FAST, range(a.n_layers)), batch_size=7)  # several chunks
    assert {r.path for r in rows} == {"fast"}
    # keep 1 is the identity (the baseline's row); the layers come in order
    assert [r.layer for r in rows[1:]] == sorted(r.layer for r in rows[1:])


def test_query_and_key_take_the_reference_path(neox_bridge, random_toy):
    for model in (neox_bridge, random_toy):
        rows = check(model, _prompts(adapt(model).d_vocab, n=3), grid(("attn.W_Q", "attn.W_K"), [1], (0.25,)),
                     fast=False)
        assert [r.path for r in rows] == ["fast", "reference", "reference"]  # the baseline is the fast pass


def test_the_bare_hugging_face_neox_gives_the_bridge_table(neox_bridge):
    prompts = _prompts(512)
    ts = grid(FAST, [0, 2], (0.5, 0.1))
    a = list(engine.run_grid(neox_bridge, prompts, ts))
    b = list(engine.run_grid(neox_bridge.original_model, prompts, ts))
    assert {r.path for r in a} == {r.path for r in b} == {"fast"}
    for x, y in zip(a, b):
        assert (x.layer, x.matrix, x.keep) == (y.layer, y.matrix, y.keep)
        assert max(abs(x.metrics[k] - y.metrics[k]) for k in x.metrics) < 1e-5
    # no hook points: the reference path edits the fused query-key-value weight (weight mode)
    hf = neox_bridge.original_model
    t = mt.Truncate("attn.W_K", layer=1, keep=0.25)
    (_, r), ref = engine.run_grid(hf, prompts, [t]), mt.evaluate(hf, prompts, t).iloc[0]
    assert r.path == "reference" and max(abs(v - ref[k]) for k, v in r.metrics.items()) < 1e-6


def test_linear_memory():
    from mechtrunc.models.memory import LinearMemory, MemoryConfig

    mem = LinearMemory(MemoryConfig(n_inputs=24, n_outputs=12, d=16, init="random", seed=0, dtype="float32"))
    assert adapt(mem).fast_matrices == ("W",)
    rows = check(mem, mem.prompts(), [mt.Truncate("W", layer=0, keep=k) for k in (0.5, 0.25, 0)])
    assert rows[1].rank == 8 and rows[1].max_rank == 16


def test_sweep_uses_the_engine_for_plain_truncations(neox_bridge, monkeypatch):
    prompts = _prompts(512, n=4)
    ts = grid(("mlp.W_in", "attn.W_O"), [1, 2], (0.5, 0.1))
    ts = [ts[3], *ts, ts[0]]  # any order, repeats
    calls = []
    real = engine.run_grid
    monkeypatch.setattr(engine, "run_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = mt.sweep(neox_bridge, prompts, ts)
    assert calls == [1]
    assert list(fast["variant"]) == [t.label for t in ts]
    assert list(fast["layer"]) == [t.layer for t in ts] and list(fast["matrix"]) == [t.matrix for t in ts]
    for t, (_, row) in zip(ts, fast.iterrows()):
        ref = mt.evaluate(neox_bridge, prompts, t).iloc[0]
        assert max(abs(row[k] - ref[k]) for k in ref.index if k != "variant") < 1e-5
    # an entry the engine cannot run (an ablation): every entry takes the per-entry path
    mixed = mt.sweep(neox_bridge, prompts, [ts[0], mt.Ablate("mlp", layer=0)])
    assert calls == [1] and list(mixed["variant"]) == [ts[0].label, "ablate L0.mlp (zero)"]
    assert abs(mixed["loss"].iloc[0] - fast["loss"].iloc[0]) < 1e-5


def test_the_minimal_model_takes_the_reference_path():
    from mechtrunc.studies.dynamics.minimal import MinimalConfig, MinimalModel
    from mechtrunc.tasks.recall import RecallTask

    torch.manual_seed(0)
    cfg = MinimalConfig(bigrams="random", vocab_size=16, d_model=32, seq_len=16)
    model = MinimalModel(cfg)
    with torch.no_grad():  # a non-zero memory to truncate
        model.blocks[0].mlp.W_F.copy_(torch.randn_like(model.blocks[0].mlp.W_F))
    prompts = RecallTask(cfg.recall_config()).test_set(8).to_prompts()
    assert adapt(model).stack is None
    rows = check(model, prompts, [mt.Truncate("mlp.W_out", layer=0, keep=0.25)], fast=False)
    assert [r.path for r in rows] == ["reference", "reference"] and rows[1].rank == 8


def test_a_gpt2_variant_the_stack_does_not_write_takes_the_reference_path(small_tokenizer_dir):
    from mechtrunc.models.testing import tiny_bridge

    model = tiny_bridge("gpt2", small_tokenizer_dir, seed=4, n_layer=2, scale_attn_by_inverse_layer_idx=True)
    assert adapt(model).stack is None
    rows = check(model, _prompts(512, n=3), [mt.Truncate("mlp.W_in", layer=1, keep=0.25)], fast=False)
    assert [r.path for r in rows] == ["reference", "reference"]
