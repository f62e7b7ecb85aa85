"""Attribution patching (mechtrunc.analysis.circuits) checked against exact activation and path patching
(mechtrunc.analysis.patching, independently verified) and against TransformerLens' own
attribution_patch, faithfulness, logit_lens and direct_logit_attribution on bridges."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.analysis.circuits import agreement, attribution_scan, circuit_faithfulness, edge_attribution, top_edges
from mechtrunc.analysis.patching import path_patching_scan, patching_scan, raw_change
from mechtrunc.core.prompts import PromptSet

pytestmark = pytest.mark.usefixtures("single_thread")

KEYS = ["direction", "site", "layer", "head", "position"]


def _pair(model, n=12, length=8, seed=0, swap=2):
    """Random clean tokens and their corruption at position(s) ``swap``; the answer is the model's
    own clean prediction, the competitor random (so the gap is resolved)."""
    adapter = mt.adapt(model)
    vocab_in = getattr(adapter, "d_vocab_in", adapter.d_vocab)
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab_in, (n, length), generator=g)
    b = a.clone()
    b[:, swap] = (a[:, swap] + 1 + torch.randint(0, vocab_in - 1, a[:, swap].shape, generator=g)) % vocab_in
    pos = torch.full((n,), length - 1)
    comp = torch.randint(0, adapter.d_vocab, (n, 1), generator=g)
    clean = PromptSet(a, torch.arange(n), pos, torch.zeros(n, dtype=torch.long), comp, ("generic",))
    answer = mt.item_logits(model, clean).argmax(-1)
    return PromptSet(a, clean.rows, pos, answer, comp, ("generic",)), b


@pytest.fixture(scope="module")
def toy_task():
    """A random two-layer toy with two heads per layer (ReLU MLPs; queries, keys and outputs
    scaled up so that attention is sharp and the corruption matters) and 32 random prompt
    pairs corrupted at positions 2 to 5."""
    model = mt.ToyTransformer(mt.ToyConfig(d_model=32, n_heads=2, n_ctx=16, identity_query=False, seed=5)).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(4)
            block.attn.W_K.mul_(4)
            block.attn.W_O.mul_(3)
    clean, corrupted = _pair(model, n=32, length=8, swap=slice(2, 6))
    return model, clean, corrupted


def _merged(exact, est):
    return exact.merge(est, on=KEYS, suffixes=("_exact", "_est"))


# ----------------------------------------------------------------------------------------
# the table: patching_scan's rows, columns and baselines
# ----------------------------------------------------------------------------------------
def test_node_table_has_patching_scans_rows_columns_and_baselines(toy_task):
    model, clean, corrupted = toy_task
    exact = patching_scan(model, clean, corrupted, direction="both", n_boot=200)
    est = attribution_scan(model, clean, corrupted, direction="both", n_boot=200)
    assert list(est.columns) == list(exact.columns)
    assert est[KEYS].equals(exact[KEYS])
    for k in ("clean", "corrupted", "gap", "gap_low", "gap_high"):
        assert est.attrs[k] == pytest.approx(exact.attrs[k], abs=1e-5)
    assert est.attrs["normalised"] and est.attrs["metric"] == exact.attrs["metric"]
    assert est.attrs["passes"] == 2 and est.attrs["method"] == "atp"
    # effects are normalised as the scan's; intervals bracket them
    assert (est["effect_low"] <= est["effect"] + 1e-9).all() and (est["effect"] <= est["effect_high"] + 1e-9).all()


def test_passes_per_method(toy_task):
    model, clean, corrupted = toy_task
    for direction in ("denoising", "noising", "both"):
        assert attribution_scan(model, clean, corrupted, direction=direction, n_boot=0).attrs["passes"] == 2
    df = attribution_scan(model, clean, corrupted, method="ig-inputs", steps=3, direction="both", n_boot=0)
    assert df.attrs["passes"] == 5 and df.attrs["steps"] == 3
    # ig-inputs walks one line: the noising estimate is the denoising one reversed
    d, n = df[df.direction == "denoising"], df[df.direction == "noising"]
    torch.testing.assert_close(torch.tensor(raw_change(d).values), -torch.tensor(raw_change(n).values),
                               atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------------------
# exact where the first-order estimate is exact
# ----------------------------------------------------------------------------------------
def test_equal_to_exact_patching_where_the_metric_is_linear_in_the_site(toy_task):
    """The toy has no final LayerNorm: the logit difference is linear in the last layer's MLP
    output and residual, so the estimate is the exact patch there (and, on a toy whose last
    layer has no MLP, in that layer's attention output and heads' z too)."""
    model, clean, corrupted = toy_task
    kw = dict(sites=["attn_out", "mlp_out", "z", "resid_post"], layers=[1], direction="both", n_boot=0)
    m = _merged(patching_scan(model, clean, corrupted, **kw), attribution_scan(model, clean, corrupted, **kw))
    lin = m[m.site.isin(["mlp_out", "resid_post"])]
    assert len(lin) == 2 * 2 * 9 and (lin["value_exact"] - lin["corrupted_exact"]).abs().max() > 0.1
    torch.testing.assert_close(torch.tensor(lin["value_est"].values), torch.tensor(lin["value_exact"].values),
                               atol=1e-5, rtol=0)
    # and not elsewhere: the last MLP reads the attention output through its ReLU
    assert (m["value_est"] - m["value_exact"]).abs().max() > 1e-3
    attn_only = copy.deepcopy(model)
    attn_only.blocks[1].mlp = None
    m = _merged(patching_scan(attn_only, clean, corrupted, **kw), attribution_scan(attn_only, clean, corrupted, **kw))
    assert set(m.site) == {"attn_out", "z", "resid_post"}
    torch.testing.assert_close(torch.tensor(m["value_est"].values), torch.tensor(m["value_exact"].values),
                               atol=1e-5, rtol=0)


def test_equal_to_exact_on_the_linear_memory():
    from mechtrunc.models.memory import LinearMemory, MemoryConfig

    mem = LinearMemory(MemoryConfig(n_inputs=24, n_outputs=12, d=16, init="random", seed=0, dtype="float32"))
    clean, corrupted = _pair(mem, n=16, length=3, swap=2)
    kw = dict(sites=["mlp_out"], direction="both", n_boot=0)
    m = _merged(patching_scan(mem, clean, corrupted, **kw), attribution_scan(mem, clean, corrupted, **kw))
    assert len(m) == 2 * 4 and (m["value_exact"] - m["corrupted_exact"]).abs().max() > 0.05
    torch.testing.assert_close(torch.tensor(m["value_est"].values), torch.tensor(m["value_exact"].values),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="edge attribution needs a model with a residual stream"):
        edge_attribution(mem, clean, corrupted, n_boot=0)


def _minimal(ff="sequential"):
    from mechtrunc.studies.dynamics.minimal import MinimalConfig, MinimalModel

    model = MinimalModel(MinimalConfig(d_model=160, ff=ff, seq_len=16, seed=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / 4)
    return model.eval()


@pytest.mark.parametrize("ff", ["parallel", "sequential"])
def test_minimal_model_nodes_exact_and_edges_sum_to_nodes(ff):
    model = _minimal(ff)
    clean, corrupted = _pair(model, n=12, length=8)
    kw = dict(sites=["attn_out", "mlp_out", "z"], direction="both", n_boot=0)
    m = _merged(patching_scan(model, clean, corrupted, **kw), attribution_scan(model, clean, corrupted, **kw))
    # the logits are linear in the attention and FF outputs; the sequential FF reads the attention output
    lin = m if ff == "parallel" else m[m.site == "mlp_out"]
    torch.testing.assert_close(torch.tensor(lin["value_est"].values), torch.tensor(lin["value_exact"].values),
                               atol=1e-5, rtol=0)
    edges = edge_attribution(model, clean, corrupted, n_boot=0)
    # the embedding is no writer (no direct path to the logits); the parallel FF reads r_t only
    want = {("L0H0", "logits"), ("L0.mlp", "logits")} | ({("L0H0", "L0.mlp")} if ff == "sequential" else set())
    assert set(zip(edges.sender, edges.receiver)) == want
    _check_edge_sums(model, clean, corrupted, edges, ["z", "mlp_out"])


def test_edges_into_the_logits_equal_path_patching_on_the_toy(toy_task):
    """No final LayerNorm: a head's path to the logits is linear, so its edge estimate is the
    exact path patch (mechtrunc.analysis.patching.path_patching_scan)."""
    model, clean, corrupted = toy_task
    for direction in ("denoising", "noising"):
        exact = path_patching_scan(model, clean, corrupted, "logits", direction=direction, n_boot=0)
        edges = edge_attribution(model, clean, corrupted, direction=direction, positions=[], n_boot=0)
        est = edges[(edges.receiver == "logits") & (edges.sender.str.contains("H"))]
        assert len(est) == len(exact)
        torch.testing.assert_close(torch.tensor(est["value"].values), torch.tensor(exact["value"].values),
                                   atol=1e-5, rtol=0)


def _check_edge_sums(model, clean, corrupted, edges, sites):
    """A sender's edges, summed over its receivers, are its node estimate."""
    nodes = attribution_scan(model, clean, corrupted, sites=sites, positions=[], n_boot=0)
    per_sender = edges[edges.position == "all"].assign(c=raw_change(edges)).groupby("sender")["c"].sum()
    label = lambda r: f"L{r.layer}H{r['head']}" if r.site == "z" else f"L{r.layer}.mlp"
    node = {label(r): c for (_, r), c in zip(nodes.iterrows(), raw_change(nodes))}
    assert set(node) <= set(per_sender.index)
    for k, v in node.items():
        assert per_sender[k] == pytest.approx(v, abs=1e-6)


