"""How much ``mechtrunc demo`` writes to a log: the demo run with stdout and stderr to one file,
as ``make demo > log 2>&1`` or CI leave it.

Off a terminal the progress of each loop is a few plain lines (at most one per tenth of the
loop or per 30 s, and a final one), never bar frames.  Target: the whole log under 10 KB.
Reports the bytes, the lines, the bar frames (``\\r``-separated redraws) and the progress lines
(and prints those).
``--checkout DIR`` runs the demo of another checkout (to compare with an older version).

    python benchmarks/demo_log.py
    python benchmarks/demo_log.py --check
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_BYTES = 10 * 1024
PROGRESS_LINE = re.compile(r"^[^:\r\n]+: \d+(/\d+)? \w+")


def measure(checkout: str, seed: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MECHTRUNC_PROGRESS", "TQDM_DISABLE")}
    env["PYTHONPATH"] = checkout + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="demo_log_") as tmp:
        log = os.path.join(tmp, "log")
        t0 = time.perf_counter()
        with open(log, "wb") as f:
            proc = subprocess.run([sys.executable, "-m", "mechtrunc.cli", "demo", "--out", os.path.join(tmp, "demo"),
                                   "--seed", str(seed)], stdout=f, stderr=subprocess.STDOUT, cwd=tmp, env=env)
        seconds = time.perf_counter() - t0
        data = open(log, "rb").read()
    if proc.returncode != 0:
        sys.exit(f"mechtrunc demo exited {proc.returncode}:\n{data.decode(errors='replace')[-2000:]}")
    text = data.decode(errors="replace")
    progress = [line for line in text.splitlines() if PROGRESS_LINE.match(line)]
    return {"bytes": len(data), "lines": text.count("\n"), "bar_frames": text.count("\r"),
            "progress_lines": len(progress), "seconds": seconds, "progress": progress}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkout", default=ROOT, help="the checkout whose demo runs (default: this one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="exit with status 1 when the log is over the target")
    args = p.parse_args()
    m = measure(os.path.abspath(args.checkout), args.seed)
    where = "" if os.path.abspath(args.checkout) == ROOT else f" ({args.checkout})"
    print(f"`mechtrunc demo > log 2>&1`{where}:")
    print("| bytes | lines | bar frames (\\r) | progress lines | seconds |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {m['bytes']:,} | {m['lines']} | {m['bar_frames']} | {m['progress_lines']} | {m['seconds']:.0f} |")
    print("\nits progress lines:\n" + "\n".join(m["progress"]))
    ok = m["bytes"] < TARGET_BYTES
    print(f"RESULT demo_log bytes={m['bytes']} target=<{TARGET_BYTES} {'PASS' if ok else 'FAIL'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
