"""Shared pieces of the linear-memory analysis scripts (public API only)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

#: the base configuration the scripts vary one factor at a time around
BASE = dict(n_inputs=64, n_outputs=64, d=128, alpha=0.3, embeddings="gaussian", init="zero", seed=0)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/memory", help="output directory (default runs/memory)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny matrices)")
    return p


def setup(args) -> Path:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
