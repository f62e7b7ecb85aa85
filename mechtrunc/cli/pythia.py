"""``mechtrunc pythia truncate`` and ``mechtrunc pythia checkpoints``: thin wrappers over
:mod:`mechtrunc.studies` and :func:`mechtrunc.models.hf.load_model`.  Both evaluate a grid with the
grid engine by default (``--mode engine``, :data:`mechtrunc._choices.GRID_MODES`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mechtrunc import _choices
from mechtrunc.cli.checks import (
    UsageError, choice, device, fraction, model_arg, nonneg_float, nonneg_int, positive_int, resolve_model,
)

__all__ = ["add_commands"]


_matrix = choice(_choices.MATRICES + _choices.GATED_MATRICES, "matrix", "matrices")


def _words(values) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _rule_option(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--rule", choices=_choices.RULES, default=_choices.DEFAULT_RULE,
                   help=f"{prefix}rank rounding rule (default {_choices.DEFAULT_RULE}; authors: the paper's released "
                        "code)")


def _mode_option(p: argparse.ArgumentParser, default, prefix: str = "") -> None:
    p.add_argument("--mode", choices=_choices.GRID_MODES, default=default,
                   help=f"{prefix}how the grid is evaluated: engine (default; the fast grid engine, same numbers), "
                        "weight (rewrite each weight as LASER does) or hook (project the matrix's output)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=model_arg,
                   help="hub id (EleutherAI/pythia-160m, gpt2, ...) or local directory: a `mechtrunc lm train` run or "
                        "any directory of step{N}/ checkpoints (truncate: the last one, or --step), or one "
                        "save_pretrained model (e.g. RUN/step200)")
    p.add_argument("--task", default="ioi", help=f"{_choices.task_words('prompts')} or a CSV/JSONL prompt file "
                   "(default ioi)")
    p.add_argument("--n", type=positive_int, default=200, help="number of IOI prompts (default 200)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the IOI prompts")
    p.add_argument("--device", type=device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", type=choice(_choices.DTYPE_NAMES, "dtype"), default=None,
                   help="float32 (default), float16 or bfloat16")
    p.add_argument("--n-devices", type=positive_int, default=None, help="split the model over this many GPUs")
    p.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward pass")
    p.add_argument("--out", required=True, help="output directory; rerunning with the same one resumes")


def _check_task(task: str) -> None:
    """Before any heavy import: the task is a registered task with prompts or an existing prompt file."""
    if task in _choices.task_names("prompts"):
        return
    path = Path(task)
    if not path.is_file():
        raise UsageError(f"unknown task {task!r}: give {_choices.task_words('prompts')} or the path of a CSV/JSONL "
                         "prompt file"
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


def _check_heldout(args) -> None:
    """Before any heavy import: the held-out options."""
    given = [f for f, v in (("--select", args.select), ("--collateral", args.collateral), ("--budget", args.budget),
                            ("--n-boot", args.n_boot)) if v is not None]
    if not args.heldout:
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --heldout")
        return
    if args.select is not None and not 0.0 < args.select < 1.0:
        raise UsageError(f"--select must be a fraction in (0, 1) (the share of prompts that chooses), got {args.select:g}")
    if args.svd != "exact":
        raise UsageError(f"--heldout runs on the grid engine: give --svd exact (not {args.svd})")
    if args.budget is not None and args.collateral is None:
        raise UsageError("--budget bounds the loss on --collateral text: give --collateral FILE")
    if args.collateral is not None:
        path = Path(args.collateral)
        if not path.is_file():
            raise UsageError(f"--collateral {args.collateral}: no such file (give a plain-text file of reference text)")
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise UsageError(f"--collateral {args.collateral}: the file is empty")


def _print_heldout(model, prompts, grid, metric, args, items=None) -> None:
    from mechtrunc.analysis.selection import DEFAULT_BUDGET, DEFAULT_N_BOOT, DEFAULT_SELECT, text_prompts
    from mechtrunc.studies import heldout_configuration

    collateral = None
    if args.collateral is not None:
        collateral = text_prompts(Path(args.collateral).read_text(encoding="utf-8", errors="replace"), model.tokenizer)
    select = DEFAULT_SELECT if args.select is None else args.select
    n_boot = DEFAULT_N_BOOT if args.n_boot is None else args.n_boot
    try:
        h = heldout_configuration(model, prompts, grid, metric=metric, select=select, seed=args.seed,
                                  collateral=collateral, budget=args.budget, n_boot=n_boot, items=items,
                                  batch_size=max(args.batch_size, 256), out=args.out)
    except ValueError as e:  # e.g. too few templates or prompts to split
        raise UsageError(f"--heldout: {e}") from None
    sel, ev = h["select"], h["eval"]
    pct = round(100 * h["level"])
    what = "the full model (no configuration beat it)" if h["baseline"] else \
        f"layer {h['layer']} {h['matrix']} keep {h['keep']:g} (rank {h['rank']})"
    print(f"held-out choice by {metric} on {sel['n_items']} select prompts ({select:g} of them, grouped by "
          f"{h['groups']}, seed {args.seed}): {what}")
    for name, part in (("select (in-sample)", sel), ("eval (held out)", ev)):
        print(f"  {name}: {part['truncated']:.4g} vs {part['full']:.4g} full, change {part['change']:+.3g} "
              f"[{part['ci_low']:+.3g}, {part['ci_high']:+.3g}] ({pct}% paired bootstrap, {h['n_boot']} resamples, "
              f"{part['n_items']} prompts)")
    if collateral is None:
        print(f"  collateral: none measured: {metric} alone can choose an edit that breaks the model on other text "
              "(give --collateral FILE: the loss on reference text, within --budget)")
    else:
        budget = DEFAULT_BUDGET if args.budget is None else args.budget
        print(f"  collateral: loss on {args.collateral} {ev['collateral_truncated']:.4f} vs {ev['collateral_full']:.4f} "
              f"full ({ev['collateral_change']:+.4f} nats; budget {budget:g})")
    print(f"  heldout: {h['path']}")


def cmd_truncate(args) -> int:
    _check_task(args.task)
    _check_steps(args.model, [args.step])
    _check_heldout(args)
    kind, source, step = resolve_model(args.model, args.step)
    if kind in ("toy", "memory"):
        raise UsageError(f"{args.model} is a {kind} run: `pythia truncate` studies a Transformer language model "
                         "(a hub id, a `mechtrunc lm train` run or a save_pretrained directory)")
    from mechtrunc.models.lm.prompts import prompts_for_model
    from mechtrunc.models.hf import load_model
    from mechtrunc.core.results import default_metric
    from mechtrunc.studies import Grid, summarise_study, truncation_study

    grid = Grid(layers=args.layers, matrices=args.matrices, keeps=args.keeps, rule=args.rule, svd=args.svd,
                mode=args.mode)  # every grid value checked before the model loads
    model = load_model(source, step=step, device=args.device, dtype=args.dtype, n_devices=args.n_devices)
    prompts = prompts_for_model(source, args.task, model.tokenizer, n=args.n, seed=args.seed)  # an lm run: its own
    df, items = truncation_study(model, prompts, layers=grid.layers, matrices=grid.matrices, keeps=grid.keeps,
                                 rule=grid.rule, svd=grid.svd, mode=grid.mode, batch_size=args.batch_size,
                                 out=args.out, progress=not args.no_progress, return_items=True,
                                 info={"task": str(args.task), "n": args.n, "seed": args.seed}, metric=args.metric)
    metric = args.metric or default_metric(df.columns)
    summary = summarise_study(model, prompts, df, metric=metric, out_dir=args.out, batch_size=args.batch_size,
                              items=items)
    best = summary.best
    b = best["best"]
    print(f"{len(df) - 1} configurations on {len(prompts)} prompts -> {args.out}")
    print(f"best by {metric}: layer {b['layer']} {b['matrix']} keep {b['keep']} (rank {b['rank']}): "
          f"{b['value']:.4f} vs {b['baseline_value']:.4f} for the full model")
    ci = (best.get("intervals") or {}).get("metrics", {}).get(metric)
    if ci is not None:
        iv = best["intervals"]
        print(f"  change {ci['change']:+.4g} [{ci['ci_low']:+.4g}, {ci['ci_high']:+.4g}] "
              f"({round(100 * iv['level'])}% paired bootstrap, {iv['n_boot']} resamples, {iv['n_items']} prompts; "
              "in-sample)")
    for name, path in summary.paths.items():
        print(f"  {name}: {path}")
    if args.heldout:
        from mechtrunc.analysis.selection import HELDOUT_METRIC

        # chosen on the study's per-item side table: no second pass over the grid
        _print_heldout(model, prompts, grid, args.metric or HELDOUT_METRIC, args, items=items)
    return 0


def _executor(args):
    """The executor object of the checkpoint command's options (ValueError on bad values)."""
    from mechtrunc.studies.checkpoint_files import CheckpointStudyDirectory
    from mechtrunc.studies.executors import LocalExecutor, RayExecutor, SlurmExecutor

    slurm_opts = {"--slurm-partition": args.slurm_partition, "--slurm-time": args.slurm_time,
                  "--slurm-gpus": args.slurm_gpus, "--slurm-array-parallelism": args.slurm_array_parallelism,
                  "--slurm-units-per-task": args.slurm_units_per_task}
    given_slurm = [k for k, v in slurm_opts.items() if v is not None]
    if args.executor != "slurm" and given_slurm:
        raise ValueError(f"{', '.join(given_slurm)} only apply with --executor slurm")
    if args.executor != "ray" and args.ray_address is not None:
        raise ValueError("--ray-address only applies with --executor ray")
    if args.executor == "local":
        return LocalExecutor(prefetch=not args.no_prefetch)
    if args.no_prefetch:
        raise ValueError("--no-prefetch only applies with --executor local")
    if args.executor == "ray":
        return RayExecutor(address=args.ray_address)
    return SlurmExecutor(folder=CheckpointStudyDirectory(args.out).slurm_dir, partition=args.slurm_partition,
                         time_min=args.slurm_time if args.slurm_time is not None else 60,
                         gpus_per_task=args.slurm_gpus,
                         array_parallelism=args.slurm_array_parallelism if args.slurm_array_parallelism else 32,
                         units_per_task=args.slurm_units_per_task or 1)


