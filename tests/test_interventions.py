"""Interventions on the toy model and on TransformerBridges (GPT-NeoX / Pythia-shaped and GPT-2):
numerical identities (weight mode vs hook mode, per-row ranks, removal vs truncation, projection,
ablation), bit-exact restoration, hooks surviving ``run_with_hooks``, and error messages."""

from __future__ import annotations

import random

import pytest
import torch

import mechtrunc as mt
from mechtrunc import Ablate, ProjectOut, RemoveComponents, Truncate, rank_for_keep
from mechtrunc.core.adapters import adapt

MODELS = ["toy", "toy2h", "neox", "gpt2"]
BRIDGES_AND_TOY = ["toy", "neox", "gpt2"]
VOCAB = 60  # below every model's vocabulary
LAYER = 1

pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture(scope="module")
def toy2h():
    """A two-head toy (so head splits of W_Q/W_K/W_V/W_O and hook_z are exercised)."""
    return mt.ToyTransformer(mt.ToyConfig(d_model=32, n_heads=2, n_ctx=64, seed=4)).eval()


@pytest.fixture(scope="module")
def _biased_bridges(request):
    """Hugging Face initialises every bias to zero, which would let a wrong
    bias treatment in hook mode go unnoticed.  Give the shared session bridges random biases for
    the duration of this module, and put the zeros back (bit for bit) afterwards."""
    saved = []
    g = torch.Generator().manual_seed(7)
    for name in ("neox_bridge", "gpt2_bridge"):
        bridge = request.getfixturevalue(name)
        for pname, p in bridge.named_parameters():
            if pname.endswith("bias") and ".ln" not in pname:  # the biases of the edited matrices
                saved.append((p, p.detach().clone()))
                with torch.no_grad():
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
    yield
    with torch.no_grad():
        for p, v in saved:
            p.copy_(v)


@pytest.fixture
def model(request):
    name = request.param
    fixture = {"toy": "random_toy", "toy2h": "toy2h", "neox": "neox_bridge", "gpt2": "gpt2_bridge"}[name]
    if name in ("neox", "gpt2"):
        request.getfixturevalue("_biased_bridges")
    return request.getfixturevalue(fixture)


def _tokens(b=3, p=10, seed=0):
    return torch.randint(0, VOCAB, (b, p), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, toks):
    return adapt(model).forward(toks).detach().float()


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_restored(model, snap):
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), f"{k} not restored bit for bit"


def _n_hooks(model):
    return sum(len(hp.fwd_hooks) + len(hp._forward_hooks) for hp in model.hook_dict.values())


