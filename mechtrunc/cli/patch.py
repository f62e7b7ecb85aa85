"""``mechtrunc patch scan MODEL``, ``mechtrunc patch path MODEL`` and ``mechtrunc patch attribute
MODEL``: activation patching and path patching (:mod:`mechtrunc.analysis.patching`), and their gradient
estimates, attribution patching and EAP-IG of nodes or edges with a circuit's faithfulness
(:mod:`mechtrunc.analysis.circuits`), between a task's clean prompts and their corrupted twins
(:mod:`mechtrunc.tasks.corrupt`).  MODEL is a toy run directory (task ``recall``), a language-model
run of ``mechtrunc lm train`` (its final checkpoint; tasks ``ioi``, ``factual``) or anything
:func:`mechtrunc.models.hf.load_model` loads (a hub id or a Hugging Face directory).  The tasks are
those of the task registry (:mod:`mechtrunc.tasks.registry`) with a corrupted twin (``corrupt``)
or toy pairs (``toy``)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from mechtrunc import _choices
from mechtrunc.cli.checks import (
    UsageError, choice, device, level, model_arg, model_kind, nonneg_int, positive_int, resolve_model,
)

__all__ = ["add_commands", "parse_receiver"]

#: --task's default: the toy model's task on a toy run, IOI on any other model
_DEFAULT_TASK = {"toy": "recall", "other": "ioi"}
_SCAN_SITES = ("resid_pre", "attn_out", "mlp_out", "z")


def parse_receiver(text: str):
    """``logits``, ``mlp:L`` or ``q:L:H`` / ``k:L:H`` / ``v:L:H`` -> the receiver value."""
    if text == "logits":
        return "logits"
    m = re.fullmatch(r"mlp:(\d+)", text)
    if m:
        return ("mlp", int(m.group(1)))
    m = re.fullmatch(r"([qkv]):(\d+):(\d+)", text)
    if m:
        return (m.group(1), int(m.group(2)), int(m.group(3)))
    import argparse

    raise argparse.ArgumentTypeError(f"invalid receiver {text!r}: give logits, mlp:LAYER or q|k|v:LAYER:HEAD")


def _load(args):
    """(model, clean, corrupted) for MODEL and --task."""
    path = Path(args.model)
    kind, source, step = resolve_model(args.model, args.step)
    if kind == "memory":
        raise UsageError(f"{args.model} is a linear-memory run: patching needs a Transformer (a toy run, a language-model "
                         "run or a Hugging Face model)")
    if kind == "toy":
        if args.task not in _choices.task_names("toy"):
            raise UsageError(f"--task {args.task} does not fit a toy run: the toy model is studied on --task "
                             f"{' or '.join(_choices.task_names('toy'))}")
        from mechtrunc.tasks.registry import task_builder
        from mechtrunc.models.toy_training import load_run

        model, _, task = load_run(path, device=args.device)
        # the test-set seeds of training
        return model, *task_builder(args.task, "toy")(task, n=args.n, seed=10_000 + args.seed)
    if args.task not in _choices.task_names("corrupt"):
        raise UsageError(f"--task {args.task} needs a toy run directory; {args.model} is not one (no config.json "
                         "of a toy model)")
    from mechtrunc.models.lm.prompts import prompts_for_model
    from mechtrunc.models.lm_run import run_dir
    from mechtrunc.models.hf import load_model
    from mechtrunc.tasks.registry import task_builder

    if run_dir(source) is not None:  # a language-model run or one of its checkpoints
        model = load_model(source, device=args.device, local_files_only=True)
    else:
        model = load_model(source, step=step, device=args.device)
    # a language-model run: its own prompts, as lens and lm study
    prompts = prompts_for_model(source, args.task, model.tokenizer, n=args.n, seed=args.seed)
    return model, *task_builder(args.task, "corrupt")(prompts, model.tokenizer, seed=args.seed)


def _common(p) -> None:
    p.add_argument("model", type=model_arg, help="a toy run directory, a `mechtrunc lm train` run (its last checkpoint, "
                   "or --step), or a hub id / model directory (e.g. RUN/step200)")
    p.add_argument("--step", type=nonneg_int, default=None,
                   help="language-model runs and hub ids: the training checkpoint (RUN/step{N}, hub revision step{N})")
    tasks = _choices.task_names("corrupt", "toy")
    p.add_argument("--task", type=choice(tasks, "task"), default=None,
                   help=f"{', '.join(tasks)}: toy runs take {' or '.join(_choices.task_names('toy'))}, other models "
                        f"{' or '.join(_choices.task_names('corrupt'))} (default {_DEFAULT_TASK['toy']} on a toy run, "
                        f"{_DEFAULT_TASK['other']} otherwise)")
    p.add_argument("--n", type=positive_int, default=128, help="number of prompt pairs (default 128)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the prompts, of the corruption and of the bootstrap (default 0)")
    p.add_argument("--level", type=level, default=_choices.PATCH_LEVEL,
                   help=f"level of each effect's percentile bootstrap interval (default {_choices.PATCH_LEVEL})")
    p.add_argument("--metric", default=None, help="metric (default logit_diff of the first competitor)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per forward pass (default 64)")
    p.add_argument("--device", type=device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", default=None, help="write the table to this CSV file")
    p.add_argument("--json", action="store_true", help="print the table as JSON records")


def _default_task(args) -> None:
    if args.task is None:
        args.task = _DEFAULT_TASK["toy" if model_kind(args.model) == "toy" else "other"]


def _pairs_text(clean, task: str) -> str:
    dropped = int(clean.meta.get("dropped", 0) or 0)
    why = _choices.task_spec(task).dropped
    return f"{clean.n_sequences} {task} pairs" + (f" ({dropped} left out{': ' + why if why else ''})" if dropped else "")


def _gap_warning(df) -> str:
    """A warning line when the clean - corrupted gap is too small to normalise by, else ''."""
    a = df.attrs
    if a["normalised"]:
        return ""
    ci = f" [{a['gap_low']:+.4f}, {a['gap_high']:+.4f}] ({round(100 * a['level'])}% bootstrap)" \
        if a["gap_low"] == a["gap_low"] else ""
    return (f"warning: the clean - corrupted gap of {a['metric']} is {a['gap']:+.4f}{ci}, not resolved from zero: "
            "normalised effects are undefined (NaN); the raw change (value minus the run patched into) is shown\n")


def _shown(df, cols: list[str]) -> str:
    """``df[cols]`` as text; with an unresolved gap, the raw ``change``
    (:func:`mechtrunc.analysis.patching.raw_change`) in place of the undefined effect and its interval."""
    if not df.attrs["normalised"]:
        from mechtrunc.analysis.patching import raw_change

        df = df.assign(change=raw_change(df))
        cols = [c for c in cols if c not in ("effect", "effect_low", "effect_high")] + ["change"]
    return df[cols].round(3).to_string(index=False)


def _emit(df, args, text: str) -> int:
    if args.out:
        out = Path(args.out)
        if out.suffix != ".csv":
            raise UsageError(f"--out {out} must end in .csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
    if args.json:
        print(json.dumps({"clean": df.attrs["clean"], "corrupted": df.attrs["corrupted"], "metric": df.attrs["metric"],
                          **{k: df.attrs[k] for k in ("gap", "gap_low", "gap_high", "normalised")},
                          "rows": json.loads(df.to_json(orient="records")),
                          **({"faithfulness": df.attrs["faithfulness"]} if "faithfulness" in df.attrs else {})}))
        print(_gap_warning(df), end="", file=sys.stderr)  # stdout stays one JSON document
    else:
        print(text)
    return 0


def cmd_scan(args) -> int:
    _default_task(args)
    if not Path(args.model).exists() and args.task in _choices.task_names("toy"):
        raise UsageError(f"{args.model} does not exist; give a toy run directory (e.g. runs/demo)")
    model, clean, corrupted = _load(args)
    from mechtrunc.analysis.patching import largest_moves, patching_scan

    df = patching_scan(model, clean, corrupted, sites=args.sites, metric=args.metric, direction=args.direction,
                       batch_size=args.batch_size, progress=not args.no_progress, level=args.level, seed=args.seed)
    how = ("effect: 1 = clean, 0 = corrupted; denoising restores, noising breaks" if df.attrs["normalised"] else
           "change: value minus the run patched into (corrupted when denoising, clean when noising)")
    top = largest_moves(df, args.top)
    shown = _shown(top, ["direction", "site", "layer", "head", "position", "value", "effect", "effect_low",
                         "effect_high"])
    text = (f"{_pairs_text(clean, args.task)}; {df.attrs['metric']}: clean {df.attrs['clean']:.4f}, corrupted "
            f"{df.attrs['corrupted']:.4f}; {len(df)} patches in {df.attrs['forwards']} forward passes\n"
            f"{_gap_warning(df)}the {len(top)} patches that move the metric most ({how}):\n{shown}")
    return _emit(df, args, text)


def cmd_path(args) -> int:
    _default_task(args)
    model, clean, corrupted = _load(args)
    from mechtrunc.analysis.patching import path_patching_scan

    senders = [tuple(args.sender)] if args.sender else None
    df = path_patching_scan(model, clean, corrupted, args.receiver, senders=senders, metric=args.metric,
                            direction=args.direction, batch_size=args.batch_size, level=args.level, seed=args.seed)
    shown = _shown(df, ["sender_layer", "sender_head", "receiver", "value", "effect", "effect_low", "effect_high"])
    text = (f"{_pairs_text(clean, args.task)}; {df.attrs['metric']}: clean {df.attrs['clean']:.4f}, corrupted "
            f"{df.attrs['corrupted']:.4f}; paths ({args.direction}) into {df['receiver'].iloc[0]}:\n"
            f"{_gap_warning(df)}{shown}")
    return _emit(df, args, text)


def cmd_attribute(args) -> int:
    _default_task(args)
    if args.steps is not None and args.method == "atp":
        raise UsageError("--steps applies to --method ig-inputs or ig-activations (atp takes one gradient)")
    if args.edges and args.method == "ig-activations":
        raise UsageError("--edges takes --method atp or ig-inputs (ig-activations moves one node's activation)")
    if args.edges and args.sites is not None:
        raise UsageError("--sites applies to node attribution; --edges scores every edge of the model")
    if args.ablation is not None and not args.edges:
        raise UsageError("--ablation applies to the faithfulness curve of --edges")
    if args.edges and args.direction == "both":
        raise UsageError("--edges takes --direction denoising or noising")
    if not Path(args.model).exists() and args.task == "recall":
        raise UsageError(f"{args.model} does not exist; give a toy run directory (e.g. runs/demo)")
    model, clean, corrupted = _load(args)
    from mechtrunc.analysis.circuits import attribution_scan, circuit_faithfulness, edge_attribution
    from mechtrunc.analysis.patching import largest_moves

    steps = {} if args.steps is None else {"steps": args.steps}
    head = f"{_pairs_text(clean, args.task)}; "
    if not args.edges:
        df = attribution_scan(model, clean, corrupted, sites=args.sites or list(_SCAN_SITES), metric=args.metric,
                              direction=args.direction, method=args.method, batch_size=args.batch_size,
                              progress=not args.no_progress, level=args.level, seed=args.seed, **steps)
        top = largest_moves(df, args.top)
        shown = _shown(top, ["direction", "site", "layer", "head", "position", "value", "effect", "effect_low",
                             "effect_high"])
        text = (f"{head}{df.attrs['metric']}: clean {df.attrs['clean']:.4f}, corrupted {df.attrs['corrupted']:.4f}; "
                f"{len(df)} estimates ({args.method}) in {df.attrs['passes']} passes per batch\n"
                f"{_gap_warning(df)}the {len(top)} estimated patches that move the metric most:\n{shown}")
        return _emit(df, args, text)
    df = edge_attribution(model, clean, corrupted, metric=args.metric, direction=args.direction, positions=[],
                          method=args.method, batch_size=args.batch_size, level=args.level, seed=args.seed, **steps)
    curve = circuit_faithfulness(model, clean, corrupted, df, ablation=args.ablation or "corrupt",
                                 batch_size=args.batch_size, level=args.level, seed=args.seed)
    df.attrs["faithfulness"] = curve.to_dict(orient="records")
    from mechtrunc.analysis.patching import raw_change

    top = df.assign(change=raw_change(df)).assign(_s=lambda d: d["change"].abs()) \
        .sort_values("_s", ascending=False, kind="stable").head(args.top)
    shown = top[["sender", "receiver", "change", "effect"]].round(4).to_string(index=False)
    faith = curve[["n_edges", "recovered", "recovered_low", "recovered_high"]].round(3).to_string(index=False)
    text = (f"{head}{df.attrs['metric']}: clean {df.attrs['clean']:.4f}, corrupted {df.attrs['corrupted']:.4f}; "
            f"{len(df)} edges ({args.method}, {args.direction}) in {df.attrs['passes']} passes per batch\n"
            f"{_gap_warning(df)}the {len(top)} edges with the largest estimated change:\n{shown}\n"
            f"faithfulness of the top-n edges (everything else ablated: {args.ablation or 'corrupt'}):\n{faith}")
    return _emit(df, args, text)


def add_commands(sub) -> None:
    pa = sub.add_parser("patch", help="activation patching and path patching between clean and corrupted prompts",
                        description="Localise where a model computes the in-context answer: patch activations "
                                    "between a task's clean prompts and their corrupted twins (IOI: the ABC "
                                    "names; factual: another subject; toy recall: the first trigger replaced).")
    psub = pa.add_subparsers(dest="patch_command", metavar="COMMAND")
    psub.required = True
    sc = psub.add_parser("scan", help="every site x layer x head x position group; one row per patch",
                         description="Activation patching scan (mechtrunc.patching_scan): the normalised effect "
                                     "of each patch, 1 = the clean run's metric, 0 = the corrupted run's.")
    _common(sc)
    sc.add_argument("--sites", nargs="+", type=choice(_choices.SITES, "site"), default=list(_SCAN_SITES),
                    help=f"sites to scan (default {' '.join(_SCAN_SITES)}; z is per head)")
    sc.add_argument("--direction", type=choice(_choices.PATCH_DIRECTIONS, "direction"),
                    default=_choices.DEFAULT_PATCH_DIRECTION,
                    help="denoising (the corrupted run, one clean activation restored), noising (the clean run, one "
                         f"corrupted activation) or both (default {_choices.DEFAULT_PATCH_DIRECTION})")
    sc.add_argument("--top", type=positive_int, default=15, help="rows shown in the terminal (default 15)")
    sc.set_defaults(func=cmd_scan)
    pp = psub.add_parser("path", help="path patching from sender heads into a receiver",
                         description="Path patching (mechtrunc.path_patching_scan): a sender head's output "
                                     "reaching only the receiver, everything else frozen.")
    _common(pp)
    pp.add_argument("--receiver", type=parse_receiver, default="logits",
                    help="logits (default), mlp:LAYER, or q|k|v:LAYER:HEAD")
    pp.add_argument("--sender", type=nonneg_int, nargs=2, metavar=("LAYER", "HEAD"), default=None,
                    help="one sender head (default: every head that reaches the receiver)")
    pp.add_argument("--direction", type=choice(_choices.PATCH_DIRECTIONS[:2], "direction"),
                    default=_choices.DEFAULT_PATCH_DIRECTION,
                    help="denoising (the corrupted run, the sender's clean output) or noising (the clean run, the "
                         f"sender's corrupted output; Wang et al.) (default {_choices.DEFAULT_PATCH_DIRECTION})")
    pp.set_defaults(func=cmd_path)
    at = psub.add_parser("attribute", help="attribution patching (AtP, EAP-IG) of nodes or edges, and circuit "
                                           "faithfulness",
                         description="Gradient estimates of activation patching (mechtrunc.attribution_scan): "
                                     "the rows of `patch scan` in two passes per batch; with --edges, every edge "
                                     "of the residual stream (mechtrunc.edge_attribution) and the faithfulness "
                                     "curve of the top-n edges (mechtrunc.circuit_faithfulness).")
    _common(at)
    at.add_argument("--sites", nargs="+", type=choice(_choices.SITES, "site"), default=None,
                    help=f"sites to estimate (default {' '.join(_SCAN_SITES)}; z is per head)")
    at.add_argument("--direction", type=choice(_choices.PATCH_DIRECTIONS, "direction"),
                    default=_choices.DEFAULT_PATCH_DIRECTION,
                    help=f"denoising, noising or both (nodes only) (default {_choices.DEFAULT_PATCH_DIRECTION})")
    at.add_argument("--method", type=choice(_choices.ATTRIBUTION_METHODS, "method"), default="atp",
                    help="atp (first order, default), ig-inputs (EAP-IG along the input embeddings) or "
                         "ig-activations (each site moved alone; nodes only)")
    at.add_argument("--steps", type=positive_int, default=None,
                    help=f"interpolation steps of the ig methods (default {_choices.DEFAULT_IG_STEPS})")
    at.add_argument("--edges", action="store_true",
                    help="score the edges (embedding, heads, MLPs -> heads' q/k/v, MLPs, logits) and print the "
                         "faithfulness curve of the top-n edges")
    at.add_argument("--ablation", type=choice(_choices.ABLATIONS, "ablation"), default=None,
                    help="with --edges: how the edges outside a circuit are ablated, corrupt (default) or mean")
    at.add_argument("--top", type=positive_int, default=15, help="rows shown in the terminal (default 15)")
    at.set_defaults(func=cmd_attribute)
