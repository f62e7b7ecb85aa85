"""The grid engine (mechtrunc.core.engine.run_grid) gives the reference evaluation's numbers
(``mt.evaluate(model, prompts, Truncate(...))``) on the toy model, a tiny GPT-NeoX and GPT-2;
its decomposition cache is hit on a rerun and invalidated by a weight change; bad input is
rejected with a clear error.  (Every architecture and matrix: tests/test_engine_architectures.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechtrunc as mt
from mechtrunc.core import engine as ge
from mechtrunc.core.decomposition import SVDCache, truncation_basis
from mechtrunc.core.results import is_metric
from mechtrunc.studies import truncation_study

pytestmark = pytest.mark.usefixtures("single_thread")

MATS = ("mlp.W_in", "mlp.W_out")


def _prompts(vocab: int, n: int = 9, T: int = 10, seed: int = 0) -> mt.PromptSet:
    """Random prompts with read positions anywhere (not only the last token) and two items on
    some sequences."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, T), generator=g)
    rows = torch.cat([torch.arange(n), torch.tensor([0, n - 1])])
    pos = torch.cat([torch.randint(2, T, (n,), generator=g), torch.tensor([1, 6])])
    k = len(rows)
    return mt.PromptSet(tokens=tokens, rows=rows, pos=pos, answer=torch.randint(0, vocab, (k,), generator=g),
                        competitors=torch.randint(0, vocab, (k, 2), generator=g), competitor_names=("the", "x"))


def _truncations(configs, **kw):
    return [mt.Truncate(m, layer=l, keep=k, **kw) for l, m, k in configs]


def _assert_matches_reference(model, prompts, configs, **kw):
    results = list(ge.run_grid(model, prompts, _truncations(configs), **kw))
    assert results[0].baseline and results[0].matrix == "none"
    assert {(r.layer, r.matrix, r.keep) for r in results[1:]} == {(l, m, float(k)) for l, m, k in configs}
    worst = 0.0
    for r in results:
        ivs = () if r.baseline else (mt.Truncate(r.matrix, layer=r.layer, keep=r.keep),)
        ref = mt.evaluate(model, prompts, *ivs).iloc[0]
        assert set(r.metrics) == set(ref.index) - {"variant"}
        worst = max(worst, max(abs(v - ref[k]) for k, v in r.metrics.items()))
    assert worst < 1e-5  # the engine's one tolerance (docs/api.md)
    return results


def test_neox_equals_reference_in_chunks(neox_bridge):
    prompts = _prompts(512)
    configs = [(l, m, k) for l in range(3) for m in MATS for k in (1, 0.5, 0.1, 0)]
    results = _assert_matches_reference(neox_bridge, prompts, configs, batch_size=5)  # several chunks
    by = {(r.layer, r.matrix, r.keep): r for r in results[1:]}
    assert by[(0, "mlp.W_in", 1.0)].identity and by[(0, "mlp.W_in", 1.0)].rank == 64
    assert by[(2, "mlp.W_out", 0.1)].rank == 6 and not by[(2, "mlp.W_out", 0.1)].identity
    # the layers come in order, each configuration once
    assert [r.layer for r in results[1:]] == sorted(r.layer for r in results[1:])
    # the Hugging Face model under the bridge gives the same table
    raw = list(ge.run_grid(neox_bridge.original_model, prompts, _truncations(configs), batch_size=64))
    for a, b in zip(results, raw):
        assert max(abs(a.metrics[k] - b.metrics[k]) for k in a.metrics) < 1e-5


def test_toy_equals_reference(random_toy):
    _assert_matches_reference(random_toy, _prompts(65, T=12), [(l, m, k) for l in (0, 1) for m in MATS
                                                               for k in (0.5, 0.05, 0)], batch_size=4)


def test_removal_only_layers(neox_bridge, random_toy):
    # a layer whose only configurations remove a matrix (keep 0) needs no decomposition at all
    _assert_matches_reference(neox_bridge, _prompts(512, n=4), [(0, "mlp.W_in", 0), (1, "mlp.W_out", 0),
                                                                (2, "mlp.W_in", 0), (2, "mlp.W_out", 0)])
    _assert_matches_reference(random_toy, _prompts(65, n=4), [(1, "mlp.W_out", 0), (0, "mlp.W_in", 0)])


def test_gpt2_and_a_grid_mixing_fast_and_reference_matrices(gpt2_bridge, neox_bridge):
    rows = _assert_matches_reference(gpt2_bridge, _prompts(512, n=4), [(2, "mlp.W_out", 0.2), (1, "mlp.W_in", 0.5)])
    assert [r.path for r in rows] == ["fast"] * 3
    rows = _assert_matches_reference(neox_bridge, _prompts(512, n=4), [(1, "attn.W_Q", 0.25), (1, "mlp.W_in", 0.25)])
    assert [(r.matrix, r.path) for r in rows] == [("none", "fast"), ("mlp.W_in", "fast"), ("attn.W_Q", "reference")]


