"""Rewrite the layer labels of the committed result tables (docs/data, docs/figures) 0-based.

Layer numbers are 0-based everywhere (docs/api.md): the paper's "layer 2" of its two-layer toy is
layer 1.  Tables written before that used 1-based labels: the toy's ``ffn2_removed`` columns,
variants such as ``layer-2 FFN W_in keep 0.1`` or ``L2 FFN removed`` and the ``no_ffn2`` model of
the attention-only study.  This step renames those labels to the names the code now writes
(``last_ffn_removed``, ``mlp.W_in L1 keep 0.1``, ``FFN L1 removed``, ``no_last_ffn``...) and changes
nothing else: every other cell, every number included, is kept as the same text.  A rewritten
label matches no rule, so running it again changes nothing.  Old files elsewhere stay readable:
``mechtrunc.core.results.read_table`` reads ``ffn2_removed`` columns under their current name.

    python tools/relabel_layers.py           # rewrite the tables in place, list what changed
    python tools/relabel_layers.py --check   # exit 1 if a table still holds an old label
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("docs/data/*.csv", "docs/figures/*.csv")


def _minus_one(m: re.Match, template: str) -> str:
    return template.format(*m.groups(), n=int(m.group(1)) - 1)


#: whole-cell rules: old 1-based label -> the label the code writes now
CELL_RULES = [
    (re.compile(r"layer-(\d+) FFN removed"), "FFN L{n} removed"),
    (re.compile(r"layer-(\d+) FFN (W_in|W_out) keep (\S+)"), "mlp.{1} L{n} keep {2}"),
    (re.compile(r"layer-(\d+) attention (W_V|W_O) keep (\S+)"), "attn.{1} L{n} keep {2}"),
    (re.compile(r"LASER L(\d+) (W_in|W_out) keep (\S+)"), "mlp.{1} L{n} keep {2}"),
    (re.compile(r"L(\d+) FFN removed"), "FFN L{n} removed"),
    (re.compile(r"L(\d+) (OV|W_O|W_V) (keep \S+|remove noise component)"), "attn.{1} L{n} {2}"),
    (re.compile(r"L(\d+) head (noise push|share of noise push)"), "attention L{n} {1}"),
    (re.compile(r"L(\d+) OV - OV_init noise push"), "attn.OV L{n} - OV_init noise push"),
    (re.compile(r"no_ffn(2)"), "no_last_ffn"),
]
#: header rule: the toy's removed-FFN variant inside column names (``ffn2_removed_accuracy``)
HEADER_RULE = (re.compile(r"(?<![A-Za-z0-9])ffn2_removed(?![A-Za-z0-9])"), "last_ffn_removed")


def relabel_cell(cell: str) -> str:
    for pattern, template in CELL_RULES:
        m = pattern.fullmatch(cell)
        if m:
            return _minus_one(m, template)
    return cell


def relabel(text: str) -> str:
    """The CSV ``text`` with old labels renamed; every other cell as it was."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return text
    rows[0] = [HEADER_RULE[0].sub(HEADER_RULE[1], c) for c in rows[0]]
    rows[1:] = [[relabel_cell(c) for c in row] for row in rows[1:]]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report tables that hold old labels")
    args = parser.parse_args(argv)
    stale = []
    for pattern in TABLES:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text()
            new = relabel(text)
            if new != text:
                stale.append(path.relative_to(ROOT))
                if not args.check:
                    path.write_text(new)
    verb = "hold old layer labels" if args.check else "relabelled"
    print(f"{len(stale)} tables {verb}" + "".join(f"\n  {p}" for p in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