def cmd_checkpoints(args) -> int:
    _check_task(args.task)
    _check_steps(args.model, args.steps)
    if args.grid:
        if args.from_dir is not None or args.layer is not None:
            raise UsageError("--grid evaluates the whole grid at each step: not with --from or --layer")
    elif args.layers is not None or args.keeps is not None or args.matrices is not None or args.mode is not None:
        raise UsageError("--layers, --matrices, --keeps and --mode only apply with --grid")
    from mechtrunc.core.results import P_ANSWER, default_metric
    from mechtrunc.studies import Grid, checkpoint_study
    from mechtrunc.analysis.selection import HELDOUT_METRIC
    from mechtrunc.studies.checkpoint_files import CheckpointStudyDirectory
    from mechtrunc.studies.checkpoints import best_by_step, heldout_by_step, step_intervals
    from mechtrunc.analysis.viz import checkpoint_plot

    grid = None
    if args.grid:
        given = {"layers": args.layers, "matrices": args.matrices, "keeps": args.keeps, "mode": args.mode}
        grid = Grid(rule=args.rule, **{k: v for k, v in given.items() if v is not None})
        truncation = None
    elif args.from_dir is not None:
        from mechtrunc.studies.truncation_files import TruncationDirectory

        truncation = TruncationDirectory(args.from_dir).read_best()["best"]
    elif args.layer is not None:
        from mechtrunc.core.interventions import Truncate

        truncation = Truncate(args.matrix, layer=args.layer, keep=args.keep)
    else:
        truncation = None
    executor = _executor(args)
    from mechtrunc.models.lm.prompts import prompts_for_model, uses_run_prompts

    # a language-model run is studied on its own prompts (one tokenizer for all its checkpoints)
    task = prompts_for_model(args.model, args.task, n=args.n, seed=args.seed) \
        if uses_run_prompts(args.model, args.task) else args.task
    df, items = checkpoint_study(args.model, args.steps, task, truncation=truncation, grid=grid,
                                 batch_size=args.batch_size, out=args.out, progress=not args.no_progress,
                                 n_prompts=args.n, prompt_seed=args.seed, executor=executor, return_items=True,
                                 device=args.device, dtype=args.dtype, n_devices=args.n_devices)
    if grid is not None:
        metric = default_metric(df.columns)
        plot_df = best_by_step(df, metric)
        metrics = (metric,)
    else:
        plot_df, metrics = df, tuple(m for m in (P_ANSWER, "p_the") if m in df.columns) or (P_ANSWER,)
    directory = CheckpointStudyDirectory(args.out)
    plot = checkpoint_plot(plot_df, directory.figure_path, metrics=metrics, title=args.model)
    print(f"{df['step'].nunique()} checkpoints -> {args.out} (table checkpoints.csv, figure {plot.name})")
    last = int(df["step"].iloc[-1])
    try:
        if grid is not None:  # the honest choice: made on half of the prompts, reported on the other half
            h = heldout_by_step(items, HELDOUT_METRIC, seed=args.seed, out=args.out)
            ev = h[(h["step"] == last) & (h["part"] == "eval")].iloc[0]
            what = "the full model" if bool(ev["baseline"]) else \
                f"layer {int(ev['layer'])} {ev['matrix']} keep {float(ev['keep']):g}"
            print(f"held-out choice by {HELDOUT_METRIC} per step -> {directory.heldout_by_step_path}; at step "
                  f"{last}: {what}, on the held-out prompts {ev['truncated']:.4g} vs {ev['full']:.4g} full, change "
                  f"{ev['change']:+.3g} [{ev['ci_low']:+.3g}, {ev['ci_high']:+.3g}] ({round(100 * ev['level'])}% "
                  f"paired bootstrap, {int(ev['n_boot'])} resamples, {int(ev['n_items'])} prompts)")
        else:
            iv = step_intervals(items, P_ANSWER, out=args.out)
            print(f"P(answer) per step with 95% bootstrap intervals -> {directory.intervals_path}")
            t = iv[(iv["step"] == last) & (iv["config"] == 1)]
            if len(t):
                r = t.iloc[0]
                print(f"  step {last}, truncated: {r['value']:.4g} [{r['low']:.4g}, {r['high']:.4g}], change against the "
                      f"full model {r['change']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}] (paired, "
                      f"{int(r['n_boot'])} resamples, {int(r['n_items'])} prompts)")
    except ValueError as e:  # e.g. too few prompts to split
        raise UsageError(f"intervals: {e}") from None
    return 0


