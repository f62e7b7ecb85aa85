"""Lenses on the toy model (the cpu preset): which weight components promote the generic token
found in the training data (the noise token, not told to the lens), what they write in the
vocabulary, and the logit lens along the residual stream for the full model, LASER on the
FFN L1's W_in (keep 0.1) and the FFN L1 removed.  Writes to --data:
cpu_lens_generic.csv, cpu_lens_components.csv, cpu_lens_vocab.csv, cpu_logit_lens.csv; to
--figures: cpu_logit_lens.png.

    python analyses/lens_toy.py --model runs/demo
    python analyses/lens_toy.py --replot      # redraw docs/figures/cpu_logit_lens.png from docs/data (no model)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from _common import load_toy, toy_parser  # first: it pins the reference kernels
import mechtrunc as mt

MATRICES = ("mlp.W_in", "mlp.W_out", "attn.W_O", "attn.OV")


def compute(model, cfg, task, test, top: int = 3, k: int = 5) -> dict[str, pd.DataFrame]:
    clean = test.to_prompts()
    noisy = task.sample(cfg.test_size, seed=cfg.seed + 20_000).to_prompts(clean=False)  # training targets
    generic = mt.generic_tokens(noisy, k=3)
    generic.insert(1, "token_str", [task.itos[t] for t in generic["token"]])
    found = generic.head(1)  # the most frequent training target: the lens is not told which is noise
    ranked = pd.concat([mt.rank_generic_components(model, m, None, found, prompts=clean, itos=task.itos)
                        .sort_values("generic_score", ascending=False).head(top) for m in MATRICES],
                       ignore_index=True)
    lenses = []
    for (matrix, layer, head), g in ranked.groupby(["matrix", "layer", "head"], sort=False, dropna=False):
        lenses.append(mt.vocab_lens(model, matrix, int(layer), k=k, head=None if pd.isna(head) else int(head),
                                    components=[int(c) for c in g["component"]], prompts=clean, itos=task.itos))
    vocab = pd.concat(lenses, ignore_index=True)
    logit = mt.logit_lens_compare(model, clean, {
        "full model": [],
        "mlp.W_in L1 keep 0.1": [mt.Truncate("mlp.W_in", layer=1, keep=0.1, rule="authors")],
        "FFN L1 removed": [mt.Ablate("mlp", layer=1)],
    })
    return {"generic": generic, "components": ranked, "vocab": vocab, "logit": logit}


def write(model, cfg, task, test, data: Path, figures: Path) -> dict[str, pd.DataFrame]:
    """Compute and write the CSVs and the figure (also called by make_results.py)."""
    out = compute(model, cfg, task, test)
    data.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    for name, df in (("generic", out["generic"]), ("components", out["components"]), ("vocab", out["vocab"])):
        df.to_csv(data / f"cpu_lens_{name}.csv", index=False)
    out["logit"].to_csv(data / "cpu_logit_lens.csv", index=False)
    out["png"] = plot(out["logit"], figures)
    return out


def plot(logit: pd.DataFrame, figures: Path) -> Path:
    return mt.viz.logit_lens_plot(logit, figures / "cpu_logit_lens.png", metrics=["p_answer", "p_noise"],
                                  title="logit lens, cpu-preset toy model (clean recall items)")


def main() -> None:
    parser = toy_parser(__doc__, docs_outputs=True)
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the figure from --data's cpu_logit_lens.csv (no model)")
    args = parser.parse_args()
    if args.replot:
        from mechtrunc.core.results import read_table

        print(f"redrew {plot(read_table(Path(args.data) / 'cpu_logit_lens.csv'), Path(args.figures))}")
        return
    model, cfg, task, test = load_toy(args)
    data, figures = Path(args.data), Path(args.figures)
    out = write(model, cfg, task, test, data, figures)
    png = out["png"]
    print(out["generic"].to_string(index=False))
    cols = ["matrix", "layer", "head", "component", "singular_value", "generic_score", "generic_z", "generic_rank",
            "top_str", "mean_coef", "activation_score"]
    print(out["components"][cols].round(3).to_string(index=False))
    top = out["vocab"][out["vocab"]["side"] == "top"]
    print(top.groupby(["matrix", "layer", "head", "component"], dropna=False, sort=False)["token_str"]
          .agg(lambda s: " ".join(repr(t) for t in s)).to_string())
    print(out["logit"][["label", "layer", "site", "accuracy", "p_answer", "p_noise"]].round(3).to_string(index=False))
    print(f"wrote {data}/cpu_lens_*.csv, {data / 'cpu_logit_lens.csv'} and {png}")


if __name__ == "__main__":
    main()