def test_rule_authors_and_numpy_scalars(neox_bridge):
    prompts = _prompts(512, n=4)
    res = list(ge.run_grid(neox_bridge, prompts, [mt.Truncate("mlp.W_out", layer=np.int64(1), keep=np.float32(0.5),
                                                                rule="authors")], baseline=False))
    assert len(res) == 1 and res[0].layer == 1 and isinstance(res[0].layer, int)
    assert res[0].rank == mt.rank_for_keep(0.5, 64, 64, "authors")
    ref = mt.evaluate(neox_bridge, prompts, mt.Truncate("mlp.W_out", layer=1, keep=0.5, rule="authors"))
    assert abs(ref["logit_diff_the"].item() - res[0].metrics["logit_diff_the"]) < 1e-5


def test_decomposition_methods_agree():
    torch.manual_seed(0)
    W = torch.randn(24, 80)
    for Wt in (W, W.T):  # both sides
        Qg, Sg = truncation_basis(Wt, 10, "gram")
        Qs, Ss = truncation_basis(Wt, 10, "gesdd")
        assert Qg.shape == (24, 10) and torch.allclose(Sg, Ss, rtol=1e-5)
        assert torch.allclose(Qg @ Qg.T, Qs @ Qs.T, atol=1e-5)
    with pytest.raises(ValueError, match="rank 30 is outside 0..24"):
        truncation_basis(W, 30)
    with pytest.raises(ValueError, match="CUDA"):
        truncation_basis(W, 3, "gesvdj")


def test_svd_cache_hit_on_rerun_and_invalidated_by_a_weight_change(neox_bridge, tmp_path):
    prompts = _prompts(512, n=4)
    configs = _truncations([(l, m, k) for l in (0, 2) for m in MATS for k in (1, 0.5, 0.2)])
    first = SVDCache(tmp_path)
    a = list(ge.run_grid(neox_bridge, prompts, configs, svd_cache=first))
    assert (first.n_computed, first.n_loaded) == (4, 0) and len(list(tmp_path.glob("*.pt"))) == 4
    again = SVDCache(tmp_path)
    b = list(ge.run_grid(neox_bridge, prompts, configs, svd_cache=again))
    assert (again.n_computed, again.n_loaded) == (0, 4)
    assert [r.metrics for r in a] == [r.metrics for r in b]
    # a changed weight: its decomposition is recomputed, the others are read back
    lin = neox_bridge.original_model.gpt_neox.layers[2].mlp.dense_4h_to_h
    lin = getattr(lin, "original_component", lin)
    saved = lin.weight.detach().clone()
    try:
        with torch.no_grad():
            lin.weight[0, 0] += 0.5
        changed = SVDCache(tmp_path)
        c = {(r.layer, r.matrix, r.keep): r for r in ge.run_grid(neox_bridge, prompts, configs, svd_cache=changed)}
        assert (changed.n_computed, changed.n_loaded) == (1, 3)
        ref = mt.evaluate(neox_bridge, prompts, mt.Truncate("mlp.W_out", layer=2, keep=0.2))
        assert abs(ref["loss"].item() - c[(2, "mlp.W_out", 0.2)].metrics["loss"]) < 1e-5
    finally:
        with torch.no_grad():
            lin.weight.copy_(saved)


def test_bad_input_is_rejected(neox_bridge, random_toy):
    # layer / matrix / keep values are checked once, by Truncate (and the model's adapter)
    prompts = _prompts(512, n=3)
    run = lambda ts, model=neox_bridge, p=prompts, **kw: list(ge.run_grid(model, p, ts, **kw))
    T = lambda *a, **k: [mt.Truncate(*a, **k)]
    with pytest.raises(ValueError, match=r"layer 3 is out of range: valid layers are 0..2"):
        run(T("mlp.W_in", layer=3, keep=0.5))
    with pytest.raises(ValueError, match=r"unknown matrix 'mlp.W_up'"):
        run(T("mlp.W_up", layer=0, keep=0.5))
    with pytest.raises(ValueError, match=r"matrix 'W' exists only on a mechtrunc.models.memory.LinearMemory"):
        run(T("W", layer=0, keep=0.5))
    with pytest.raises(TypeError, match=r"evaluates mechtrunc.Truncate values, got tuple"):
        run([(0, "mlp.W_in", 0.5)])
    with pytest.raises(ValueError, match="truncations must be an iterable"):
        run(mt.Truncate("mlp.W_in", layer=0, keep=0.5))
    with pytest.raises(ValueError, match="one keep or rank per truncation"):
        run(T("mlp.W_in", layer=0, keep=[0.5, 0.1], mode="hook"))
    with pytest.raises(ValueError, match="exact decompositions"):
        run(T("mlp.W_in", layer=0, keep=0.5, svd="randomized"))
    with pytest.raises(ValueError, match=r"rank 65 is above the maximum rank 64"):
        run(T("mlp.W_in", layer=0, rank=65))
    with pytest.raises(ValueError, match="svd_method 'qr'"):
        run(T("mlp.W_in", layer=0, keep=0.5), svd_method="qr")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        run(T("mlp.W_in", layer=0, keep=0.5), batch_size=0)
    with pytest.raises(ValueError, match=r"token id 600, outside the model's vocabulary \(valid ids 0..511\)"):
        bad = _prompts(512, n=3)
        bad.tokens[0, 0] = 600
        run(T("mlp.W_in", layer=0, keep=0.5), p=bad)
    with pytest.raises(TypeError, match="PromptSet"):
        run(T("mlp.W_in", layer=0, keep=0.5), p=prompts.tokens)
    toy = mt.ToyTransformer(mt.ToyConfig(d_model=16, n_ctx=16, ffn=["relu", "none"], seed=0))
    with pytest.raises(ValueError, match="layer 1 has no MLP"):
        run(T("mlp.W_in", layer=1, keep=0.5), model=toy, p=_prompts(65, n=2))