def add_commands(sub) -> None:
    py = sub.add_parser("pythia", help="Pythia (and other bridge) truncation and checkpoint studies",
                        description="LASER truncation studies on Pythia models at any training checkpoint.")
    psub = py.add_subparsers(dest="pythia_command", metavar="SUBCOMMAND")
    psub.required = True
    _add_truncate(psub)
    _add_checkpoints(psub)


def _add_truncate(psub) -> None:
    tr = psub.add_parser("truncate", help="layers x {W_in, W_out} x keeps on a task",
                         description="Truncate each MLP matrix of each layer to each keep fraction, evaluate "
                                     "the task, write the table, a heatmap, the best configuration and its "
                                     "attribution change.")
    _model_options(tr)
    tr.add_argument("--step", type=nonneg_int, default=None,
                    help="training checkpoint: hub revision step{N}, or RUN/step{N} of a run directory (default: a "
                         "run's last checkpoint)")
    tr.add_argument("--layers", type=nonneg_int, nargs="+", default=None, help="layers (default all)")
    tr.add_argument("--matrices", nargs="+", type=_matrix, default=list(_choices.GRID_MATRICES),
                    help=f"matrices (default {_words(_choices.GRID_MATRICES)})")
    tr.add_argument("--keeps", type=fraction, nargs="+", default=list(_choices.GRID_KEEPS),
                    help=f"kept fractions of the rank (default {_words(_choices.GRID_KEEPS)})")
    _rule_option(tr)
    tr.add_argument("--svd", choices=_choices.SVD_METHODS, default=_choices.SVD_METHODS[0],
                    help=f"SVD method (default {_choices.SVD_METHODS[0]}; mode engine needs exact)")
    _mode_option(tr, default=_choices.GRID_MODES[0])
    tr.add_argument("--metric", default=None, help="metric that picks the best configuration (default: logit_diff_the when the task has a "
                         "' the' competitor, else p_answer)")
    tr.add_argument("--heldout", action="store_true",
                    help="also choose the configuration on part of the prompts (--select) and report it on the rest, "
                         "with paired bootstrap intervals of the change and the collateral (OUT/heldout.csv); "
                         "metric: --metric, default p_answer")
    tr.add_argument("--select", type=fraction, default=None,
                    help="with --heldout: share of the prompts that chooses, grouped by IOI template (default 0.5)")
    tr.add_argument("--collateral", default=None,
                    help="with --heldout: a plain-text file; configurations raising its loss by more than --budget "
                         "nats are not chosen")
    tr.add_argument("--budget", type=nonneg_float, default=None,
                    help="with --collateral: largest loss increase allowed, in nats (default 0.1)")
    tr.add_argument("--n-boot", type=positive_int, default=None,
                    help="with --heldout: bootstrap resamples (default 1000)")
    tr.set_defaults(func=cmd_truncate)


