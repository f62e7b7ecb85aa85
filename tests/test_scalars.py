"""Layers, heads, ranks and keeps as NumPy / torch scalars, and the
``rule="authors"`` rank of ``attn.OV``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechtrunc as mt
from mechtrunc._scalars import as_int, as_int_list, as_real, as_real_list
from mechtrunc.studies import truncation_study

pytestmark = pytest.mark.usefixtures("single_thread")


def test_coercion_helper_accepts_every_numeric_scalar_and_rejects_bool():
    for v in (3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3), np.array(3), 3.0, np.float64(3.0)):
        assert as_int(v, "layer") == 3 and type(as_int(v, "layer")) is int
    for v in (0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.array(0.5)):
        assert as_real(v, "keep") == 0.5 and type(as_real(v, "keep")) is float
    assert as_int_list(np.arange(3), "layers") == [0, 1, 2]
    assert as_int_list(torch.arange(2), "layers") == [0, 1]
    assert as_real_list(np.linspace(0, 1, 3), "keeps") == [0.0, 0.5, 1.0]
    for bad in (True, np.bool_(False), torch.tensor(True)):
        with pytest.raises(ValueError, match="boolean"):
            as_int(bad, "layer")
        with pytest.raises(ValueError, match="boolean"):
            as_real(bad, "keep")
    with pytest.raises(ValueError, match=r"layer must be an integer, got 1.5"):
        as_int(1.5, "layer")
    with pytest.raises(ValueError, match="keep must be a real number"):
        as_real("0.5", "keep")


def test_interventions_accept_numpy_and_torch_scalars(neox_bridge):
    tokens = torch.randint(0, 500, (4, 10), generator=torch.Generator().manual_seed(0))
    prompts = mt.PromptSet(tokens=tokens, rows=torch.arange(4), pos=torch.full((4,), 9),
                           answer=torch.tensor([1, 2, 3, 4]), competitors=torch.tensor([[5], [6], [7], [8]]),
                           competitor_names=("x",))
    ref = mt.Truncate("mlp.W_in", layer=1, keep=0.5)
    for iv in (mt.Truncate("mlp.W_in", layer=np.int64(1), keep=np.float32(0.5)),
               mt.Truncate("mlp.W_in", layer=torch.tensor(1), keep=torch.tensor(0.5)),
               mt.Truncate("mlp.W_in", layer=np.arange(3)[1], keep=np.linspace(0, 1, 3)[1])):
        assert iv == ref and iv.label == ref.label and type(iv.layer) is int and type(iv.keep) is float
    assert mt.Truncate("mlp.W_out", layer=np.int64(2), rank=torch.tensor(3)).rank == 3
    a = mt.evaluate(neox_bridge, prompts, ref)
    b = mt.evaluate(neox_bridge, prompts, mt.Truncate("mlp.W_in", layer=np.int64(1), keep=np.float32(0.5)))
    assert a.drop(columns="variant").equals(b.drop(columns="variant"))
    # per-row keeps from an array, hook mode
    rows = mt.Truncate("mlp.W_in", layer=np.int64(1), keep=np.array([1.0, 0.5, 0.0, 0.5]), mode="hook")
    assert rows.keep == (1.0, 0.5, 0.0, 0.5)
    mt.item_logits(neox_bridge, prompts, rows)
    # heads and other layers
    head = mt.Ablate("head", layer=np.int64(1), head=torch.tensor(2))
    assert (head.layer, head.head) == (1, 2)
    mt.evaluate(neox_bridge, prompts, head)
    mt.evaluate(neox_bridge, prompts, mt.RemoveComponents("mlp.W_out", layer=np.int32(0), indices=np.array([0, 2])))
    mt.evaluate(neox_bridge, prompts, mt.ProjectOut("mlp_out", layer=np.int16(0), directions=torch.randn(64)))
    assert mt.rank_for_keep(np.float32(0.5), np.int64(10)) == 5
    adapter = mt.adapt(neox_bridge)
    assert adapter.check_layer(np.int64(2)) == 2 and adapter.check_head(torch.tensor(3)) == 3
    for bad in (lambda: mt.Truncate("mlp.W_in", layer=True, keep=0.5),
                lambda: mt.Truncate("mlp.W_in", layer=0, keep=np.bool_(True)),
                lambda: mt.Ablate("head", layer=0, head=True),
                lambda: adapter.check_layer(np.bool_(True))):
        with pytest.raises(ValueError, match="boolean"):
            bad()
    with pytest.raises(ValueError, match="out of range: valid layers are 0..2"):
        adapter.check_layer(np.int64(3))


def test_truncation_study_accepts_arange_and_linspace(neox_bridge):
    tokens = torch.randint(0, 500, (3, 8), generator=torch.Generator().manual_seed(1))
    prompts = mt.PromptSet(tokens=tokens, rows=torch.arange(3), pos=torch.full((3,), 7),
                           answer=torch.tensor([1, 2, 3]), competitors=torch.tensor([[5], [6], [7]]),
                           competitor_names=("x",))
    a = truncation_study(neox_bridge, prompts, layers=[0, 1], matrices="mlp.W_out", keeps=[0.5, 1.0], progress=False)
    b = truncation_study(neox_bridge, prompts, layers=np.arange(2), matrices="mlp.W_out",
                         keeps=np.linspace(0.5, 1, 2, dtype=np.float32), progress=False)
    c = truncation_study(neox_bridge, prompts, layers=torch.arange(2), matrices="mlp.W_out",
                         keeps=torch.tensor([0.5, 1.0]), progress=False)
    cols = [x for x in a.columns if x != "seconds"]
    for other in (b, c):
        assert a[cols].equals(other[cols])
    with pytest.raises(ValueError, match="boolean"):
        truncation_study(neox_bridge, prompts, layers=[True], progress=False)


def test_authors_rule_for_ov_scales_by_d_head(neox_bridge):
    """d_model 64, 4 heads of d_head 16: keep 0.25 keeps int(0.25 * 16) = 4 of each head's 16
    components.  Scaling by d_model would give min(int(0.25 * 64), 16) = 16: the identity."""
    adapter = mt.adapt(neox_bridge)
    assert (adapter.d_model, adapter.d_head) == (64, 16)
    iv = mt.Truncate("attn.OV", layer=1, keep=0.25, rule="authors")
    assert iv.ranks(adapter, adapter.d_head) == [4]
    assert mt.Truncate("attn.OV", layer=1, keep=0.3, rule="authors").ranks(adapter, 16) == [4]  # floor(4.8)
    assert mt.Truncate("attn.OV", layer=1, keep=0.3, rule="round").ranks(adapter, 16) == [5]
    # MLP matrices: d_model (their maximum rank) as in the released code
    assert mt.Truncate("mlp.W_in", layer=1, keep=0.3, rule="authors").ranks(adapter, 64) == [19]
    tokens = torch.randint(0, 500, (2, 8), generator=torch.Generator().manual_seed(2))
    logits = lambda *ivs: neox_bridge(tokens) if not ivs else _with(neox_bridge, tokens, *ivs)
    assert not torch.allclose(logits(), logits(iv))  # a real edit, not the identity


def _with(model, tokens, *ivs):
    with mt.intervene(model, *ivs):
        return model(tokens)
