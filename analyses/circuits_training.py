"""Circuits across training on both of the project's models: at every kept checkpoint of the toy
(the cpu preset retrained with its model kept at each of its 10 evaluations, ``--toy-run``) and
at selected checkpoints of our language model (``--run``, default the 4-layer d128 noisy-recall
run ``runs/lm-dose/alpha0.1-s0``), :func:`mechtrunc.studies.circuit_study` (node AtP of every
head and MLP, the top edges, the margin ledger), then the step where attention's evidence for
the answer overtakes the MLPs' generic push (``noise`` on the toy, `` the`` on the language
model), with its 95% interval over the prompts.  Writes to --data: circuits_training_evidence.csv,
circuits_training_overtaking.csv, circuits_training_circuit.csv, and rewrites the generated
blocks of docs/causal.md's "Circuits across training" section.  A few minutes of one CPU core
(fewer prompts on the language model: ``--lm-pairs``).

    python analyses/circuits_training.py --run runs/lm-dose/alpha0.1-s0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import _common  # noqa: F401  first: it pins the reference kernels
import _docs  # noqa: E402
import torch  # noqa: E402

import mechtrunc as mt  # noqa: E402
from mechtrunc.analysis.patching import raw_change  # noqa: E402
from mechtrunc.studies.circuits import (  # noqa: E402
    ToyCheckpoints, circuit_pairs, circuit_study, evidence_by_step, overtaking_step,
)
from mechtrunc.models.toy_training import KeepCheckpoints  # noqa: E402

#: the language model's checkpoints studied (of its Pythia-like schedule)
LM_STEPS = (0, 16, 64, 128, 256, 512, 750, 1000, 1500)
#: edges of the circuit table per chosen step
SHOWN = 5


def toy_checkpoints(run: Path) -> Path:
    """The cpu preset trained in ``run`` with its model kept at every evaluation (trained there
    once; the weights equal the cpu preset's, evaluations do not touch training)."""
    ck = run / "checkpoints"
    if not ToyCheckpoints.looks_like(ck):
        cfg = mt.preset("cpu")
        mt.train(cfg, out_dir=run, progress=False, callback=KeepCheckpoints(ck, cfg))
    return ck


def study(name: str, source, steps, pairs: int, out: Path) -> dict[str, pd.DataFrame]:
    clean, corrupted = circuit_pairs(source, n=pairs, seed=0)
    t = circuit_study(source, steps, clean, corrupted, out=out / name, n_edges=20, n_boot=200, progress=False)
    ev = evidence_by_step(t.ledger).assign(model=name)
    ot = overtaking_step(t.ledger, n_boot=1000)
    last = max(steps)
    nodes = t.nodes[t.nodes["step"] == last].assign(change=raw_change(t.nodes[t.nodes["step"] == last]))
    top = nodes.reindex(nodes["change"].abs().sort_values(ascending=False).index).iloc[0]
    what = f"L{int(top['layer'])}H{int(top['head'])}" if top["site"] == "z" else f"L{int(top['layer'])}.mlp"
    over = pd.DataFrame([{"model": name, "pairs": clean.n_sequences, "metric": t.nodes["metric"].iloc[0],
                          "generic": clean.competitor_names[0], "checkpoints": len(steps),
                          **{k: ot[k] for k in ("step", "low", "high", "never", "n_boot", "level")},
                          "top_node_last": what, "top_node_change": float(top["change"])}])
    chosen = sorted({min(steps), sorted(steps)[len(steps) // 2], last})
    circ = t.edges[t.edges["step"].isin(chosen) & (t.edges["rank"] <= SHOWN)]
    circ = circ.assign(model=name, change=raw_change(circ))[["model", "step", "rank", "sender", "receiver", "change"]]
    return {"evidence": ev, "overtaking": over, "circuit": circ}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/lm-dose/alpha0.1-s0", help="a language-model run (mechtrunc lm train)")
    p.add_argument("--toy-run", default="runs/circuits-toy", help="toy run kept at every evaluation (trained if missing)")
    p.add_argument("--out", default="runs/analyses/circuits-training", help="the studies' output directories")
    p.add_argument("--toy-pairs", type=int, default=64, help="toy prompt pairs")
    p.add_argument("--lm-pairs", type=int, default=24, help="language-model prompt pairs")
    p.add_argument("--data", default=str(_docs.DATA), help="directory for the CSV files")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    toy = toy_checkpoints(Path(args.toy_run))
    parts = [study("toy", toy, ToyCheckpoints(toy).steps(), args.toy_pairs, out),
             study("lm", args.run, list(LM_STEPS), args.lm_pairs, out)]
    data = Path(args.data)
    for key, cols in (("evidence", ["model", "step", "attention", "mlp_push", "margin", "ahead"]),
                      ("overtaking", None), ("circuit", None)):
        df = pd.concat([x[key] for x in parts], ignore_index=True)
        _common.save_table(df if cols is None else df[cols], data / f"circuits_training_{key}.csv")
    if data.resolve() == _docs.DATA.resolve():
        for name in _docs.CIRCUITS_TRAINING_BLOCKS:
            _docs.write_block(name)
        print("rewrote the generated blocks of docs/causal.md")


if __name__ == "__main__":
    main()