def test_edge_sums_equal_node_estimates_on_the_toy(toy_task):
    model, clean, corrupted = toy_task
    edges = edge_attribution(model, clean, corrupted, positions=[], n_boot=0)
    _check_edge_sums(model, clean, corrupted, edges, ["z", "mlp_out"])
    # the embedding's edges sum to the first residual's estimate (the positions are the same)
    nodes = attribution_scan(model, clean, corrupted, sites=["resid_pre"], layers=[0], positions=[], n_boot=0)
    embed = raw_change(edges[edges.sender == "embed"]).sum()
    assert embed == pytest.approx(float(raw_change(nodes).iloc[0]), abs=1e-6)


# ----------------------------------------------------------------------------------------
# agreement where the estimate is not exact, and EAP-IG's convergence
# ----------------------------------------------------------------------------------------
def test_rank_agreement_with_exact_patching_on_the_toy(toy_task):
    model, clean, corrupted = toy_task
    exact = patching_scan(model, clean, corrupted, direction="both", n_boot=0)
    atp = agreement(attribution_scan(model, clean, corrupted, direction="both", n_boot=0), exact, k=10)
    ig = agreement(attribution_scan(model, clean, corrupted, direction="both", method="ig-inputs", steps=8,
                                    n_boot=0), exact, k=10)
    assert atp["n"] == len(exact)
    # measured: AtP rank correlation 0.68, top-10 overlap 0.8; EAP-IG on inputs (8 steps) 0.80 and 1.0
    assert atp["spearman"] > 0.6 and atp["top_k"] >= 0.7
    assert ig["spearman"] > atp["spearman"] + 0.05 and ig["top_k"] >= 0.9


