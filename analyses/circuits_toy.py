"""Attribution patching checked against truth: on the toy model (the cpu preset, the pairs of
``causal_toy.py``) the gradient estimates (AtP, EAP-IG on inputs and on activations) against
exact activation patching and path patching, EAP-IG's convergence with its steps, and the
faithfulness curve of the circuits the edge scores rank; on tiny random bridges (GPT-NeoX
parallel and sequential, GPT-2) mechtrunc's node and edge scores, logit lens and direct logit
attribution against TransformerLens' own.  Writes to --data: cpu_circuits_agreement.csv,
cpu_circuits_convergence.csv, cpu_circuits_faithfulness.csv, circuits_transformer_lens.csv, and
rewrites the generated blocks of docs/causal.md's "Attribution patching" section.

    python analyses/circuits_toy.py --model runs/demo
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from _common import load_toy, save_table, toy_parser  # first: it pins the reference kernels
import _docs  # noqa: E402
import torch  # noqa: E402

import mechtrunc as mt  # noqa: E402
from mechtrunc.analysis.circuits import agreement, attribution_scan, circuit_faithfulness, edge_attribution  # noqa: E402
from mechtrunc.analysis.patching import path_patching_scan, patching_scan, raw_change  # noqa: E402
from mechtrunc.core.prompts import PromptSet  # noqa: E402

STEPS = 5  # the EAP-IG steps of the agreement table
CONVERGENCE_STEPS = (1, 2, 4, 8, 16)
CONVERGENCE_PAIRS = 64  # the first pairs, for the convergence table


def _row(model, comparison, method, a: dict, passes) -> dict:
    return {"model": model, "comparison": comparison, "method": method, "n": a["n"], "spearman": a["spearman"],
            "top_k": a["top_k"], "k": a["k"], "max_abs_diff": a["max_abs_diff"], "passes": passes}


def _path_agreement(model, clean, corrupted, edges: pd.DataFrame, direction: str) -> dict:
    """Head -> receiver edges against path patching of the same paths (the senders of each receiver)."""
    est, exact = [], []
    heads = edges[edges["sender"].str.contains("H") & (edges["position"] == "all")]
    for receiver, g in heads.groupby("receiver", sort=False):
        rec = "logits" if receiver == "logits" else (("mlp", int(g["receiver_layer"].iloc[0])) if
                                                     receiver.endswith(".mlp") else
                                                     (receiver[-1], int(g["receiver_layer"].iloc[0]),
                                                      int(g["receiver_head"].iloc[0])))
        senders = list(zip(g["sender_layer"].astype(int), g["sender_head"].astype(int)))
        p = path_patching_scan(model, clean, corrupted, rec, senders=senders, direction=direction, n_boot=0)
        exact += list(p["value"] - (p["corrupted"] if direction == "denoising" else p["clean"]))
        est += list(raw_change(g))
    e, x = pd.Series(est), pd.Series(exact)
    k = min(5, len(e))
    kth = x.abs().sort_values(ascending=False).iloc[k - 1]
    top_x = set(x.index[x.abs() >= kth - 1e-6 * float(x.abs().max())])  # ties with the k-th included
    top_e = set(e.abs().sort_values(ascending=False, kind="stable").index[:k])
    return {"n": len(e), "spearman": float(e.rank().corr(x.rank())), "top_k": len(top_e & top_x) / k, "k": k,
            "max_abs_diff": float((e - x).abs().max())}


def toy_tables(model, cfg, task, n: int = 256) -> dict[str, pd.DataFrame]:
    started = time.time()
    clean, corrupted = mt.recall_pair(task, n=n, seed=cfg.seed + 10_000)
    exact = patching_scan(model, clean, corrupted, direction="both", n_boot=0)
    rows = []
    for method in ("atp", "ig-inputs", "ig-activations"):
        est = attribution_scan(model, clean, corrupted, direction="both", method=method, steps=STEPS, n_boot=0)
        rows.append(_row("toy (cpu preset)", "exact activation patching (every row of the scan)",
                         method if method == "atp" else f"{method}, {STEPS} steps", agreement(est, exact, k=10),
                         est.attrs["passes"]))
    for method in ("atp", "ig-inputs"):
        edges = edge_attribution(model, clean, corrupted, method=method, steps=STEPS, positions=[], n_boot=0)
        rows.append(_row("toy (cpu preset)", "exact path patching (every head -> receiver path)",
                         method if method == "atp" else f"{method}, {STEPS} steps",
                         _path_agreement(model, clean, corrupted, edges, "denoising"), edges.attrs["passes"]))
    agree = pd.DataFrame(rows)
    print(f"agreement: {time.time() - started:.0f} s", flush=True)
    # EAP-IG on activations converges to the exact patch of a whole site
    sub_clean, sub_corrupted = clean.subset_sequences(slice(0, CONVERGENCE_PAIRS)), corrupted.subset_sequences(
        slice(0, CONVERGENCE_PAIRS))
    kw = dict(sites=("resid_pre", "attn_out", "mlp_out"), positions=[], direction="both", n_boot=0)
    whole = patching_scan(model, sub_clean, sub_corrupted, **kw)
    conv = []
    for k in CONVERGENCE_STEPS:
        for method in ("ig-activations", "ig-inputs"):
            est = attribution_scan(model, sub_clean, sub_corrupted, method=method, steps=k, **kw)
            m = whole.merge(est, on=["direction", "site", "layer", "head", "position"], suffixes=("", "_est"))
            conv.append({"method": method, "steps": k, "n": len(m),
                         "max_abs_diff": float((m["value"] - m["value_est"]).abs().max()),
                         "gap": float(whole.attrs["gap"])})
    print(f"convergence: {time.time() - started:.0f} s", flush=True)
    edges = edge_attribution(model, clean, corrupted, positions=[], n_boot=0)
    faith = pd.concat([circuit_faithfulness(model, clean, corrupted, edges, ablation=a) for a in ("corrupt", "mean")],
                      ignore_index=True)
    return {"agreement": agree, "convergence": pd.DataFrame(conv), "faithfulness": faith}


def _bridge_pair(model, n=4, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = mt.adapt(model).d_vocab
    a = torch.randint(0, vocab, (n, length), generator=g)
    b = a.clone()
    b[:, 1:4] = torch.randint(0, vocab, (n, 3), generator=g)
    pos = torch.full((n,), length - 1)
    comp = torch.randint(0, vocab, (n, 1), generator=g)
    clean = PromptSet(a, torch.arange(n), pos, torch.zeros(n, dtype=torch.long), comp, ("generic",))
    return PromptSet(a, clean.rows, pos, mt.item_logits(model, clean).argmax(-1), comp, ("generic",)), b


def _tl_attribution(model, clean, corrupted) -> tuple[float, float, float]:
    """The largest |mechtrunc - TransformerLens| over node and over edge scores, and the largest |score|."""
    from transformer_lens.tools.analysis import attribution_patching as ap

    n, length = clean.tokens.shape
    positions = list(range(length))
    tl_n, tl_e = {}, {}
    for i in range(n):
        a, c = int(clean.answer[i]), int(clean.competitors[i, 0])
        fn = lambda logits, a=a, c=c: logits[0, -1, a] - logits[0, -1, c]
        for gran, acc in (("node", tl_n), ("edge", tl_e)):
            res = ap.attribution_patch(model, clean.tokens[i:i + 1], corrupted[i:i + 1], fn,
                                       ap.EdgeAttributionConfig(granularity=gran))
            for k, v in (res.edge_scores if gran == "edge" else res.node_scores).items():
                acc[k] = acc.get(k, 0.0) + v / n
    nodes = attribution_scan(model, clean, corrupted, sites=["resid_pre", "z", "mlp_out"], positions=positions,
                             n_boot=0)
    nodes = nodes[(nodes["position"] != "all") & ((nodes["site"] != "resid_pre") | (nodes["layer"] == 0))]
    node_diff = 0.0
    for (_, r), c in zip(nodes.iterrows(), raw_change(nodes)):
        p = int(r["position"])
        key = (ap.Node(kind="embed", position=p) if r["site"] == "resid_pre" else
               ap.Node(kind="attn_head_out", position=p, layer=int(r["layer"]), head=int(r["head"]))
               if r["site"] == "z" else ap.Node(kind="mlp_out", position=p, layer=int(r["layer"])))
        node_diff = max(node_diff, abs(tl_n.pop(key) - c))
    assert not tl_n, f"TransformerLens scored nodes mechtrunc did not: {list(tl_n)[:3]}"
    edges = edge_attribution(model, clean, corrupted, positions=positions, n_boot=0)
    edges = edges[edges["position"] != "all"]
    edge_diff = 0.0
    for r, c in zip(edges.itertuples(), raw_change(edges)):
        p = int(r.position)
        w = (ap.Node(kind="embed", position=p) if r.sender == "embed" else
             ap.Node(kind="mlp_out", position=p, layer=int(r.sender_layer)) if r.sender.endswith(".mlp") else
             ap.Node(kind="attn_head_out", position=p, layer=int(r.sender_layer), head=int(r.sender_head)))
        v = (ap.Node(kind="logits", position=p, layer=model.cfg.n_layers - 1) if r.receiver == "logits" else
             ap.Node(kind="mlp_in", position=p, layer=int(r.receiver_layer)) if r.receiver.endswith(".mlp") else
             ap.Node(kind=f"{r.receiver[-1]}_input", position=p, layer=int(r.receiver_layer),
                     head=int(r.receiver_head)))
        edge_diff = max(edge_diff, abs(tl_e.pop((w, v)) - c))
    assert not tl_e, f"TransformerLens scored edges mechtrunc did not: {list(tl_e)[:3]}"
    return node_diff, edge_diff, float(raw_change(edges).abs().max())


def _tl_lens(model, clean) -> float:
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_lens

    from mechtrunc.core.metrics import metrics_from_logits

    seq = mt.adapt(model).mlp_input_site(0) == "resid_mid"
    mine = mt.logit_lens(model, clean, sites=("resid_pre", "resid_mid", "resid_post") if seq else
                         ("resid_pre", "resid_post"))
    tl = tl_lens(model, clean.tokens, incl_mid=seq, positions=-1)
    diff = 0.0
    for label, logits in zip(tl.labels, tl.values):
        layer, site = ((model.cfg.n_layers - 1, "resid_post") if label == "final_post" else
                       (int(label.split("_")[0]), f"resid_{label.split('_')[1]}"))
        row = mine[(mine["layer"] == layer) & (mine["site"] == site)].iloc[0]
        want = metrics_from_logits(logits.float(), clean)
        diff = max(diff, *(abs(row[k] - want[k]) for k in ("p_answer", "loss", "logit_diff_generic")))
    return diff


def _tl_dla(arch, tokenizer_dir) -> float:
    from transformer_lens.tools.analysis.direct_logit_attribution import direct_logit_attribution

    from mechtrunc.models.testing import tiny_bridge

    raw = tiny_bridge(arch, tokenizer_dir, seed=4)
    folded = tiny_bridge(arch, tokenizer_dir, seed=4)
    folded.enable_compatibility_mode()  # TransformerLens' DLA needs the final LayerNorm folded
    clean, _ = _bridge_pair(raw, n=5, length=7)
    got = dict(zip(*[mt.attribute(raw, clean)[c] for c in ("component", "attribution")]))
    heads: dict = {}
    for i in range(clean.n_sequences):
        res = direct_logit_attribution(folded, clean.tokens[i:i + 1], unit="head", answer_tokens=clean.answer[i:i + 1],
                                       incorrect_tokens=clean.competitors[i:i + 1, 0])
        for lab, v in zip(res.labels, res.attribution.reshape(len(res.labels), -1)[:, 0].tolist()):
            heads[lab] = heads.get(lab, 0.0) + v / clean.n_sequences
    return max(abs(got[lab] - v) for lab, v in heads.items() if lab.startswith("L") and "H" in lab)


def bridge_table() -> pd.DataFrame:
    from mechtrunc.models.testing import tiny_bridge, word_level_tokenizer_dir

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok = word_level_tokenizer_dir(Path(tmp), [f"w{i}" for i in range(511)] + ["<unk>"], unk_token="<unk>",
                                       special_token="<unk>")
        for name, arch, kw in (("GPT-NeoX (parallel, Pythia-shaped)", "gpt_neox", {}),
                               ("GPT-NeoX (sequential)", "gpt_neox", {"use_parallel_residual": False}),
                               ("GPT-2", "gpt2", {})):
            model = tiny_bridge(arch, tok, seed=1, **kw)
            clean, corrupted = _bridge_pair(model)
            node_diff, edge_diff, largest = _tl_attribution(model, clean, corrupted)
            rows.append({"model": name, "node_max_abs_diff": node_diff, "edge_max_abs_diff": edge_diff,
                         "largest_score": largest, "logit_lens_max_abs_diff": _tl_lens(model, clean),
                         "dla_max_abs_diff": _tl_dla(arch, tok) if not kw else float("nan")})
    return pd.DataFrame(rows)


def main() -> None:
    args = toy_parser(__doc__, docs_outputs=True).parse_args()
    torch.manual_seed(0)
    model, cfg, task, _ = load_toy(args)
    data = Path(args.data)
    out = toy_tables(model, cfg, task)
    save_table(out["agreement"], data / "cpu_circuits_agreement.csv")
    save_table(out["convergence"], data / "cpu_circuits_convergence.csv", digits=6)
    save_table(out["faithfulness"], data / "cpu_circuits_faithfulness.csv")
    save_table(bridge_table(), data / "circuits_transformer_lens.csv", digits=10)
    if data.resolve() == _docs.DATA.resolve():
        for name in _docs.CIRCUITS_BLOCKS:
            _docs.write_block(name)
        print(f"rewrote the generated blocks of {_docs.CAUSAL}")


if __name__ == "__main__":
    main()