def _add_checkpoints(psub) -> None:
    ck = psub.add_parser(
        "checkpoints", help="task metrics over training checkpoints: full and truncated, or a whole grid",
        description="Evaluate the full model and one truncation (or, with --grid, every layer x matrix x keep) "
                    "at each training step.  One unit per checkpoint, written atomically to "
                    "OUT/shards/step{N}.parquet as soon as it is finished; rerunning the same command skips "
                    "finished steps; OUT/checkpoints.csv/.parquet hold the merged table.  Units run in this "
                    "process (--executor local, loading the next checkpoint while the current one is "
                    "evaluated), on Ray (--executor ray: one task per checkpoint, a GPU each with --device "
                    "cuda) or as a SLURM job array (--executor slurm, through submitit).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--model is one of:\n"
               "  a hub id                 EleutherAI/pythia-160m (revision step{N}; from the local Hugging Face\n"
               "                           cache when it holds those revisions, e.g. with HF_HUB_OFFLINE=1)\n"
               "  a checkpoint directory   runs/neox (holding step0/, step1000/, ... each a save_pretrained model;\n"
               "                           a `mechtrunc lm train` run is one)\n"
               "  a path template          /data/pythia-160m-step{step} (a save_pretrained model per step)\n")
    _model_options(ck)
    ck.add_argument("--steps", type=nonneg_int, nargs="+", required=True, help="training steps (e.g. 0 512 1000 143000)")
    ck.add_argument("--from", dest="from_dir", default=None,
                    help="a `pythia truncate` output directory: use its best configuration")
    ck.add_argument("--layer", type=nonneg_int, default=None, help="or: the layer to truncate")
    ck.add_argument("--matrix", type=_matrix, default="mlp.W_out",
                    help="with --layer: the matrix (default mlp.W_out)")
    ck.add_argument("--keep", type=fraction, default=0.05, help="with --layer: the kept fraction (default 0.05)")
    ck.add_argument("--grid", action="store_true",
                    help="evaluate the whole grid (--layers x --matrices x --keeps) at every step")
    ck.add_argument("--layers", type=nonneg_int, nargs="+", default=None, help="with --grid: layers (default all)")
    ck.add_argument("--matrices", nargs="+", type=_matrix, default=None,
                    help=f"with --grid: matrices (default {_words(_choices.GRID_MATRICES)})")
    ck.add_argument("--keeps", type=fraction, nargs="+", default=None,
                    help=f"with --grid: kept fractions (default {_words(_choices.GRID_KEEPS)})")
    _rule_option(ck, "with --grid: ")
    _mode_option(ck, default=None, prefix="with --grid: ")
    ck.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                    help="where checkpoints are evaluated (default local)")
    ck.add_argument("--no-prefetch", action="store_true",
                    help="local executor: do not load the next checkpoint while evaluating (one model in memory)")
    ck.add_argument("--ray-address", default=None,
                    help="join this Ray cluster ('auto' or ray://HOST:10001); default: start a local one")
    ck.add_argument("--slurm-partition", default=None, help="SLURM partition")
    ck.add_argument("--slurm-time", type=positive_int, default=None, help="minutes per array element (default 60)")
    ck.add_argument("--slurm-gpus", type=nonneg_int, default=None,
                    help="GPUs per array element (default 1 with --device cuda, else 0)")
    ck.add_argument("--slurm-array-parallelism", type=positive_int, default=None,
                    help="at most this many array elements at once (default 32)")
    ck.add_argument("--slurm-units-per-task", type=positive_int, default=None,
                    help="checkpoints per array element (default 1)")
    ck.set_defaults(func=cmd_checkpoints)