def test_ig_on_activations_converges_to_exact_patching(random_toy):
    """Moving one site's activation along the line to the source run, the integral of the
    gradient is the exact patch: the midpoint error shrinks with the steps."""
    model = random_toy
    clean, corrupted = _pair(model, n=8, length=10)
    kw = dict(sites=["resid_pre", "mlp_out"], positions=[], n_boot=0)
    exact = patching_scan(model, clean, corrupted, **kw)
    err = {}
    for k in (1, 4, 32):
        m = _merged(exact, attribution_scan(model, clean, corrupted, method="ig-activations", steps=k, **kw))
        err[k] = float((m["value_est"] - m["value_exact"]).abs().max())
    gap = float((raw_change(exact)).abs().max())
    # measured: 7.1e-3, 3.2e-4, 1.0e-4 of a largest change 0.046 (the ReLUs' kinks slow the midpoint rule)
    assert err[1] > 10 * err[32] and err[4] > err[32] and err[32] < 0.01 * gap, (err, gap)


def test_ig_on_inputs_is_exact_for_the_whole_first_residual(random_toy):
    """Interpolating the input embeddings walks the first residual's own line: its IG estimate
    converges to patching it whole (= the clean run)."""
    model = random_toy
    clean, corrupted = _pair(model, n=8, length=10)
    kw = dict(sites=["resid_pre"], layers=[0], positions=[], n_boot=0)
    exact = patching_scan(model, clean, corrupted, **kw)
    err = {k: abs(float(raw_change(attribution_scan(model, clean, corrupted, method="ig-inputs", steps=k,
                                                    **kw)).iloc[0] - raw_change(exact).iloc[0]))
           for k in (1, 64)}
    assert err[64] < err[1] / 10


