"""``mechtrunc circuits checkpoints SOURCE --out DIR``: circuits across training
(:func:`mechtrunc.studies.circuits.circuit_study`): at every checkpoint, node attribution of every
head and MLP, the top edges and the answer-vs-generic margin ledger, sharded and resumable, then
the step where attention's evidence overtakes the MLPs' generic push.  SOURCE is a toy run
trained with ``--keep-checkpoints`` (or its ``checkpoints/``), a language-model run of ``mechtrunc
lm train``, or a hub id (revision ``step{N}``)."""

from __future__ import annotations

import json
from pathlib import Path

from mechtrunc import _choices
from mechtrunc.cli.checks import UsageError, choice, device, level, nonneg_int, positive_int

__all__ = ["add_commands"]

CIRCUIT_METHODS = ("atp", "ig-inputs")


def _source(text: str) -> str:
    """A toy run with kept checkpoints is studied through its ``checkpoints/``."""
    p = Path(text)
    if (p / "checkpoints").is_dir():
        return str(p / "checkpoints")
    if p.is_dir() and (p / "config.json").is_file():
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            cfg = {}
        if isinstance(cfg, dict) and "train" in cfg and "model" in cfg and not p.name.startswith("step"):
            raise UsageError(f"{text} is a toy run without kept checkpoints: train it with `mechtrunc toy train "
                             f"--out {text} --keep-checkpoints` (a new --out) to keep one per evaluation")
    return text


def cmd_checkpoints(args) -> int:
    if args.ig_steps is not None and args.method == "atp":
        raise UsageError("--ig-steps applies to --method ig-inputs (atp takes one gradient)")
    source = _source(args.source)
    from mechtrunc.studies.circuits import circuit_pairs, circuit_study, evidence_by_step, overtaking_step
    from mechtrunc.studies.checkpoints import CheckpointDirectory

    if args.steps is None:
        if not CheckpointDirectory.looks_like(source):
            raise UsageError("--steps is needed with a hub id (the checkpoints to study)")
        steps = CheckpointDirectory(source).steps()
        if not steps:
            raise UsageError(f"{source} holds no step{{N}}/ checkpoint")
    else:
        steps = args.steps
    clean, corrupted = circuit_pairs(source, args.task, n=args.n, seed=args.seed)
    load = {"device": args.device}
    tables = circuit_study(source, steps, clean, corrupted, out=args.out, metric=args.metric, method=args.method,
                           ig_steps=args.ig_steps or _choices.DEFAULT_IG_STEPS, direction=args.direction,
                           n_edges=args.edges, batch_size=args.batch_size, level=args.level, seed=args.seed,
                           executor=args.executor, progress=not args.no_progress, **load)
    ev = evidence_by_step(tables.ledger)
    ot = overtaking_step(tables.ledger, level=args.level, seed=args.seed)
    print(f"{clean.n_sequences} prompt pairs, {len(steps)} checkpoints, metric {tables.nodes['metric'].iloc[0]}; "
          f"tables in {args.out} (report: mechtrunc report {args.out})")
    print(ev.round(4).to_string(index=False))
    if ot["step"] is None:
        print("attention's evidence does not stay above the MLPs' generic push by the last checkpoint")
    else:
        fmt = lambda v: "never" if v is None else str(v)  # noqa: E731
        print(f"attention's evidence overtakes the MLPs' generic push for good at step {ot['step']} "
              f"({round(100 * ot['level'])}% interval over the prompts: {fmt(ot['low'])} to {fmt(ot['high'])})")
    return 0


def add_commands(sub) -> None:
    ci = sub.add_parser("circuits", help="circuits across training: attribution of nodes and edges at every checkpoint",
                        description="Circuits across training (mechtrunc.studies.circuits).")
    csub = ci.add_subparsers(dest="circuits_command", metavar="SUBCOMMAND")
    csub.required = True
    ck = csub.add_parser("checkpoints", help="node and edge attribution and the margin ledger at every checkpoint",
                         description="At every checkpoint: attribution patching of every head and MLP, the top "
                                     "edges and the answer-vs-generic margin ledger (each head's and MLP's direct "
                                     "contribution), one shard per step in --out (a rerun resumes), then the step "
                                     "where attention's evidence for the answer overtakes the MLPs' generic push.")
    ck.add_argument("source", help="a toy run trained with --keep-checkpoints (or its checkpoints/), a `mechtrunc lm "
                                   "train` run, or a hub id")
    ck.add_argument("--out", required=True, help="output directory (shards, merged tables, study.json)")
    ck.add_argument("--steps", type=nonneg_int, nargs="+", default=None,
                    help="checkpoints to study (default every step{N}/ of SOURCE)")
    ck.add_argument("--task", type=choice(_choices.CIRCUIT_TASKS, "task"), default=None,
                    help="recall (toy runs; a noisy-recall language-model run's default), ioi or factual")
    ck.add_argument("--n", type=positive_int, default=64, help="prompt pairs (default 64)")
    ck.add_argument("--seed", type=nonneg_int, default=0, help="seed of the prompts and the bootstrap (default 0)")
    ck.add_argument("--metric", default=None, help="metric (default logit_diff of the first competitor)")
    ck.add_argument("--method", type=choice(CIRCUIT_METHODS, "method"), default="atp",
                    help="atp (default) or ig-inputs (EAP-IG), for nodes and edges")
    ck.add_argument("--ig-steps", type=positive_int, default=None,
                    help=f"EAP-IG interpolation steps (default {_choices.DEFAULT_IG_STEPS})")
    ck.add_argument("--direction", type=choice(("denoising", "noising"), "direction"), default="denoising",
                    help="denoising (default) or noising")
    ck.add_argument("--edges", type=positive_int, default=50, help="top edges kept per step (default 50)")
    ck.add_argument("--level", type=level, default=_choices.PATCH_LEVEL,
                    help=f"level of the intervals (default {_choices.PATCH_LEVEL})")
    ck.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward pass (default 32)")
    ck.add_argument("--device", type=device, default="cpu", help="torch device (default cpu)")
    ck.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                    help="where the checkpoints run: in process (default), Ray or SLURM (their default settings)")
    ck.set_defaults(func=cmd_checkpoints)