def _site_output(model, hook, toks):
    """Activation at ``hook`` in a run of ``toks`` (via run_with_cache; works inside intervene)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    return cache[hook].detach().float()


def _max_rank(model, matrix, layer=LAYER):
    return adapt(model).matrix(matrix, layer).max_rank


# ------------------------------------------------------------------------------------------
# rank rule
# ------------------------------------------------------------------------------------------
def test_rank_for_keep_rules():
    assert rank_for_keep(0.0, 32) == 0
    assert rank_for_keep(1.0, 32) == 32
    assert rank_for_keep(0.5, 5) == 3  # halves round up
    assert rank_for_keep(0.1, 32) == 3  # round(3.2)
    assert rank_for_keep(0.15, 32) == 5  # round(4.8)
    assert rank_for_keep(0.001, 32) == 1  # at least one when keep > 0
    assert rank_for_keep(0.15, 32, d_model=32, rule="authors") == 4  # int(4.8)
    assert rank_for_keep(0.1, 128, d_model=32, rule="authors") == 3  # of d_model, not max rank
    assert rank_for_keep(0.9, 16, d_model=64, rule="authors") == 16  # capped at the max rank
    assert rank_for_keep(0.001, 32, d_model=32, rule="authors") == 0
    with pytest.raises(ValueError, match=r"keep must be in \[0, 1\], got 1\.2"):
        rank_for_keep(1.2, 32)
    with pytest.raises(ValueError, match=r"unknown rank rule 'floor'; valid: round, authors"):
        rank_for_keep(0.5, 32, rule="floor")


# ------------------------------------------------------------------------------------------
# truncation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_keep_one_is_identity(model):
    toks = _tokens()
    base = _logits(model, toks)
    snap = _snapshot(model)
    for m in mt.MATRICES:
        for iv in (Truncate(m, layer=LAYER, keep=1.0), Truncate(m, layer=LAYER, keep=1.0, mode="hook"),
                   Truncate(m, layer=LAYER, rank=_max_rank(model, m)), RemoveComponents(m, layer=LAYER)):
            with mt.intervene(model, iv):
                out = _logits(model, toks)
            assert (out - base).abs().max() <= 1e-5, (m, iv)
    _assert_restored(model, snap)


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("matrix", mt.MATRICES)
def test_hook_mode_equals_weight_mode(model, matrix):
    toks = _tokens(p=12)
    base = _logits(model, toks)
    for amount in (dict(keep=0.25), dict(rank=1)):
        with mt.intervene(model, Truncate(matrix, layer=LAYER, **amount)):
            w = _logits(model, toks)
        with mt.intervene(model, Truncate(matrix, layer=LAYER, mode="hook", **amount)):
            h = _logits(model, toks)
        assert (w - h).abs().max() < 1e-4, (matrix, amount, (w - h).abs().max())
        assert (w - base).abs().max() > 1e-4, (matrix, amount)  # the edit did something
    assert torch.equal(_logits(model, toks), base)


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("matrix", [m for m in mt.MATRICES if m != "attn.OV"])
def test_weight_mode_gives_rank_k_matrix(model, matrix):
    a = adapt(model)
    site = a.matrix(matrix, LAYER)
    W0 = site.get().clone()
    S0 = torch.linalg.svdvals(W0.double())
    for k in (1, 3):
        with mt.intervene(model, Truncate(matrix, layer=LAYER, rank=k)):
            W = a.matrix(matrix, LAYER).get().double()
            S = torch.linalg.svdvals(W)
            assert int(torch.linalg.matrix_rank(W, rtol=1e-5)) == k
            assert torch.allclose(S[:k], S0[:k], rtol=1e-4, atol=1e-6)
            assert float(S[k:].max()) < 1e-4 * float(S0[0])
            # and it is the best rank-k approximation (Eckart-Young: the error is the tail)
            err = torch.linalg.matrix_norm(W0.double() - W) ** 2
            assert torch.allclose(err, (S0[k:] ** 2).sum(), rtol=1e-4)
    assert torch.equal(a.matrix(matrix, LAYER).get(), W0)


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_weight_mode_matches_manual_reconstruction_in_logits(model):
    """Setting the truncated weight by hand gives the same logits as the intervention."""
    toks = _tokens()
    a = adapt(model)
    site = a.matrix("mlp.W_out", LAYER)
    W0 = site.get().clone()
    U, S, Vh = torch.linalg.svd(W0.float(), full_matrices=False)
    k = 4
    with mt.intervene(model, Truncate("mlp.W_out", layer=LAYER, rank=k, mode="hook")):
        hooked = _logits(model, toks)
    snap = _snapshot(model)
    try:
        site.set((U[:, :k] * S[:k]) @ Vh[:k])
        manual = _logits(model, toks)
    finally:
        site.set(W0)
    _assert_restored(model, snap)
    assert (manual - hooked).abs().max() < 1e-4


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("matrix", ["mlp.W_in", "mlp.W_out", "attn.W_V", "attn.OV"])
def test_keep_zero_removes_matrix(model, matrix):
    a = adapt(model)
    toks = _tokens()
    with mt.intervene(model, Truncate(matrix, layer=LAYER, keep=0.0)):
        zeroed = _logits(model, toks)
        if matrix == "attn.OV":
            W = a.matrix("attn.W_O", LAYER).get()
        else:
            W = a.matrix(matrix, LAYER).get()
        assert torch.count_nonzero(W) == 0
    with mt.intervene(model, Truncate(matrix, layer=LAYER, rank=0, mode="hook")):
        hooked = _logits(model, toks)
    assert (zeroed - hooked).abs().max() < 1e-4
    if matrix in ("mlp.W_out", "attn.OV"):
        # removing W_out (or every head's OV) = the layer's output is only its bias
        comp = "mlp" if matrix == "mlp.W_out" else "attn"
        site = a.matrix("mlp.W_out" if comp == "mlp" else "attn.W_O", LAYER)
        if site.bias is None:
            with mt.intervene(model, Ablate(comp, layer=LAYER)):
                ablated = _logits(model, toks)
            assert (zeroed - ablated).abs().max() < 1e-4


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_ov_truncation_truncates_each_head_product(model):
    a = adapt(model)
    h, dh, d = a.n_heads, a.d_head, a.d_model
    getV = lambda: a.matrix("attn.W_V", LAYER).get().reshape(d, h, dh).permute(1, 0, 2).double()
    getO = lambda: a.matrix("attn.W_O", LAYER).get().reshape(h, dh, d).double()
    V0 = getV()
    OV0 = V0 @ getO()
    k = 2
    with mt.intervene(model, Truncate("attn.OV", layer=LAYER, rank=k)):
        OV = getV() @ getO()
        assert torch.equal(getV(), V0)  # weight mode rewrites W_O only
        assert not torch.allclose(OV, OV0)
    for head in range(h):
        U, S, Vh = torch.linalg.svd(OV0[head])
        best = (U[:, :k] * S[:k]) @ Vh[:k]
        assert torch.allclose(OV[head], best, atol=1e-5), head
        assert int(torch.linalg.matrix_rank(OV[head], rtol=1e-5)) == k


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_authors_rule_uses_d_model(model):
    a = adapt(model)
    toks = _tokens()
    keep = 0.15
    r_authors = int(keep * a.d_model)
    r_round = rank_for_keep(keep, a.matrix("mlp.W_in", LAYER).max_rank)
    assert r_authors != r_round
    with mt.intervene(model, Truncate("mlp.W_in", layer=LAYER, keep=keep, rule="authors")):
        W = a.matrix("mlp.W_in", LAYER).get().double()
        assert int(torch.linalg.matrix_rank(W, rtol=1e-5)) == r_authors
        authors = _logits(model, toks)
    with mt.intervene(model, Truncate("mlp.W_in", layer=LAYER, rank=r_authors)):
        by_rank = _logits(model, toks)
    with mt.intervene(model, Truncate("mlp.W_in", layer=LAYER, keep=keep)):
        W = a.matrix("mlp.W_in", LAYER).get().double()
        assert int(torch.linalg.matrix_rank(W, rtol=1e-5)) == r_round
    assert torch.equal(authors, by_rank)
    # attn.OV under the authors' rule counts against d_head
    t = Truncate("attn.OV", layer=LAYER, keep=0.5, rule="authors")
    assert t.ranks(a, a.d_head) == [int(0.5 * a.d_head)]


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_attn_ov_is_a_per_head_matrix_site(model):
    """``attn.OV`` is a site like the others: each head's ``W_V W_O`` (maximum rank ``d_head``),
    whose edits rewrite ``W_O`` and whose hook-mode edits act on ``hook_z``; it is not stored,
    so it cannot be written as a whole."""
    a = adapt(model)
    h, dh, d = a.n_heads, a.d_head, a.d_model
    s, o = a.matrix("attn.OV", LAYER), a.matrix("attn.W_O", LAYER)
    assert (s.heads, s.max_rank, s.edits, s.out_hook) == (h, dh, "attn.W_O", a.hook_name("z", LAYER))
    assert (o.heads, o.max_rank, o.edits) == (None, min(o.get().shape), "attn.W_O")
    assert s.param is o.param
    W_V = a.matrix("attn.W_V", LAYER).get().reshape(d, h, dh)
    P = s.get()
    assert P.shape == (h, d, d)
    for i in range(h):
        torch.testing.assert_close(P[i], W_V[:, i] @ o.get().reshape(h, dh, d)[i])
        assert int(torch.linalg.matrix_rank(P[i].double(), rtol=1e-5)) <= dh
    with pytest.raises(ValueError, match=r"attn\.OV is the product attn\.W_V @ attn\.W_O of each head, not a stored "
                                         r"matrix: an edit of it rewrites attn\.W_O"):
        s.set(P)


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("matrix", [m for m in mt.MATRICES if m != "attn.OV"])
def test_per_row_ranks_equal_separate_runs(model, matrix):
    toks = _tokens(b=4, p=8, seed=3)
    r_max = _max_rank(model, matrix)
    ranks = [0, 2, 5, r_max]
    with mt.intervene(model, Truncate(matrix, layer=LAYER, rank=ranks, mode="hook")):
        together = _logits(model, toks)
    for i, r in enumerate(ranks):
        with mt.intervene(model, Truncate(matrix, layer=LAYER, rank=r)):
            alone = _logits(model, toks[i : i + 1])
        assert (together[i] - alone[0]).abs().max() < 1e-4, (matrix, r)
    # per-row keep fractions too
    keeps = [0.0, 0.1, 0.5, 1.0]
    with mt.intervene(model, Truncate(matrix, layer=LAYER, keep=keeps, mode="hook")):
        together = _logits(model, toks)
    for i, kf in enumerate(keeps):
        with mt.intervene(model, Truncate(matrix, layer=LAYER, keep=kf)):
            alone = _logits(model, toks[i : i + 1])
        assert (together[i] - alone[0]).abs().max() < 1e-4, (matrix, kf)


def test_per_row_rank_errors(random_toy):
    toks = _tokens(b=3)
    with pytest.raises(ValueError, match=r"per-row ranks need mode='hook'"):
        with mt.intervene(random_toy, Truncate("mlp.W_in", layer=0, rank=[1, 2, 3])):
            pass
    with pytest.raises(ValueError, match=r"per-row ranks were given for 2 rows but the batch has 3"):
        with mt.intervene(random_toy, Truncate("mlp.W_in", layer=0, rank=[1, 2], mode="hook")):
            _logits(random_toy, toks)
    with pytest.raises(ValueError, match=r"per-row ranks are not supported for attn\.OV"):
        with mt.intervene(random_toy, Truncate("attn.OV", layer=0, rank=[1, 2, 3], mode="hook")):
            pass


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_randomized_svd(model):
    a = adapt(model)
    toks = _tokens()
    iv = Truncate("mlp.W_in", layer=LAYER, rank=3, svd="randomized")
    with mt.intervene(model, iv):
        W = a.matrix("mlp.W_in", LAYER).get().double()
        assert int(torch.linalg.matrix_rank(W, rtol=1e-5)) == 3
        first = _logits(model, toks)
    with mt.intervene(model, iv):
        second = _logits(model, toks)
    with mt.intervene(model, Truncate("mlp.W_in", layer=LAYER, rank=3, svd="randomized", mode="hook")):
        hooked = _logits(model, toks)
    assert torch.equal(first, second)  # seeded: deterministic
    assert (first - hooked).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------
# removal of singular components
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("matrix", ["mlp.W_in", "mlp.W_out", "attn.W_K", "attn.W_O"])
def test_remove_components_equals_reconstruction(model, matrix):
    a = adapt(model)
    toks = _tokens()
    W0 = a.matrix(matrix, LAYER).get().clone()
    U, S, Vh = torch.linalg.svd(W0.double(), full_matrices=False)
    idx = (0, 2, 5)
    keep = torch.ones_like(S, dtype=torch.bool)
    keep[list(idx)] = False
    want = (U * (S * keep)) @ Vh
    with mt.intervene(model, RemoveComponents(matrix, layer=LAYER, indices=idx)):
        W = a.matrix(matrix, LAYER).get().double()
        assert (W - want).abs().max() < 1e-4 * float(S[0])  # float32 SVD in the code
        assert torch.allclose(torch.linalg.svdvals(W)[: len(S) - 3], S[keep], rtol=1e-4, atol=1e-6)
        removed = _logits(model, toks)
    with mt.intervene(model, RemoveComponents(matrix, layer=LAYER, indices=idx, mode="hook")):
        hooked = _logits(model, toks)
    assert (removed - hooked).abs().max() < 1e-4
    assert torch.equal(a.matrix(matrix, LAYER).get(), W0)


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("matrix", ["mlp.W_in", "mlp.W_out", "attn.W_Q", "attn.OV"])
def test_remove_tail_equals_truncate(model, matrix):
    toks = _tokens()
    r = _max_rank(model, matrix)
    k = 3
    with mt.intervene(model, Truncate(matrix, layer=LAYER, rank=k)):
        trunc = _logits(model, toks)
    with mt.intervene(model, RemoveComponents(matrix, layer=LAYER, indices=range(k, r))):
        removed = _logits(model, toks)
    assert (trunc - removed).abs().max() < 1e-4
    # removing the head instead is different
    with mt.intervene(model, RemoveComponents(matrix, layer=LAYER, indices=range(k))):
        head_removed = _logits(model, toks)
    assert (head_removed - trunc).abs().max() > 1e-4


def test_remove_components_validation(random_toy):
    with pytest.raises(ValueError, match=r"component index 128 is out of range for L0\.mlp\.W_in: valid 0\.\.31"):
        with mt.intervene(random_toy, RemoveComponents("mlp.W_in", layer=0, indices=(0, 128))):
            pass
    with pytest.raises(ValueError, match=r"component index -1 is out of range"):
        with mt.intervene(random_toy, RemoveComponents("mlp.W_in", layer=0, indices=(-1,))):
            pass
    with pytest.raises(ValueError, match=r"needs svd='exact'"):
        RemoveComponents("mlp.W_in", layer=0, indices=(1,), svd="randomized")


# ------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------
_PROJ_SITES = {"mlp_out": "blocks.{l}.hook_mlp_out", "attn_out": "blocks.{l}.hook_attn_out",
               "resid_post": "blocks.{l}.hook_resid_post", "resid_pre": "blocks.{l}.hook_resid_pre",
               "mlp_pre": "blocks.{l}.mlp.hook_pre", "mlp_post": "blocks.{l}.mlp.hook_post"}


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("site", list(_PROJ_SITES))
def test_project_out_makes_site_orthogonal(model, site):
    a = adapt(model)
    hook = _PROJ_SITES[site].format(l=LAYER)
    toks = _tokens()
    width = a.d_model if site not in ("mlp_pre", "mlp_post") else a.matrix("mlp.W_in", LAYER).get().shape[1]
    dirs = torch.randn(3, width, generator=torch.Generator().manual_seed(5))
    before = _site_output(model, hook, toks)
    base = _logits(model, toks)
    with mt.intervene(model, ProjectOut(site, layer=LAYER, directions=dirs)):
        after = _site_output(model, hook, toks)
        out = _logits(model, toks)
    Q, _ = torch.linalg.qr(dirs.T)
    scale = before.abs().max()
    assert (after @ dirs.T).abs().max() < 1e-4 * scale * dirs.norm(dim=1).max()
    # exactly the orthogonal projection of the unmodified activation
    assert torch.allclose(after, before - (before @ Q) @ Q.T, atol=1e-5 * float(scale) + 1e-6)
    assert (out - base).abs().max() > 1e-5
    # a single [d] direction works too
    with mt.intervene(model, ProjectOut(site, layer=LAYER, directions=dirs[0])):
        one = _site_output(model, hook, toks)
    assert (one @ dirs[0]).abs().max() < 1e-4 * float(scale) * float(dirs[0].norm())
    assert torch.equal(_site_output(model, hook, toks), before)


# ------------------------------------------------------------------------------------------
# ablation
# ------------------------------------------------------------------------------------------
def _ablate_hook(component, layer):
    return {"mlp": "blocks.{l}.hook_mlp_out", "attn": "blocks.{l}.hook_attn_out",
            "head": "blocks.{l}.attn.hook_z"}[component].format(l=layer)


def _sel(component, head):
    return (lambda a: a[:, :, head]) if component == "head" else (lambda a: a)


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("component", ["mlp", "attn", "head"])
def test_ablate_zero(model, component):
    a = adapt(model)
    head = a.n_heads - 1 if component == "head" else None
    hook = _ablate_hook(component, LAYER)
    toks = _tokens()
    before = _site_output(model, hook, toks)
    base = _logits(model, toks)
    with mt.intervene(model, Ablate(component, layer=LAYER, head=head)):
        after = _site_output(model, hook, toks)
        out = _logits(model, toks)
    sel = _sel(component, head)
    assert torch.count_nonzero(sel(after)) == 0
    assert (out - base).abs().max() > 1e-4
    if component == "head" and a.n_heads > 1:
        others = [h for h in range(a.n_heads) if h != head]
        assert torch.equal(after[:, :, others], before[:, :, others])
    if component == "head":
        # zeroing a head's z == zeroing its rows of W_O
        site = a.matrix("attn.W_O", LAYER)
        W0 = site.get().clone()
        snap = _snapshot(model)
        try:
            W = W0.clone()
            W[head * a.d_head : (head + 1) * a.d_head] = 0
            site.set(W)
            manual = _logits(model, toks)
        finally:
            site.set(W0)
        _assert_restored(model, snap)
        assert (manual - out).abs().max() < 1e-4


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("component", ["mlp", "attn", "head"])
def test_ablate_mean(model, component):
    a = adapt(model)
    head = 0 if component == "head" else None
    hook = _ablate_hook(component, LAYER)
    sel = _sel(component, head)
    ref = _tokens(b=5, p=10, seed=11)
    ref_act = sel(_site_output(model, hook, ref))
    mean = ref_act.reshape(-1, *ref_act.shape[2:]).mean(0)
    toks = _tokens(b=2, p=7, seed=12)
    for reference in (ref, mt.RecallTask(mt.RecallConfig(seq_len=10)).sample(5, seed=0).to_prompts()):
        if not isinstance(reference, torch.Tensor):
            r_act = sel(_site_output(model, hook, reference.tokens))
            mean = r_act.reshape(-1, *r_act.shape[2:]).mean(0)
        with mt.intervene(model, Ablate(component, layer=LAYER, head=head, method="mean", reference=reference)):
            after = sel(_site_output(model, hook, toks))
        assert after.shape[:2] == (2, 7)
        assert torch.allclose(after, mean.expand_as(after), atol=1e-5)


@pytest.mark.parametrize("model", MODELS, indirect=True)
@pytest.mark.parametrize("component", ["mlp", "attn", "head"])
def test_ablate_resample(model, component):
    a = adapt(model)
    head = 0 if component == "head" else None
    hook = _ablate_hook(component, LAYER)
    sel = _sel(component, head)
    ref = _tokens(b=6, p=10, seed=21)
    ref_act = sel(_site_output(model, hook, ref))
    toks = _tokens(b=8, p=8, seed=22)
    outs = []
    for seed in (0, 0, 1):
        with mt.intervene(model, Ablate(component, layer=LAYER, head=head, method="resample", reference=ref, seed=seed)):
            outs.append((sel(_site_output(model, hook, toks)), _logits(model, toks)))
    (a0, l0), (a1, l1), (a2, _) = outs
    assert torch.equal(a0, a1) and torch.equal(l0, l1)  # deterministic for a seed
    assert not torch.equal(a0, a2)  # another seed draws other reference rows
    # every row is some reference row's activation at the same positions
    for row in a0:
        d = (ref_act[:, :8] - row).flatten(1).abs().max(1).values
        assert float(d.min()) < 1e-5
    # the rows the documented generator draws
    idx = torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a0, ref_act[idx, :8], atol=1e-5)
    # a run longer than the reference is an error
    with pytest.raises(ValueError, match=r"resample reference has 10 positions, run has 12"):
        with mt.intervene(model, Ablate(component, layer=LAYER, head=head, method="resample", reference=ref)):
            _logits(model, _tokens(b=2, p=12))


def test_ablate_validation(random_toy):
    with pytest.raises(ValueError, match=r"unknown component 'ffn'; valid: mlp, attn, head"):
        Ablate("ffn", layer=0)
    with pytest.raises(ValueError, match=r"unknown ablation method 'median'; valid: zero, mean, resample"):
        Ablate("mlp", layer=0, method="median")
    with pytest.raises(ValueError, match=r"give head= exactly when component='head'"):
        Ablate("head", layer=0)
    with pytest.raises(ValueError, match=r"give head= exactly when component='head'"):
        Ablate("mlp", layer=0, head=0)
    with pytest.raises(ValueError, match=r"method='mean' needs reference="):
        Ablate("mlp", layer=0, method="mean")
    attn_only = mt.ToyTransformer(mt.ToyConfig(d_model=32, n_ctx=16, ffn=["none", "relu"]))
    with pytest.raises(ValueError, match=r"layer 0 has no MLP, so site 'mlp_out' does not exist"):
        with mt.intervene(attn_only, Ablate("mlp", layer=0)):
            pass
    with pytest.raises(ValueError, match=r"layer 0 has no MLP, so matrix 'mlp.W_in' does not exist"):
        with mt.intervene(attn_only, Truncate("mlp.W_in", layer=0, keep=0.5)):
            pass


# ------------------------------------------------------------------------------------------
# composition and restoration
# ------------------------------------------------------------------------------------------
def _random_intervention(rng: random.Random, model, ref):
    a = adapt(model)
    kind = rng.choice(["truncate", "truncate", "remove", "project", "ablate"])
    layer = rng.randrange(a.n_layers)
    if kind == "truncate":
        m = rng.choice(mt.MATRICES)
        mode = rng.choice(["weight", "hook"])
        if rng.random() < 0.5:
            return Truncate(m, layer=layer, keep=rng.choice([0.0, 0.05, 0.3, 0.7, 1.0]), mode=mode,
                            rule=rng.choice(["round", "authors"]))
        return Truncate(m, layer=layer, rank=rng.randrange(0, 4), mode=mode)
    if kind == "remove":
        m = rng.choice([x for x in mt.MATRICES if x != "attn.OV"])
        return RemoveComponents(m, layer=layer, indices=rng.sample(range(16), rng.randrange(1, 4)),
                                mode=rng.choice(["weight", "hook"]))
    if kind == "project":
        site = rng.choice(["mlp_out", "attn_out", "resid_pre", "resid_post"])
        g = torch.Generator().manual_seed(rng.randrange(10**6))
        return ProjectOut(site, layer=layer, directions=torch.randn(rng.randrange(1, 4), a.d_model, generator=g))
    comp = rng.choice(["mlp", "attn", "head"])
    method = rng.choice(["zero", "zero", "mean", "resample"])
    return Ablate(comp, layer=layer, head=rng.randrange(a.n_heads) if comp == "head" else None,
                  method=method, reference=None if method == "zero" else ref, seed=rng.randrange(100))


@pytest.mark.parametrize("model", BRIDGES_AND_TOY, indirect=True)
def test_restoration_bit_exact_after_random_combinations(model):
    rng = random.Random(1234)
    toks = _tokens(b=2, p=6)
    ref = _tokens(b=3, p=6, seed=99)
    snap = _snapshot(model)
    hooks0 = _n_hooks(model)
    base = _logits(model, toks)
    changed = 0
    for i in range(100):
        ivs = [_random_intervention(rng, model, ref) for _ in range(rng.randrange(2, 5))]
        if rng.random() < 0.2:  # the same matrix edited twice at once
            ivs.append(ivs[0])
        with mt.intervene(model, *ivs):
            assert _n_hooks(model) >= hooks0
            if i % 5 == 0:
                out = _logits(model, toks)
                assert torch.isfinite(out).all()
                changed += int(not torch.equal(out, base))
        assert _n_hooks(model) == hooks0, ivs
        if i % 10 == 0:
            _assert_restored(model, snap)
    _assert_restored(model, snap)
    assert changed >= 15  # the combinations really changed the model
    assert torch.equal(_logits(model, toks), base)


@pytest.mark.parametrize("model", BRIDGES_AND_TOY, indirect=True)
def test_restoration_after_exception(model):
    toks = _tokens()
    snap = _snapshot(model)
    hooks0 = _n_hooks(model)
    base = _logits(model, toks)
    ivs = (Truncate("mlp.W_in", layer=0, keep=0.1), Truncate("attn.OV", layer=1, rank=1),
           Truncate("attn.W_K", layer=LAYER, rank=2, mode="hook"), Ablate("mlp", layer=LAYER),
           RemoveComponents("mlp.W_out", layer=0, indices=(0, 1)))
    with pytest.raises(RuntimeError, match="boom"):
        with mt.intervene(model, *ivs):
            assert not torch.equal(_logits(model, toks), base)
            raise RuntimeError("boom")
    _assert_restored(model, snap)
    assert _n_hooks(model) == hooks0
    assert torch.equal(_logits(model, toks), base)
    # an error while entering (the last intervention is invalid): earlier edits are undone
    with pytest.raises(ValueError, match=r"rank 9999 is above the maximum rank"):
        with mt.intervene(model, Truncate("mlp.W_out", layer=0, keep=0.1),
                          Ablate("attn", layer=0), Truncate("mlp.W_in", layer=0, rank=9999)):
            pass
    _assert_restored(model, snap)
    assert _n_hooks(model) == hooks0


@pytest.mark.parametrize("model", BRIDGES_AND_TOY, indirect=True)
def test_interventions_survive_run_with_hooks(model):
    toks = _tokens()
    base = _logits(model, toks)
    hooks0 = _n_hooks(model)
    seen = []
    ivs = (Truncate("mlp.W_out", layer=LAYER, keep=0.1, mode="hook"), Ablate("attn", layer=0))
    with mt.intervene(model, *ivs):
        expected = _logits(model, toks)
        with torch.no_grad():
            got = model.run_with_hooks(
                toks, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: seen.append(1))])
        got = got if isinstance(got, torch.Tensor) else got.logits
        assert seen == [1]
        assert torch.allclose(got.float(), expected, atol=1e-6)
        # run_with_hooks reset its own hooks but ours are still active, even after a plain
        # reset_hooks() (which removes every non-permanent hook)
        again = _logits(model, toks)
        assert torch.equal(again, expected)
        model.reset_hooks()
        assert torch.equal(_logits(model, toks), expected)
        with torch.no_grad():
            _, cache = model.run_with_cache(toks)
        assert torch.count_nonzero(cache["blocks.0.hook_attn_out"]) == 0
        assert torch.equal(_logits(model, toks), expected)
    assert not torch.allclose(expected, base, atol=1e-4)
    assert torch.equal(_logits(model, toks), base)
    assert _n_hooks(model) == hooks0


def test_compose_and_labels(random_toy):
    toks = _tokens()
    a, b = Truncate("mlp.W_in", layer=1, keep=0.1), Ablate("attn", layer=0)
    c = a + b
    assert isinstance(c, mt.Compose) and c.items == (a, b)
    assert (c + a).items == (a, b, a)
    assert c.label == "truncate L1.mlp.W_in keep=0.1 + ablate L0.attn (zero)"
    with mt.intervene(random_toy, c):
        composed = _logits(random_toy, toks)
    with mt.intervene(random_toy, a, b):
        both = _logits(random_toy, toks)
    assert torch.equal(composed, both)
    with mt.intervene(random_toy):
        assert torch.equal(_logits(random_toy, toks), _logits(random_toy, toks))
    with pytest.raises(TypeError, match=r"expected Intervention objects, got str"):
        with mt.intervene(random_toy, "truncate"):
            pass
    assert Truncate("mlp.W_in", layer=1, keep=0.1) == a  # values, comparable
    assert a.describe()["rank"] is None and a.describe()["keep"] == 0.1


def test_svd_cache_sees_in_place_data_edits(random_toy):
    """Editing a weight through ``.data`` does not bump its version counter; the SVD cache must
    not hand back the old decomposition (the truncation would silently restore old weights)."""
    a = adapt(random_toy)
    site = a.matrix("mlp.W_in", 0)
    W0 = site.get().clone()
    with mt.intervene(random_toy, Truncate("mlp.W_in", layer=0, rank=2, mode="hook")):
        pass  # fills the cache (hook mode leaves the weight and its version alone)
    try:
        new = torch.randn(W0.shape, generator=torch.Generator().manual_seed(0))
        site.param.data.copy_(new)
        U, S, Vh = torch.linalg.svd(new.double(), full_matrices=False)
        with mt.intervene(random_toy, Truncate("mlp.W_in", layer=0, rank=2)):
            W = a.matrix("mlp.W_in", 0).get().double()
        assert (W - (U[:, :2] * S[:2]) @ Vh[:2]).abs().max() < 1e-5 * float(S[0])
    finally:
        site.param.data.copy_(W0)


def test_svd_reused_across_a_weight_mode_sweep(random_toy, monkeypatch):
    """A sweep over ranks of one matrix computes its SVD once: restoring the weight brings the
    cached decomposition back into use."""
    a = adapt(random_toy)
    a._svd_cache.clear()
    calls = []
    real = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *x, **k: calls.append(1) or real(*x, **k))
    toks = _tokens()
    outs = []
    for r in (1, 2, 3, 1):
        with mt.intervene(random_toy, Truncate("mlp.W_out", layer=0, rank=r)):
            outs.append(_logits(random_toy, toks))
    assert len(calls) == 1
    assert torch.equal(outs[0], outs[3])


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", BRIDGES_AND_TOY, indirect=True)
def test_error_messages(model):
    a = adapt(model)
    nl, nh, d = a.n_layers, a.n_heads, a.d_model
    snap = _snapshot(model)
    hooks0 = _n_hooks(model)

    def enter(*ivs):
        with mt.intervene(model, *ivs):
            _logits(model, _tokens())

    with pytest.raises(ValueError, match=r"unknown matrix 'mlp\.W_up'; valid matrices: mlp\.W_in, mlp\.W_out, "
                                         r"attn\.W_Q, attn\.W_K, attn\.W_V, attn\.W_O, attn\.OV \(and mlp\.W_gate "
                                         r"in a gated MLP"):
        enter(Truncate("mlp.W_up", layer=0, keep=0.5))
    with pytest.raises(ValueError, match=r"matrix 'mlp\.W_gate' exists only in a gated MLP \(the Llama family\); "
                                         r"this \w+ model's MLP is not gated"):
        enter(Truncate("mlp.W_gate", layer=0, keep=0.5))
    with pytest.raises(ValueError, match=r"unknown matrix 'W_in'"):
        enter(RemoveComponents("W_in", layer=0, indices=(0,)))
    with pytest.raises(ValueError, match=r"unknown matrix 'attn\.W_X'; valid matrices: mlp\.W_in, .*attn\.OV"):
        a.matrix("attn.W_X", 0)
    with pytest.raises(ValueError, match=r"unknown site 'mlp_output'; valid sites: mlp_out, attn_out"):
        ProjectOut("mlp_output", layer=0, directions=torch.randn(d))
    with pytest.raises(ValueError, match=r"unknown site 'z'"):
        ProjectOut("z", layer=0, directions=torch.randn(d))
    with pytest.raises(ValueError, match=r"unknown site 'nope'; valid sites: mlp_out"):
        a.site_hook("nope", 0)
    for layer in (nl, -1, 100):
        with pytest.raises(ValueError, match=rf"layer {layer} is out of range: valid layers are 0\.\.{nl - 1}"):
            enter(Truncate("mlp.W_in", layer=layer, keep=0.5))
    with pytest.raises(ValueError, match=rf"layer {nl} is out of range: valid layers are 0\.\.{nl - 1}"):
        enter(Ablate("mlp", layer=nl))
    with pytest.raises(ValueError, match=rf"layer {nl} is out of range"):
        enter(ProjectOut("mlp_out", layer=nl, directions=torch.randn(d)))
    with pytest.raises(ValueError, match=rf"layer {nl} is out of range"):
        enter(Truncate("attn.OV", layer=nl, keep=0.5))
    with pytest.raises(ValueError, match=rf"head {nh} is out of range: valid heads are 0\.\.{nh - 1}"):
        enter(Ablate("head", layer=0, head=nh))
    with pytest.raises(ValueError, match=rf"head -1 is out of range: valid heads are 0\.\.{nh - 1}"):
        enter(Ablate("head", layer=0, head=-1))
    for keep in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf"keep must be in \[0, 1\], got {keep}"):
            Truncate("mlp.W_in", layer=0, keep=keep)
    with pytest.raises(ValueError, match=r"keep must be in \[0, 1\], got 2"):
        Truncate("mlp.W_in", layer=0, keep=[0.5, 2], mode="hook")
    with pytest.raises(ValueError, match=r"rank must be a non-negative integer, got -1"):
        Truncate("mlp.W_in", layer=0, rank=-1)
    with pytest.raises(ValueError, match=r"rank must be a non-negative integer, got 1\.5"):
        Truncate("mlp.W_in", layer=0, rank=1.5)
    with pytest.raises(ValueError, match=r"give exactly one of keep= \(fraction\) or rank= \(integer\)"):
        Truncate("mlp.W_in", layer=0)
    with pytest.raises(ValueError, match=r"give exactly one of keep="):
        Truncate("mlp.W_in", layer=0, keep=0.5, rank=2)
    r_in = a.matrix("mlp.W_in", 0).max_rank
    with pytest.raises(ValueError, match=rf"rank {r_in + 1} is above the maximum rank {r_in} of L0\.mlp\.W_in "
                                         rf"\(valid: 0\.\.{r_in}\)"):
        enter(Truncate("mlp.W_in", layer=0, rank=r_in + 1))
    with pytest.raises(ValueError, match=rf"rank {a.d_head + 1} is above the maximum rank {a.d_head} of L0\.attn\.OV"):
        enter(Truncate("attn.OV", layer=0, rank=a.d_head + 1))
    with pytest.raises(ValueError, match=rf"rank 999 is above the maximum rank {r_in}"):
        enter(Truncate("mlp.W_in", layer=0, rank=[1, 999], mode="hook"))
    with pytest.raises(ValueError, match=r"unknown rank rule 'floor'; valid: round, authors"):
        Truncate("mlp.W_in", layer=0, keep=0.5, rule="floor")
    with pytest.raises(ValueError, match=r"unknown mode 'weights'; valid: weight, hook"):
        enter(Truncate("mlp.W_in", layer=0, keep=0.5, mode="weights"))
    with pytest.raises(ValueError, match=r"unknown svd method 'full'; valid: 'exact', 'randomized'"):
        enter(Truncate("mlp.W_in", layer=0, keep=0.5, svd="full"))
    with pytest.raises(ValueError, match=rf"directions must have shape \[n, {d}\] for site 'mlp_out', got \(2, {d + 1}\)"):
        enter(ProjectOut("mlp_out", layer=0, directions=torch.randn(2, d + 1)))
    with pytest.raises(ValueError, match=rf"directions must have shape \[n, {d}\] for site 'resid_pre', got \(1, 3\)"):
        enter(ProjectOut("resid_pre", layer=0, directions=torch.randn(3)))
    with pytest.raises(ValueError, match=r"directions must have shape .* got \(2, 2, " + str(d)):
        enter(ProjectOut("attn_out", layer=0, directions=torch.randn(2, 2, d)))
    d_mlp = a.matrix("mlp.W_in", 0).get().shape[1]
    for site in ("mlp_pre", "mlp_post"):
        with pytest.raises(ValueError, match=rf"directions must have shape \[n, {d_mlp}\] for site '{site}', got \(2, {d}\)"):
            enter(ProjectOut(site, layer=0, directions=torch.randn(2, d)))
    with pytest.raises(ValueError, match=r"ProjectOut needs directions="):
        ProjectOut("mlp_out", layer=0)
    _assert_restored(model, snap)
    assert _n_hooks(model) == hooks0


def test_unsupported_model_type():
    with pytest.raises(TypeError, match=r"mechtrunc supports transformer_lens.TransformerBridge models, .*mechtrunc_adapter attribute .*got Linear"):
        adapt(torch.nn.Linear(2, 2))
