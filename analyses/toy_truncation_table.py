"""The paper's toy truncation table: FFN L1 W_in / W_out at several keeps, FFN L0
removed, attention L1 W_V / W_O truncated.  Writes toy_truncation.csv.

    python analyses/toy_truncation_table.py --model runs/demo --out runs/analyses
"""

from __future__ import annotations

from pathlib import Path

import mechtrunc as mt
from _common import load_toy, save_table, toy_parser


def main() -> None:
    p = toy_parser(__doc__)
    p.add_argument("--rule", default="authors", choices=["authors", "round"], help="rank rounding rule")
    args = p.parse_args()
    model, cfg, task, test = load_toy(args)
    prompts = test.to_prompts()
    table = mt.toy_truncation_table(model, prompts, rule=args.rule, keeps=(0, 0.1, 0.2, 0.5, 1))
    save_table(table, Path(args.out) / "toy_truncation.csv", digits=3)


if __name__ == "__main__":
    main()
