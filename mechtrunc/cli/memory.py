"""``mechtrunc memory train|spectrum``: the linear associative memory (:mod:`mechtrunc.models.memory`);
``mechtrunc memory dynamics``: the minimal in-context model (attention memories + FF memory,
:mod:`mechtrunc.studies.dynamics.minimal`), its order of learning and the gradient signal-to-noise ratios at
initialisation.  Heavy imports happen inside the command functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechtrunc import _choices
from mechtrunc.cli.checks import (
    UsageError, choice, fraction, int_at_least, nonneg_float, nonneg_int, positive_float, positive_int, run_dir_arg,
)
from mechtrunc.cli.toy import format_table
from mechtrunc.core.results import P_ANSWER, VARIANT_METRICS

__all__ = ["add_commands"]


def _config_options(p: argparse.ArgumentParser) -> None:
    # no default here: an option not given keeps the library's default (MemoryConfig / MemoryTrainConfig)
    g = p.add_argument_group("memory and data (mechtrunc.models.memory.MemoryConfig; defaults: its defaults)")
    g.add_argument("--n-inputs", type=int_at_least(2), help="N, number of inputs (>= 2)")
    g.add_argument("--n-outputs", type=int_at_least(2), help="V, number of outputs (>= 2)")
    g.add_argument("--d", type=positive_int, help="embedding width")
    g.add_argument("--alpha", type=fraction, help="noise probability in [0, 1]")
    g.add_argument("--noise-token", type=nonneg_int, help="output index of the noise token")
    g.add_argument("--target-seed", type=nonneg_int, help="seed of the random map y*(x)")
    g.add_argument("--input-dist", type=choice(_choices.MEMORY_INPUT_DISTS, "input distribution"),
                   help=f"input distribution: {', '.join(_choices.MEMORY_INPUT_DISTS)}")
    g.add_argument("--zipf-exponent", type=nonneg_float, help="Zipf exponent (>= 0)")
    g.add_argument("--embeddings", type=choice(_choices.MEMORY_EMBEDDINGS, "embeddings", "embeddings"),
                   help="gaussian or orthonormal (needs N, V <= d)")
    g.add_argument("--init", type=choice(_choices.MEMORY_INITS, "init"), help="initial W: zero or random")
    g.add_argument("--init-scale", type=nonneg_float, help="scale of a random initial W")
    g.add_argument("--learn-embeddings", action="store_true", default=None, help="train the embeddings too")
    g.add_argument("--seed", type=nonneg_int, help="seed of the embeddings and initial W")
    t = p.add_argument_group("training (mechtrunc.models.memory.MemoryTrainConfig)")
    t.add_argument("--method", type=choice(_choices.MEMORY_METHODS, "method"),
                   help="gd (full batch, population loss; default) or sgd")
    t.add_argument("--steps", type=nonneg_int, default=1000, help="training steps (default 1000)")
    t.add_argument("--lr", type=positive_float, default=None, help="step size (default N, so each input moves at the same rate)")
    t.add_argument("--batch-size", type=positive_int, help="SGD minibatch size")
    t.add_argument("--train-seed", type=nonneg_int, help="seed of the SGD samples")
    t.add_argument("--log-every", type=positive_int, help="history every N steps")
    t.add_argument("--spectrum-steps", type=nonneg_int, nargs="+", default=None,
                   help="steps at which to record the SVD (default 0, 10, 100 and the last step)")
    _threads_option(t)


def _given(args, names: dict) -> dict:
    """The options among ``names`` (argparse dest -> config field) that were given."""
    return {field: getattr(args, dest) for dest, field in names.items() if getattr(args, dest) is not None}


_MEMORY_FIELDS = {k: k for k in ("n_inputs", "n_outputs", "d", "alpha", "noise_token", "target_seed", "input_dist",
                                 "zipf_exponent", "embeddings", "init", "init_scale", "learn_embeddings", "seed")}
_TRAIN_FIELDS = {"method": "method", "batch_size": "batch_size", "train_seed": "seed", "log_every": "log_every"}


def _threads_option(p) -> None:
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: the matrices are tiny and extra threads only spin-wait)")


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _summary_of(spectra, step) -> dict:
    from mechtrunc.models.memory import spectrum_summary

    s = spectrum_summary(spectra[spectra["step"] == step])
    keep = ["noise_index", "noise_align", "noise_sv", "top_sv", "gap", "bulk_sv", "noise_logit_share", "location"]
    return {row["matrix"]: {k: row[k] for k in keep} for _, row in s.iterrows()}


def cmd_train(args) -> int:
    from mechtrunc.models.memory import MemoryConfig, MemoryTrainConfig, finished_memory_run, train_memory

    _set_threads(args.threads)
    cfg = MemoryConfig(**_given(args, _MEMORY_FIELDS))
    steps = args.steps
    spec_steps = args.spectrum_steps if args.spectrum_steps is not None else [s for s in (0, 10, 100) if s < steps] + [steps]
    tc = MemoryTrainConfig(steps=steps, lr=args.lr if args.lr is not None else float(cfg.n_inputs),
                           spectrum_steps=spec_steps, **_given(args, _TRAIN_FIELDS))
    run = finished_memory_run(args.out, cfg, tc)
    finished = run is not None
    if not finished:
        run = train_memory(cfg, tc, progress=not args.no_progress)
        run.save(args.out)
    final = run.history.iloc[-1]
    summary = {"out": str(args.out), "seconds": round(run.seconds, 3), "steps": steps,
               "final": {k: float(final[k]) for k in ("p_answer", "p_noise", "accuracy", "loss")},
               "spectrum": _summary_of(run.spectra, max(tc.spectrum_steps)) if tc.spectrum_steps else {},
               "already_finished": finished}
    if args.json:
        print(json.dumps(summary))
        return 0
    f = summary["final"]
    what = f"the memory (N={cfg.n_inputs}, V={cfg.n_outputs}, d={cfg.d}, alpha={cfg.alpha})"
    if finished:
        print(f"already finished: {args.out} holds {what} trained for {steps} {tc.method} steps (in "
              f"{run.seconds:.1f} s); nothing was trained or written")
    else:
        print(f"trained {what} for {steps} {tc.method} steps in {run.seconds:.1f} s -> {args.out}")
    print(f"clean P(answer) {f['p_answer']:.3f}  P(noise) {f['p_noise']:.3f}  accuracy {f['accuracy']:.3f}  "
          f"population loss {f['loss']:.4f}")
    for matrix, s in summary["spectrum"].items():
        print(f"{matrix:>11} at step {max(tc.spectrum_steps)}: noise component #{s['noise_index']} "
              f"(alignment {s['noise_align']:.2f}, singular value {s['noise_sv']:.3g}, top {s['top_sv']:.3g}, "
              f"gap {s['gap']:.2f}): {s['location']}")
    return 0


def cmd_spectrum(args) -> int:
    from mechtrunc.core.interventions import RemoveComponents, Truncate
    from mechtrunc.models.memory import clean_metrics, load_memory_run, noise_component, spectrum, spectrum_summary

    _set_threads(args.threads)
    run = load_memory_run(args.dir)
    model = run.model
    spec = spectrum(model)
    i = noise_component(spec)
    s = spectrum_summary(spec).iloc[0]
    out = {"noise_index": i, "noise_align": float(s["noise_align"]), "noise_sv": float(s["noise_sv"]),
           "top_sv": float(s["top_sv"]), "gap": float(s["gap"]), "location": s["location"],
           "keep": args.keep}
    for name, ivs in {"full": [], "laser": [Truncate("W", keep=args.keep)],
                      "remove_noise": [RemoveComponents("W", indices=[i])]}.items():
        m = clean_metrics(model, *ivs)
        out[name] = {k: m[k] for k in (P_ANSWER, "p_noise", "accuracy")}
    if args.json:
        print(json.dumps(out))
        return 0
    print(spec.head(args.top).round(4).to_string(index=False))
    print(f"\nnoise component #{i} ({out['location']}); clean metrics:")
    for name in ("full", "laser", "remove_noise"):
        label = {"full": "full memory", "laser": f"LASER keep {args.keep}", "remove_noise": f"remove component {i}"}[name]
        m = out[name]
        print(f"  {label:<22} P(answer) {m['p_answer']:.3f}  P(noise) {m['p_noise']:.3f}  accuracy {m['accuracy']:.3f}")
    return 0


def add_commands(sub) -> None:
    """Add the ``memory`` group (``train``, ``spectrum``, ``dynamics``) to the top-level subparsers ``sub``."""
    mem = sub.add_parser("memory", help="the linear associative memory: train, spectrum; the minimal model: dynamics",
                         description="A linear associative memory logits = U W e_x trained on a noisy map "
                                     "(mechtrunc.models.memory); where the noise association sits in W's spectrum.")
    msub = mem.add_subparsers(dest="memory_command", metavar="SUBCOMMAND")
    msub.required = True
    tr = msub.add_parser("train", help="train a memory, write history.csv, spectra.csv and the model",
                         description="Train the memory by full-batch GD on the population loss (or SGD) and "
                                     "write model, history and spectra to --out.")
    tr.add_argument("--out", required=True, help="output directory")
    _config_options(tr)
    tr.add_argument("--json", action="store_true", help="print the summary as JSON")
    tr.set_defaults(func=cmd_train)
    sp = msub.add_parser("spectrum", help="the SVD of a trained memory, LASER vs removing the noise component",
                         description="Per singular component of W: singular value, alignment with the noise "
                                     "direction and with the correct associations; clean metrics of the full "
                                     "memory, of LASER (mt.Truncate) and of removing the noise component "
                                     "(mt.RemoveComponents).")
    sp.add_argument("dir", type=run_dir_arg("memory", "the --out directory of `mechtrunc memory train`"),
                    help="directory written by `mechtrunc memory train`")
    sp.add_argument("--keep", type=fraction, default=0.1, help="LASER kept fraction of the rank (default 0.1)")
    sp.add_argument("--top", type=positive_int, default=8, help="components to print (default 8)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    _threads_option(sp)
    sp.set_defaults(func=cmd_spectrum)
    _add_dynamics(msub)


def _add_dynamics(subparsers) -> None:
    """Add ``dynamics`` to ``subparsers`` (the ``memory`` group's)."""
    p = subparsers.add_parser(
        "dynamics", help="minimal in-context model: order of learning and gradient SNR",
        description="Train the minimal in-context model (fixed previous-token layer, learned key-query, "
                    "output-value and feed-forward associative memories) on noisy in-context recall; print "
                    "when the FF picks up the noise token (P(noise) >= alpha/2) and when the in-context "
                    "answer (FF removed) reaches accuracy 0.5, and the gradient signal-to-noise ratio of "
                    "each memory at initialisation.")
    # no default here: an option not given keeps MinimalConfig's default
    p.add_argument("--alpha", type=fraction, help="noise probability after a trigger, in [0, 1]")
    p.add_argument("--k", type=positive_int, help="number of triggers")
    p.add_argument("--seq-len", type=int_at_least(2), help="sequence length T (>= 2)")
    p.add_argument("--vocab-size", type=int_at_least(2),
                   help="use a random Markov chain over this many tokens instead of tiny Shakespeare's 65")
    p.add_argument("--d-model", type=positive_int, default=None,
                   help="embedding dimension (default: MinimalConfig's, or 2 x vocabulary when larger)")
    p.add_argument("--embeddings", type=choice(_choices.MINIMAL_EMBEDDINGS, "embeddings", "embeddings"),
                   help=f"{' or '.join(_choices.MINIMAL_EMBEDDINGS)} (default {_choices.MINIMAL_EMBEDDINGS[0]})")
    p.add_argument("--optimizer", type=choice(_choices.MINIMAL_OPTIMIZERS, "optimizer"),
                   help=f"{' or '.join(_choices.MINIMAL_OPTIMIZERS)} (torch.optim.SGD / Adam; default "
                        f"{_choices.MINIMAL_OPTIMIZERS[0]}; no adamw: the minimal model has no weight decay)")
    p.add_argument("--lr", type=positive_float, help="learning rate")
    p.add_argument("--batch-size", type=positive_int, help="sequences per step")
    p.add_argument("--steps", type=positive_int, help="training steps")
    p.add_argument("--eval-every", type=positive_int, help="evaluate every N steps")
    p.add_argument("--snr-batches", type=int_at_least(2), default=16,
                   help="independent batches for the SNR at initialisation (>= 2, default 16)")
    p.add_argument("--seed", type=nonneg_int, help="random seed")
    p.add_argument("--out", default=None, help="directory for history.csv, snr_init.csv and config.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_dynamics)


_MINIMAL_FIELDS = {k: k for k in ("alpha", "k", "seq_len", "embeddings", "optimizer", "lr", "batch_size", "steps",
                                  "eval_every", "seed")}


def cmd_dynamics(args) -> int:
    from dataclasses import asdict

    from mechtrunc.studies.dynamics import MinimalConfig, MinimalModel, gradient_snr, train_minimal
    from mechtrunc.tasks.recall import RecallTask

    over = _given(args, _MINIMAL_FIELDS)
    if args.vocab_size is not None:
        over.update(bigrams="random", vocab_size=args.vocab_size)
    defaults = MinimalConfig.__dataclass_fields__
    if args.d_model is not None:
        over["d_model"] = args.d_model
    elif over.get("embeddings", defaults["embeddings"].default) == "orthonormal":  # the default width, or wider
        vocab = args.vocab_size if args.vocab_size is not None else defaults["vocab_size"].default
        over["d_model"] = max(defaults["d_model"].default, 2 * vocab)
    cfg = MinimalConfig(**over)
    summary = _finished_dynamics(args.out, cfg, args.snr_batches)
    finished = summary is not None
    if not finished:
        model = MinimalModel(cfg)
        snr = gradient_snr(model, RecallTask(cfg.recall_config()), cfg.batch_size, n_batches=args.snr_batches,
                           seed=cfg.seed)
        result = train_minimal(cfg, progress=not args.no_progress)
        last = result.history.iloc[-1]
        summary = {
            "config": asdict(cfg),
            "snr_init_batches": args.snr_batches,
            "order": result.order,
            "snr_init": {r.memory: {"mean": r.mean, "std": r.std, "snr": r.snr} for r in snr.itertuples()},
            "final": {v: {m: float(last[f"{v}_{m}"]) for m in VARIANT_METRICS}
                      for v in ("full", "ff_removed", "attn_removed")},
            "seconds": result.seconds,
        }
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            result.history.to_csv(out / "history.csv", index=False)
            snr.to_csv(out / "snr_init.csv", index=False)
            (out / "config.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps({**summary, "already_finished": finished}))
        return 0
    o = summary["order"]
    what = f"minimal model, alpha={cfg.alpha}, T={cfg.seq_len}, vocabulary {cfg.recall_config().d_vocab}"
    if finished:
        print(f"already finished: {args.out} holds the {what} trained for {cfg.steps} steps (in "
              f"{summary['seconds']:.1f} s); nothing was trained or written")
    else:
        print(f"{what}, {cfg.steps} steps in {summary['seconds']:.1f} s")
    print(f"P(noise) >= {o['noise_threshold']:.2f} at step {o['step_noise']:g}; in-context accuracy (FF removed) "
          f">= {o['icl_threshold']} at step {o['step_icl']:g}; FF first: {o['ff_first']}")
    print("gradient signal at initialisation (mean / std over batches, SNR):")
    for name, r in summary["snr_init"].items():
        print(f"  {name:<5} {r['mean']:+.4f} / {r['std']:.4f}  SNR {r['snr']:+.2f}")
    print(format_table(summary["final"]))
    return 0


def _finished_dynamics(out, cfg, snr_batches: int) -> dict | None:
    """The stored summary when ``out`` holds a `memory dynamics` run of exactly this
    configuration (finished: nothing to train or write); ``None`` when there is no ``out`` or it
    is missing or empty.  A run is never resumed or overwritten: another configuration is
    refused naming every differing field, a directory holding anything else is refused too."""
    from dataclasses import asdict

    from mechtrunc._checks import check_resume

    if out is None or not Path(out).exists() or (Path(out).is_dir() and not any(Path(out).iterdir())):
        return None
    try:
        stored = json.loads((Path(out) / "config.json").read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or "config" not in stored or "order" not in stored:
        raise UsageError(f"{out} exists and holds no `memory dynamics` run (config.json); nothing was changed: "
                         "use an empty or new --out directory")
    check_resume(out, {**stored["config"], "snr_init_batches": stored.get("snr_init_batches")},
                 {**asdict(cfg), "snr_init_batches": snr_batches},
                 extension_refused=lambda old, new: "`memory dynamics` does not resume a run")
    return stored