# ----------------------------------------------------------------------------------------
# interventions
# ----------------------------------------------------------------------------------------
def test_scores_under_an_intervention_are_the_edited_models(toy_task):
    model, clean, corrupted = toy_task
    trunc = mt.Truncate("mlp.W_in", layer=0, keep=0.1)
    kw = dict(sites=["z", "mlp_out"], n_boot=0)
    with mt.intervene(model, trunc):
        inside = attribution_scan(model, clean, corrupted, **kw)
        inside_edges = edge_attribution(model, clean, corrupted, positions=[], n_boot=0)
    given = attribution_scan(model, clean, corrupted, interventions=[trunc], **kw)
    plain = attribution_scan(model, clean, corrupted, **kw)
    pd.testing.assert_frame_equal(inside, given)
    assert (inside["value"] - plain["value"]).abs().max() > 1e-3
    # the edited weights are the ones read: the same as on a copy truncated for good
    edited = copy.deepcopy(model)
    with mt.intervene(model, trunc):
        edited.load_state_dict(model.state_dict())
    pd.testing.assert_frame_equal(inside, attribution_scan(edited, clean, corrupted, **kw))
    pd.testing.assert_frame_equal(inside_edges, edge_attribution(edited, clean, corrupted, positions=[], n_boot=0))
    changed = inside_edges.assign(d=raw_change(inside_edges) - raw_change(
        edge_attribution(model, clean, corrupted, positions=[], n_boot=0)))
    assert changed["d"].abs().max() > 1e-3  # which edges a truncation changes


# ----------------------------------------------------------------------------------------
# faithfulness
# ----------------------------------------------------------------------------------------
def test_faithfulness_endpoints_and_curve(toy_task):
    model, clean, corrupted = toy_task
    edges = edge_attribution(model, clean, corrupted, positions=[], n_boot=0)
    f = circuit_faithfulness(model, clean, corrupted, edges, n_boot=200)
    total = edges.attrs["n_edges"]
    assert list(f["n_edges"]) == sorted(set([0, total] + [2 ** i for i in range(10) if 2 ** i < total]))
    first, last = f.iloc[0], f.iloc[-1]
    assert first["value"] == pytest.approx(f.attrs["corrupted"], abs=1e-5)  # everything ablated: corrupted run
    assert last["value"] == pytest.approx(f.attrs["clean"], abs=1e-5)  # nothing ablated: clean run
    assert last["recovered"] == pytest.approx(1.0, abs=1e-5) and first["recovered"] == pytest.approx(0, abs=1e-5)
    assert (f["recovered_low"] <= f["recovered"] + 1e-9).all() and (f["recovered"] <= f["recovered_high"] + 1e-9).all()
    # a lone edge recovers nothing without a kept path on to the logits; 32 of the 46 edges
    # recover most of the gap (measured 0.79)
    assert f.set_index("n_edges").loc[32, "recovered"] > 0.7
    mean = circuit_faithfulness(model, clean, corrupted, edges, sizes=[total, 0], ablation="mean", n_boot=0)
    assert mean["value"].iloc[0] == pytest.approx(f.attrs["clean"], abs=1e-5)
    assert abs(mean["value"].iloc[1] - f.attrs["corrupted"]) > 1e-4
    assert top_edges(edges, 3) == list(zip(*[edges.assign(c=raw_change(edges).abs()).sort_values(
        "c", ascending=False, kind="stable").head(3)[k] for k in ("sender", "receiver")]))


# ----------------------------------------------------------------------------------------
# TransformerLens 4.3 on bridges
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bridges(neox_bridge, gpt2_bridge, neox_seq_bridge):
    return {"neox": neox_bridge, "gpt2": gpt2_bridge, "neox_seq": neox_seq_bridge}