def test_truncation_study_engine_mode_equals_weight_mode(neox_bridge, tmp_path):
    prompts = _prompts(512, n=6)
    kw = dict(layers=[0, 2], keeps=(1, 0.5, 0.1), progress=False)
    weight = truncation_study(neox_bridge, prompts, mode="weight", **kw)
    engine = truncation_study(neox_bridge, prompts, mode="engine", out=tmp_path, **kw)
    cols = ["baseline", "layer", "matrix", "keep", "rank", "max_rank", "identity", "intervention"]
    assert weight[cols].astype(str).equals(engine[cols].astype(str))
    metrics = [c for c in weight.columns if is_metric(c)]
    assert np.abs(weight[metrics].to_numpy(float) - engine[metrics].to_numpy(float)).max() < 1e-5
    assert (engine["mode"] == "engine").all() and len(list((tmp_path / "svd_cache").glob("*.pt"))) == 4
    # which path computed each row: the engine's fast path, the reference for weight mode
    computed = ~engine["baseline"] & ~engine["identity"]
    assert set(engine.loc[computed, "path"]) == {"fast"} and set(weight.loc[computed, "path"]) == {"reference"}
    assert set(engine.loc[engine["identity"], "path"]) == {"identity"}
    # resumable: a rerun computes nothing and gives the same table
    again = truncation_study(neox_bridge, prompts, mode="engine", out=tmp_path, **kw)
    assert engine.drop(columns="seconds").equals(again.drop(columns="seconds"))
    with pytest.raises(ValueError, match="svd='exact'"):
        truncation_study(neox_bridge, prompts, mode="engine", svd="randomized", **kw)


def test_items_are_the_values_the_means_are_taken_over(trained_toy):
    """``run_grid(..., items=True)``: per-item values on both paths (fast: W_in; reference:
    W_Q), whose means are the rows' metrics, with no change to the metrics themselves."""
    model, _, prompts = trained_toy
    truncs = [mt.Truncate("mlp.W_in", layer=1, keep=0.1), mt.Truncate("attn.W_Q", layer=0, keep=0.5),
              mt.Truncate("mlp.W_out", layer=0, keep=1.0)]
    plain = list(ge.run_grid(model, prompts, truncs))
    with_items = list(ge.run_grid(model, prompts, truncs, items=True))
    assert {r.path for r in with_items} == {"fast", "reference"}
    for a, b in zip(plain, with_items):
        assert a.items is None and a.metrics == b.metrics
        assert set(b.items) == set(b.metrics) - {"n_items"}
        for k, v in b.items.items():
            assert v.shape == (len(prompts),) and v.device.type == "cpu"
            assert v.mean().item() == pytest.approx(b.metrics[k], abs=1e-6)


def test_the_grid_defaults_have_one_name_each():
    """GRID_KEEPS, GRID_MATRICES, GRID_MODES; the old aliases still read, with a DeprecationWarning."""
    from mechtrunc import _choices
    from mechtrunc.studies import grid as g

    for old, new in (("DEFAULT_KEEPS", "GRID_KEEPS"), ("DEFAULT_MATRICES", "GRID_MATRICES"), ("MODES", "GRID_MODES")):
        with pytest.warns(DeprecationWarning, match=f"grid.{old} is deprecated; use {new}"):
            assert getattr(g, old) is getattr(_choices, new)
    assert g.Grid().keeps == _choices.GRID_KEEPS and g.Grid().mode == _choices.GRID_MODES[0]
    with pytest.raises(AttributeError, match="has no attribute 'KEEPS'"):
        g.KEEPS
