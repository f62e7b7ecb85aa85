"""Shared helpers of the benchmark scripts (timing, seeding, reporting).

Every benchmark compares mechtrunc against a reference implementation measured in the same
process and prints a ratio; absolute timings are reported for information only.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

# the benchmarks run from a checkout: make ``import mechtrunc`` work without installing
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def base_parser(description: str, default_threads: int | None, repeats: int, warmup: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=default_threads,
                   help="torch.set_num_threads" + (" (None: all cores)" if default_threads is None else ""))
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="exit with status 1 when the target is missed")
    return p


def setup(args) -> torch.device:
    """Seed everything, set the thread count, validate the device."""
    threads = args.threads if args.threads is not None else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    args.threads = torch.get_num_threads()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"--device {args.device} was requested but CUDA is not available")
        torch.cuda.manual_seed_all(args.seed)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by ``fn()``, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> str:
    """min..max of a list of timings, for the table."""
    return f"{min(xs) * 1e3:.2f}..{max(xs) * 1e3:.2f}"


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    line = f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
    if device.type == "cuda":
        line += f", GPU {torch.cuda.get_device_name(device)}"
    return line


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def result(name: str, ratio: float, target: str, ok: bool, check: bool) -> None:
    """Print the final RESULT line; exit 1 on a miss only with --check."""
    print(f"RESULT {name} ratio={ratio:.3f} target={target} {'PASS' if ok else 'FAIL'}")
    sys.stdout.flush()
    if check and not ok:
        sys.exit(1)