def _tl_scores(model, clean, corrupted, granularity):
    from transformer_lens.tools.analysis import attribution_patching as ap

    n = clean.n_sequences
    total: dict = {}
    for i in range(n):
        a, c = int(clean.answer[i]), int(clean.competitors[i, 0])
        fn = lambda logits, a=a, c=c: logits[0, -1, a] - logits[0, -1, c]
        res = ap.attribution_patch(model, clean.tokens[i:i + 1], corrupted[i:i + 1], fn,
                                   ap.EdgeAttributionConfig(granularity=granularity))
        for k, v in (res.edge_scores if granularity == "edge" else res.node_scores).items():
            total[k] = total.get(k, 0.0) + v / n
    return total


def _tl_node(site, layer, head, position):
    from transformer_lens.tools.analysis.attribution_patching import Node

    if site == "resid_pre":
        return Node(kind="embed", position=position)
    if site == "z":
        return Node(kind="attn_head_out", position=position, layer=layer, head=head)
    return Node(kind="mlp_out", position=position, layer=layer)


def _tl_edge(model, row):
    from transformer_lens.tools.analysis.attribution_patching import Node

    p = int(row.position)
    if row.sender == "embed":
        w = Node(kind="embed", position=p)
    elif row.sender.endswith(".mlp"):
        w = Node(kind="mlp_out", position=p, layer=int(row.sender_layer))
    else:
        w = Node(kind="attn_head_out", position=p, layer=int(row.sender_layer), head=int(row.sender_head))
    if row.receiver == "logits":
        r = Node(kind="logits", position=p, layer=model.cfg.n_layers - 1)
    elif row.receiver.endswith(".mlp"):
        r = Node(kind="mlp_in", position=p, layer=int(row.receiver_layer))
    else:
        r = Node(kind=f"{row.receiver[-1]}_input", position=p, layer=int(row.receiver_layer),
                 head=int(row.receiver_head))
    return w, r


@pytest.mark.parametrize("name", ["neox", "gpt2", "neox_seq"])
def test_nodes_and_edges_equal_transformer_lens_attribution_patch(bridges, name):
    """TransformerLens scores denoising, per position, averaged over pairs: mechtrunc's
    raw_change per absolute position (its resid_pre at layer 0 is TL's embed node)."""
    model = bridges[name]
    clean, corrupted = _pair(model, n=3, length=6)
    positions = list(range(6))
    nodes = attribution_scan(model, clean, corrupted, sites=["resid_pre", "z", "mlp_out"], positions=positions,
                             n_boot=0)
    nodes = nodes[(nodes.position != "all") & ((nodes.site != "resid_pre") | (nodes.layer == 0))]
    tl = _tl_scores(model, clean, corrupted, "node")
    mine = {_tl_node(r.site, int(r.layer), None if pd.isna(r["head"]) else int(r["head"]), int(r.position)): c
            for (_, r), c in zip(nodes.iterrows(), raw_change(nodes))}
    assert set(mine) == set(tl)
    assert max(abs(mine[k] - tl[k]) for k in tl) < 1e-5 < max(abs(v) for v in tl.values())
    edges = edge_attribution(model, clean, corrupted, positions=positions, n_boot=0)
    edges = edges[edges.position != "all"]
    tl_e = _tl_scores(model, clean, corrupted, "edge")
    mine_e = {_tl_edge(model, r): c for r, c in zip(edges.itertuples(), raw_change(edges))}
    assert set(mine_e) == set(tl_e)
    assert max(abs(mine_e[k] - tl_e[k]) for k in tl_e) < 1e-5 < max(abs(v) for v in tl_e.values())


def test_faithfulness_equals_transformer_lens(neox_bridge):
    from transformer_lens.tools.analysis import attribution_patching as ap

    model = neox_bridge
    clean, corrupted = _pair(model, n=1, length=6)
    edges = edge_attribution(model, clean, corrupted, positions=[], n_boot=0)
    n = 12
    mine = circuit_faithfulness(model, clean, corrupted, edges, sizes=[n], n_boot=0).iloc[0]
    kept = set(top_edges(edges, n))
    a, c = int(clean.answer[0]), int(clean.competitors[0, 0])
    fn = lambda logits: logits[0, -1, a] - logits[0, -1, c]
    graph = ap.attribution_patch(model, clean.tokens, corrupted, fn, ap.EdgeAttributionConfig(granularity="edge"))
    circuit = []
    for w, r in graph.edge_scores:  # TransformerLens' edges are per position: keep every position's
        row = pd.Series({"position": w.position, "sender": _label_w(w), "receiver": _label_r(r, model)})
        if (row.sender, row.receiver) in kept:
            circuit.append((w, r))
    tl = ap.faithfulness(model, clean.tokens, corrupted, fn, circuit)
    assert mine["recovered"] == pytest.approx(tl.recovered, abs=1e-5)
    assert mine["value"] == pytest.approx(tl.full_metric * 0 + (tl.recovered * (tl.full_metric - tl.corrupt_metric)
                                                                 + tl.corrupt_metric), abs=1e-5)


