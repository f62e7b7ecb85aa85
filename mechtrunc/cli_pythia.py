"""``mechtrunc pythia truncate`` and ``mechtrunc pythia checkpoints``: thin wrappers over
:mod:`mechtrunc.studies` and :func:`mechtrunc.pythia.load_model`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechtrunc import _choices
from mechtrunc.cli import UsageError, choice, device, fraction, nonneg_int, positive_int

__all__ = ["add_commands"]


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id (EleutherAI/pythia-160m, gpt2, ...) or local directory")
    p.add_argument("--task", default="ioi", help="'ioi', 'factual' or a CSV/JSONL prompt file (default ioi)")
    p.add_argument("--n", type=positive_int, default=200, help="number of IOI prompts (default 200)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the IOI prompts")
    p.add_argument("--device", type=device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", type=choice(_choices.DTYPE_NAMES, "dtype"), default=None,
                   help="float32 (default), float16 or bfloat16")
    p.add_argument("--n-devices", type=positive_int, default=None, help="split the model over this many GPUs")
    p.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward pass")
    p.add_argument("--out", required=True, help="output directory; rerunning with the same one resumes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_task(task: str) -> None:
    """Before any heavy import: the task is 'ioi', 'factual' or an existing prompt file."""
    if task in ("ioi", "factual"):
        return
    path = Path(task)
    if not path.is_file():
        raise UsageError(f"unknown task {task!r}: give 'ioi', 'factual' or the path of a CSV/JSONL prompt file"
                         + (f" ({task} is a directory)" if path.is_dir() else ""))
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UsageError(f"{task}: unknown extension {path.suffix!r}; valid extensions are '.csv' and '.jsonl'")
    if not path.read_text(encoding="utf-8-sig", errors="replace").strip():
        raise UsageError(f"{task}: the prompt file is empty")


def _check_steps(model: str, steps) -> None:
    """Before any heavy import: checkpoint steps of a Pythia id must be Pythia checkpoints."""
    if _choices.is_pythia(model):
        for step in steps:
            if step is not None:
                _choices.check_step(step)


def cmd_truncate(args) -> int:
    _check_task(args.task)
    _check_steps(args.model, [args.step])
    from mechtrunc.pythia import load_model
    from mechtrunc.studies import prompts_for_task, study_report, truncation_study

    model = load_model(args.model, step=args.step, device=args.device, dtype=args.dtype, n_devices=args.n_devices)
    prompts = prompts_for_task(args.task, model.tokenizer, n=args.n, seed=args.seed)
    df = truncation_study(model, prompts, layers=args.layers, matrices=args.matrices, keeps=args.keeps,
                          rule=args.rule, svd=args.svd, mode=args.mode, batch_size=args.batch_size,
                          out=args.out, progress=not args.no_progress)
    metric = args.metric or ("logit_diff_the" if "logit_diff_the" in df.columns else "p_answer")
    paths = study_report(model, prompts, df, metric=metric, out_dir=args.out, batch_size=args.batch_size)
    best = json.loads(Path(paths["best"]).read_text())
    b = best["best"]
    print(f"{len(df) - 1} configurations on {len(prompts)} prompts -> {args.out}")
    print(f"best by {metric}: layer {b['layer']} {b['matrix']} keep {b['keep']} (rank {b['rank']}): "
          f"{b['value']:.4f} vs {b['baseline_value']:.4f} for the full model")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def cmd_checkpoints(args) -> int:
    _check_task(args.task)
    _check_steps(args.model, args.steps)
    if args.from_dir is not None:
        best_path = Path(args.from_dir) / "best.json"
        if not best_path.is_file():
            raise ValueError(f"{str(best_path)!r} does not exist: run `mechtrunc pythia truncate --out {args.from_dir}` first")
        truncation = json.loads(best_path.read_text())["best"]
    elif args.layer is not None:
        from mechtrunc.interventions import Truncate

        truncation = Truncate(args.matrix, layer=args.layer, keep=args.keep)
    else:
        truncation = None
    from mechtrunc.studies import checkpoint_plot, checkpoint_study

    df = checkpoint_study(args.model, args.steps, args.task, truncation=truncation, batch_size=args.batch_size,
                          out=args.out, progress=not args.no_progress, device=args.device, dtype=args.dtype,
                          n_devices=args.n_devices)
    plot = checkpoint_plot(df, Path(args.out) / "checkpoints.png", title=args.model)
    print(f"{df['step'].nunique()} checkpoints -> {args.out} (table checkpoints.csv, figure {plot.name})")
    return 0


def add_commands(sub) -> None:
    py = sub.add_parser("pythia", help="Pythia (and other bridge) truncation and checkpoint studies",
                        description="LASER truncation studies on Pythia models at any training checkpoint.")
    psub = py.add_subparsers(dest="pythia_command", metavar="SUBCOMMAND")
    psub.required = True

    tr = psub.add_parser("truncate", help="layers x {W_in, W_out} x keeps on a task",
                         description="Truncate each MLP matrix of each layer to each keep fraction, evaluate "
                                     "the task, write the table, a heatmap, the best configuration and its "
                                     "attribution change.")
    _model_options(tr)
    tr.add_argument("--step", type=nonneg_int, default=None, help="training checkpoint (revision step{N})")
    tr.add_argument("--layers", type=nonneg_int, nargs="+", default=None, help="layers (default all)")
    tr.add_argument("--matrices", nargs="+", type=choice(_choices.MATRICES, "matrix", "matrices"), default=["mlp.W_in", "mlp.W_out"],
                    help="matrices (default mlp.W_in mlp.W_out)")
    tr.add_argument("--keeps", type=fraction, nargs="+", default=[1, 0.5, 0.2, 0.1, 0.05, 0.01],
                    help="kept fractions of the rank (default 1 0.5 0.2 0.1 0.05 0.01)")
    tr.add_argument("--rule", choices=["round", "authors"], default="round", help="rank rounding rule")
    tr.add_argument("--svd", choices=["exact", "randomized"], default="exact", help="SVD method")
    tr.add_argument("--mode", choices=["weight", "hook"], default="weight", help="edit weights or project outputs")
    tr.add_argument("--metric", default=None, help="metric that picks the best configuration (default logit_diff_the)")
    tr.set_defaults(func=cmd_truncate)

    ck = psub.add_parser("checkpoints", help="task metrics over training checkpoints, full and truncated",
                         description="Evaluate the full model and one truncation at each training step.")
    _model_options(ck)
    ck.add_argument("--steps", type=nonneg_int, nargs="+", required=True, help="training steps (e.g. 0 512 1000 143000)")
    ck.add_argument("--from", dest="from_dir", default=None,
                    help="a `pythia truncate` output directory: use its best configuration")
    ck.add_argument("--layer", type=nonneg_int, default=None, help="or: the layer to truncate")
    ck.add_argument("--matrix", type=choice(_choices.MATRICES, "matrix", "matrices"), default="mlp.W_out",
                    help="with --layer: the matrix (default mlp.W_out)")
    ck.add_argument("--keep", type=fraction, default=0.05, help="with --layer: the kept fraction (default 0.05)")
    ck.set_defaults(func=cmd_checkpoints)
