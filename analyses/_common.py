"""Shared argument handling for the analysis scripts: a trained toy model directory (trained
with the cpu preset on first use) and an output directory."""

from __future__ import annotations

import os
import platform
import sys

# The kernels the docs' numbers were produced with (docs/results.md, "Numbers across machines"):
# torch's AVX2 kernels on x86-64.  This does not make other CPUs give the same last digits (MKL,
# oneDNN and the CPU differ too): docs/data/provenance.json records each CSV's machine.  Must run
# before torch loads: import this module before anything imports torch.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import mechtrunc as mt  # noqa: E402


def toy_parser(description: str, docs_outputs: bool = False) -> argparse.ArgumentParser:
    """Arguments of a toy analysis; ``docs_outputs`` adds ``--data`` and ``--figures`` (where a
    script writes the CSVs and PNGs of the docs)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="runs/demo", help="trained toy model directory (trained with the cpu preset if missing)")
    p.add_argument("--out", default="runs/analyses", help="output directory for CSV/PNG files")
    p.add_argument("--device", default="cpu", help="torch device")
    if docs_outputs:
        p.add_argument("--data", default="docs/data", help="directory for the CSV files")
        p.add_argument("--figures", default="docs/figures", help="directory for the PNG")
    return p


def load_toy(args):
    """(model, train config, task, clean test batch) for the analysis."""
    if not (Path(args.model) / "model.safetensors").exists():
        print(f"{args.model} has no trained model: training the cpu preset there first")
        mt.train(mt.preset("cpu", device=args.device), out_dir=args.model)
    model, cfg, task = mt.load_run(args.model, device=args.device)
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return model, cfg, task, test


def save_table(df, path, digits: int = 4, columns=None) -> Path:
    """Write ``df`` to the CSV ``path`` (its folder created), print it rounded to ``digits``
    (only ``columns`` when given) and the path: the ending every table script shares."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    import _docs

    _docs.record_provenance(Path(sys.argv[0]).name, [path])  # only when path is in docs/data
    with pd.option_context("display.width", 250, "display.max_colwidth", 40):
        print((df if columns is None else df[columns]).round(digits).to_string(index=False))
    print(f"wrote {path}")
    return path
