"""The paper's toy truncation table: layer-2 FFN W_in / W_out at several keeps, layer-1 FFN
removed, layer-2 attention W_V / W_O truncated.  Writes toy_truncation.csv.

    python analyses/toy_truncation_table.py --model runs/demo --out runs/analyses
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import mechtrunc as mt
from _common import load_toy, toy_parser


def variants(rule: str) -> dict[str, list]:
    out = {"full model": []}
    for matrix in ("mlp.W_in", "mlp.W_out"):
        for keep in (0, 0.1, 0.2, 0.5, 1):
            out[f"layer-2 FFN {matrix[4:]} keep {keep}"] = [mt.Truncate(matrix, layer=1, keep=keep, rule=rule)]
    out["layer-2 FFN removed"] = [mt.Ablate("mlp", layer=1)]
    out["layer-1 FFN removed"] = [mt.Ablate("mlp", layer=0)]
    out["layer-2 attention W_V keep 0.1"] = [mt.Truncate("attn.W_V", layer=1, keep=0.1, rule=rule)]
    out["layer-2 attention W_O keep 0.1"] = [mt.Truncate("attn.W_O", layer=1, keep=0.1, rule=rule)]
    return out


def main() -> None:
    p = toy_parser(__doc__)
    p.add_argument("--rule", default="authors", choices=["authors", "round"], help="rank rounding rule")
    args = p.parse_args()
    model, cfg, task, test = load_toy(args)
    prompts = test.to_prompts()
    rows = [mt.evaluate(model, prompts, *ivs, label=name) for name, ivs in variants(args.rule).items()]
    table = pd.concat(rows, ignore_index=True)[["variant", "accuracy", "p_noise", "p_answer", "logit_diff_noise"]]
    path = Path(args.out) / "toy_truncation.csv"
    table.to_csv(path, index=False)
    print(table.round(3).to_string(index=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
