"""Attribution of the correct-minus-noise logit difference at repeated triggers, per layer and
head, before and after removing the FFN L1.  Writes toy_attribution.csv and .png.

    python analyses/toy_attribution.py --model runs/demo --out runs/analyses
"""

from __future__ import annotations

from pathlib import Path

import mechtrunc as mt
from _common import load_toy, toy_parser


def compute(model, cfg, task, test):
    """Attribution per component, clean and with the FFN L1 removed, and the change."""
    return mt.attribute_change(model, test.to_prompts(), mt.Ablate("mlp", layer=1))


def main() -> None:
    args = toy_parser(__doc__).parse_args()
    model, cfg, task, test = load_toy(args)
    change = compute(model, cfg, task, test)
    out = Path(args.out)
    change.to_csv(out / "toy_attribution.csv", index=False)
    mt.plot_attribution(change, out / "toy_attribution.png")
    print(change[["component", "clean", "intervened", "change"]].round(3).to_string(index=False))
    print(f"wrote {out / 'toy_attribution.csv'} and {out / 'toy_attribution.png'}")


if __name__ == "__main__":
    main()