def _label_w(w):
    if w.kind == "embed":
        return "embed"
    return f"L{w.layer}.mlp" if w.kind == "mlp_out" else f"L{w.layer}H{w.head}"


def _label_r(r, model):
    if r.kind == "logits":
        return "logits"
    return f"L{r.layer}.mlp" if r.kind == "mlp_in" else f"L{r.layer}H{r.head}.{r.kind[0]}"


def test_logit_lens_equals_transformer_lens(bridges):
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_lens

    from mechtrunc.analysis.lens import logit_lens
    from mechtrunc.core.metrics import metrics_from_logits

    for name, model in bridges.items():
        clean, _ = _pair(model, n=6, length=7)
        seq = name != "neox"
        mine = logit_lens(model, clean, sites=("resid_pre", "resid_mid", "resid_post") if seq else
                          ("resid_pre", "resid_post"))
        tl = tl_lens(model, clean.tokens, incl_mid=seq, positions=-1)
        for label, logits in zip(tl.labels, tl.values):
            if label == "final_post":
                layer, site = model.cfg.n_layers - 1, "resid_post"
            else:
                layer, site = int(label.split("_")[0]), f"resid_{label.split('_')[1]}"
            row = mine[(mine.layer == layer) & (mine.site == site)].iloc[0]
            want = metrics_from_logits(logits.float(), clean)
            for k in ("p_answer", "loss", "logit_diff_generic"):
                assert row[k] == pytest.approx(want[k], abs=1e-5), (name, label, k)


def test_direct_logit_attribution_equals_transformer_lens(small_tokenizer_dir):
    """TransformerLens' DLA needs a compatibility-mode bridge (LayerNorm folded into the
    unembedding, writing weights centred); mechtrunc's reads the raw weights and applies the
    final LayerNorm exactly.  Two bridges over copies of one Hugging Face model agree."""
    from transformer_lens.tools.analysis.direct_logit_attribution import direct_logit_attribution

    from mechtrunc.analysis.attribution import attribute
    from mechtrunc.models.testing import tiny_bridge

    for arch in ("gpt2", "gpt_neox"):
        raw = tiny_bridge(arch, small_tokenizer_dir, seed=4)
        folded = tiny_bridge(arch, small_tokenizer_dir, seed=4)
        folded.enable_compatibility_mode()
        clean, _ = _pair(raw, n=5, length=7)
        mine = attribute(raw, clean)
        heads = {}
        comps = {}
        for i in range(clean.n_sequences):
            kw = dict(answer_tokens=clean.answer[i:i + 1], incorrect_tokens=clean.competitors[i:i + 1, 0])
            res = direct_logit_attribution(folded, clean.tokens[i:i + 1], unit="head", **kw)
            for lab, v in zip(res.labels, res.attribution.reshape(len(res.labels), -1)[:, 0].tolist()):
                heads[lab] = heads.get(lab, 0.0) + v / clean.n_sequences
            res = direct_logit_attribution(folded, clean.tokens[i:i + 1], unit="component", **kw)
            for lab, v in zip(res.labels, res.attribution.reshape(len(res.labels), -1)[:, 0].tolist()):
                comps[lab] = comps.get(lab, 0.0) + v / clean.n_sequences
        got = dict(zip(mine.component, mine.attribution))
        for lab, v in heads.items():
            if lab.startswith("L") and "H" in lab:
                assert got[lab] == pytest.approx(v, abs=1e-5), (arch, lab)
        for l in range(raw.cfg.n_layers):
            attn = sum(got[f"L{l}H{h}"] for h in range(raw.cfg.n_heads)) + got.get(f"L{l}.attn_bias", 0.0)
            assert attn == pytest.approx(comps[f"{l}_attn_out"], abs=1e-5), (arch, l)
            assert got[f"L{l}.mlp"] == pytest.approx(comps[f"{l}_mlp_out"], abs=1e-5), (arch, l)
        assert got["embed"] + got.get("pos_embed", 0.0) == pytest.approx(
            comps["embed"] + comps.get("pos_embed", 0.0), abs=1e-5)


