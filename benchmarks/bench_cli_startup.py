"""How fast the ``mechtrunc`` command line answers: ``--help`` of every (sub)command and usage
errors, each in a fresh Python process, against ``python -c pass`` timed in the same run.

Target: every ``--help`` and every usage error answers in at most 0.5 s (wall clock of the whole
process, interpreter start included).  The CLI is run as ``python -m mechtrunc.cli`` from this
checkout (the ``mechtrunc`` console script does the same import plus a two-line wrapper).  The
variants take turns within each repeat (rotating order); the table shows the median and the
minimum over repeats and the ratio of medians to ``python -c pass``.  No torch import here, so the
script itself starts as fast as what it measures.

    python benchmarks/bench_cli_startup.py
    python benchmarks/bench_cli_startup.py --repeats 15 --check
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

USAGE_ERRORS = [
    ["toy", "train", "--bogus-flag"],
    ["toy", "train", "--out", "X", "--alpha", "1.5"],
    ["toy", "train", "--out", "X", "--preset", "huge"],
    ["pythia", "truncate", "--model", "EleutherAI/pythia-70m", "--step", "1500", "--out", "X"],
    ["pythia", "truncate", "--model", "m", "--task", "no_such_file.csv", "--out", "X"],
    ["pythia", "checkpoints", "--model", "m", "--steps", "-1", "--out", "X"],
    ["nope"],
]


def subcommands() -> list[list[str]]:
    """Every command path of the parser, from the parser itself (new subcommands included)."""
    from mechtrunc.cli import build_parser

    out: list[list[str]] = []

    def walk(parser, path):
        out.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return out


def run_once(argv: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per command; the median is reported")
    p.add_argument("--target", type=float, default=0.5, help="seconds allowed per command")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a command misses the target")
    args = p.parse_args()

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    py = sys.executable
    cases: list[tuple[str, list[str], int]] = [("python -c pass", [py, "-c", "pass"], 0)]
    for path in subcommands():
        cases.append((f"mechtrunc {' '.join([*path, '--help'])}", [py, "-m", "mechtrunc.cli", *path, "--help"], 0))
    for argv in USAGE_ERRORS:
        cases.append((f"mechtrunc {' '.join(argv)}", [py, "-m", "mechtrunc.cli", *argv], 2))

    for _, argv, _ in cases:  # warm-up: file-system caches, .pyc files
        run_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for r in range(args.repeats):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for name, argv, want in order:
            dt, rc, err = run_once(argv, env)
            if rc != want or "Traceback" in err:
                print(f"UNEXPECTED: {name} exited {rc} (expected {want})\n{err}", file=sys.stderr)
                return 1
            times[name].append(dt)

    base = statistics.median(times["python -c pass"])
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {args.repeats} repeats, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    width = max(len(n) for n in times)
    print(f"{'command':<{width}}  {'median s':>9}  {'min s':>7}  {'x python -c pass':>16}")
    worst = 0.0
    for name, ts in times.items():
        med = statistics.median(ts)
        if name != "python -c pass":
            worst = max(worst, med)
        print(f"{name:<{width}}  {med:>9.3f}  {min(ts):>7.3f}  {med / base:>16.1f}")
    ok = worst <= args.target
    print(f"RESULT cli_startup worst_median={worst:.3f}s target={args.target}s "
          f"worst_ratio={worst / base:.1f}x_python {'PASS' if ok else 'FAIL'}")
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
