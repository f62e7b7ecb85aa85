"""Which singular components of the FFN L1 promote the noise token?  Rank them, then
compare removing only the top ones with removing the whole FFN and with LASER truncation.
Collateral damage: the loss on the training distribution (noisy sequences, the target being the
token actually sampled, noise included) and the loss at non-trigger (bigram) positions.  Writes
toy_noise_components.csv (the comparison) and toy_component_ranking.csv.

    python analyses/toy_noise_components.py --model runs/demo --out runs/analyses
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import mechtrunc as mt
from _common import load_toy, toy_parser


def compute(model, cfg, task, test, top=(1, 2, 4, 8)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranking of the L1 W_out components by noise push, comparison table)."""
    recall, bigram = test.to_prompts(), test.bigram_prompts()
    noisy = task.sample(cfg.test_size, seed=cfg.seed + 20_000).to_prompts(clean=False)
    noise = task.config.noise_id
    ranking = mt.rank_components(model, layer=1, tokens=[noise], matrix="mlp.W_out", prompts=recall)
    variants = {"full model": [], "FFN L1 removed": [mt.Ablate("mlp", layer=1)],
                "LASER W_in keep 0.1": [mt.Truncate("mlp.W_in", layer=1, keep=0.1, rule="authors")],
                "LASER W_out keep 0.1": [mt.Truncate("mlp.W_out", layer=1, keep=0.1, rule="authors")]}
    for n in top:
        chosen = tuple(int(i) for i in ranking["component"].head(n))
        variants[f"remove top-{n} noise components {list(chosen)}"] = [mt.RemoveComponents("mlp.W_out", layer=1, indices=chosen)]
    rows = []
    for name, ivs in variants.items():
        r = mt.evaluate(model, recall, *ivs, label=name).iloc[0]
        b = mt.evaluate(model, bigram, *ivs, label=name).iloc[0]
        n = mt.evaluate(model, noisy, *ivs, label=name).iloc[0]
        rows.append({"variant": name, "accuracy": r["accuracy"], "p_noise": r["p_noise"], "p_answer": r["p_answer"],
                     "train_distribution_loss": n["loss"], "bigram_loss": b["loss"], "bigram_accuracy": b["accuracy"]})
    return ranking, pd.DataFrame(rows)


def main() -> None:
    p = toy_parser(__doc__)
    p.add_argument("--top", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of top components to remove")
    args = p.parse_args()
    ranking, table = compute(*load_toy(args), top=args.top)
    ranking.to_csv(Path(args.out) / "toy_component_ranking.csv", index=False)
    table.to_csv(Path(args.out) / "toy_noise_components.csv", index=False)
    print(ranking.head(8).round(3).to_string(index=False))
    print()
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