# ----------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------
def test_cli_patch_attribute_prints_the_librarys_tables(tmp_path, capsys):
    import json

    from mechtrunc.cli import main
    from mechtrunc.tasks.corrupt import recall_pair
    from mechtrunc.models.toy_training import load_run

    run = tmp_path / "toy_run"
    mt.train(mt.preset("cpu", d_model=16, seq_len=16, steps=2, eval_every=2, batch_size=4, test_size=8),
             out_dir=run, progress=False)
    model, _, task = load_run(run)
    clean, corrupted = recall_pair(task, n=16, seed=10_000)  # what the command builds for --n 16 --seed 0
    assert main(["patch", "attribute", str(run), "--n", "16", "--method", "ig-inputs", "--steps", "2", "--json",
                 "--no-progress"]) == 0
    got = pd.DataFrame(json.loads(capsys.readouterr().out)["rows"])
    want = attribution_scan(model, clean, corrupted, method="ig-inputs", steps=2)
    assert got[KEYS[:2] + ["position"]].equals(want[KEYS[:2] + ["position"]])
    torch.testing.assert_close(torch.tensor(got["value"].values), torch.tensor(want["value"].values), atol=1e-6,
                               rtol=0)
    out = tmp_path / "edges.csv"
    assert main(["patch", "attribute", str(run), "--n", "16", "--edges", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "edges (atp, denoising) in 2 passes per batch" in text and "faithfulness of the top-n edges" in text
    edges = pd.read_csv(out)
    want = edge_attribution(model, clean, corrupted, positions=[])
    assert list(edges.columns) == list(want.columns) and len(edges) == len(want)
    torch.testing.assert_close(torch.tensor(edges["value"].values), torch.tensor(want["value"].values), atol=1e-6,
                               rtol=0)


# ----------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------
def test_a_bridge_without_split_attention_inputs_is_refused_cleanly(gptj_bridge):
    clean, corrupted = _pair(gptj_bridge, n=2, length=5)
    flags = (gptj_bridge.cfg.use_split_qkv_input, gptj_bridge.cfg.use_hook_mlp_in)
    with pytest.raises(ValueError, match="edge attribution reads each head's query/key/value input"):
        edge_attribution(gptj_bridge, clean, corrupted, n_boot=0)
    assert (gptj_bridge.cfg.use_split_qkv_input, gptj_bridge.cfg.use_hook_mlp_in) == flags
    assert len(attribution_scan(gptj_bridge, clean, corrupted, n_boot=0))  # nodes need no split hooks


def test_bad_inputs(random_toy):
    model = random_toy
    clean, corrupted = _pair(model, n=4, length=6)
    with pytest.raises(ValueError, match="step function"):
        attribution_scan(model, clean, corrupted, metric="accuracy")
    with pytest.raises(ValueError, match="unknown method 'eap'; valid: atp, ig-inputs, ig-activations"):
        attribution_scan(model, clean, corrupted, method="eap")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attribution_scan(model, clean, corrupted, method="ig-inputs", steps=0)
    with pytest.raises(ValueError, match="edge attribution supports method 'atp' and 'ig-inputs'"):
        edge_attribution(model, clean, corrupted, method="ig-activations")
    edges = edge_attribution(model, clean, corrupted, positions=[], n_boot=0)
    with pytest.raises(ValueError, match="unknown ablation 'zero'; valid: corrupt, mean"):
        circuit_faithfulness(model, clean, corrupted, edges, ablation="zero")
    with pytest.raises(ValueError, match="circuit size 999 is out of range"):
        circuit_faithfulness(model, clean, corrupted, edges, sizes=[999])
    with pytest.raises(TypeError, match="edges must be a table"):
        circuit_faithfulness(model, clean, corrupted, edges.to_dict())
