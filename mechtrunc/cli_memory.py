"""``mechtrunc memory train`` and ``mechtrunc memory spectrum``: the linear associative memory
(:mod:`mechtrunc.memory`).  Heavy imports happen inside the command functions.

:func:`add_commands` returns the ``memory`` group's subparsers object so that more subcommands
can be added to the group (``memory_sub.add_parser("dynamics", ...)``)."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_commands"]


def _config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory and data (mechtrunc.memory.MemoryConfig)")
    g.add_argument("--n-inputs", type=int, default=64, help="N, number of inputs (>= 2, default 64)")
    g.add_argument("--n-outputs", type=int, default=64, help="V, number of outputs (>= 2, default 64)")
    g.add_argument("--d", type=int, default=128, help="embedding width (default 128)")
    g.add_argument("--alpha", type=float, default=0.3, help="noise probability in [0, 1] (default 0.3)")
    g.add_argument("--noise-token", type=int, default=0, help="output index of the noise token (default 0)")
    g.add_argument("--target-seed", type=int, default=0, help="seed of the random map y*(x)")
    g.add_argument("--input-dist", default="uniform", help="'uniform' (default) or 'zipf'")
    g.add_argument("--zipf-exponent", type=float, default=1.0, help="Zipf exponent (default 1)")
    g.add_argument("--embeddings", default="gaussian", help="'gaussian' (default) or 'orthonormal' (needs N, V <= d)")
    g.add_argument("--init", default="zero", help="initial W: 'zero' (default) or 'random'")
    g.add_argument("--init-scale", type=float, default=1.0, help="scale of a random initial W (default 1)")
    g.add_argument("--learn-embeddings", action="store_true", help="train the embeddings too")
    g.add_argument("--seed", type=int, default=0, help="seed of the embeddings and initial W")
    t = p.add_argument_group("training (mechtrunc.memory.MemoryTrainConfig)")
    t.add_argument("--method", default="gd", help="'gd' (full batch, population loss; default) or 'sgd'")
    t.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    t.add_argument("--lr", type=float, default=None, help="step size (default N, so each input moves at the same rate)")
    t.add_argument("--batch-size", type=int, default=256, help="SGD minibatch size (default 256)")
    t.add_argument("--train-seed", type=int, default=0, help="seed of the SGD samples")
    t.add_argument("--log-every", type=int, default=10, help="history every N steps (default 10)")
    t.add_argument("--spectrum-steps", type=int, nargs="+", default=None,
                   help="steps at which to record the SVD (default 0, 10, 100 and the last step)")
    _threads_option(t)


def _threads_option(p) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the matrices are tiny and extra threads only spin-wait)")


def _set_threads(n: int) -> None:
    import torch

    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def _summary_of(spectra, step) -> dict:
    from mechtrunc.memory import spectrum_summary

    s = spectrum_summary(spectra[spectra["step"] == step])
    keep = ["noise_index", "noise_align", "noise_sv", "top_sv", "gap", "bulk_sv", "noise_logit_share", "location"]
    return {row["matrix"]: {k: row[k] for k in keep} for _, row in s.iterrows()}


def cmd_train(args) -> int:
    from mechtrunc.memory import MemoryConfig, MemoryTrainConfig, train_memory

    _set_threads(args.threads)
    cfg = MemoryConfig(
        n_inputs=args.n_inputs, n_outputs=args.n_outputs, d=args.d, alpha=args.alpha, noise_token=args.noise_token,
        target_seed=args.target_seed, input_dist=args.input_dist, zipf_exponent=args.zipf_exponent,
        embeddings=args.embeddings, init=args.init, init_scale=args.init_scale,
        learn_embeddings=args.learn_embeddings, seed=args.seed,
    )
    steps = args.steps
    spec_steps = args.spectrum_steps if args.spectrum_steps is not None else [s for s in (0, 10, 100) if s < steps] + [steps]
    tc = MemoryTrainConfig(method=args.method, steps=steps, lr=args.lr if args.lr is not None else float(cfg.n_inputs),
                           batch_size=args.batch_size, seed=args.train_seed, log_every=args.log_every,
                           spectrum_steps=spec_steps)
    run = train_memory(cfg, tc)
    run.save(args.out)
    final = run.history.iloc[-1]
    summary = {"out": str(args.out), "seconds": round(run.seconds, 3), "steps": steps,
               "final": {k: float(final[k]) for k in ("p_answer", "p_noise", "accuracy", "loss")},
               "spectrum": _summary_of(run.spectra, max(tc.spectrum_steps)) if tc.spectrum_steps else {}}
    if args.json:
        print(json.dumps(summary))
        return 0
    f = summary["final"]
    print(f"trained the memory (N={cfg.n_inputs}, V={cfg.n_outputs}, d={cfg.d}, alpha={cfg.alpha}) for {steps} "
          f"{tc.method} steps in {run.seconds:.1f} s -> {args.out}")
    print(f"clean P(correct) {f['p_answer']:.3f}  P(noise) {f['p_noise']:.3f}  accuracy {f['accuracy']:.3f}  "
          f"population loss {f['loss']:.4f}")
    for matrix, s in summary["spectrum"].items():
        print(f"{matrix:>11} at step {max(tc.spectrum_steps)}: noise component #{s['noise_index']} "
              f"(alignment {s['noise_align']:.2f}, singular value {s['noise_sv']:.3g}, top {s['top_sv']:.3g}, "
              f"gap {s['gap']:.2f}): {s['location']}")
    return 0


def cmd_spectrum(args) -> int:
    from mechtrunc.interventions import RemoveComponents, Truncate
    from mechtrunc.memory import clean_metrics, load_memory_run, noise_component, spectrum, spectrum_summary

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
        out[name] = {k: m[k] for k in ("p_answer", "p_noise", "accuracy")}
    if args.json:
        print(json.dumps(out))
        return 0
    print(spec.head(args.top).round(4).to_string(index=False))
    print(f"\nnoise component #{i} ({out['location']}); clean metrics:")
    for name in ("full", "laser", "remove_noise"):
        label = {"full": "full memory", "laser": f"LASER keep {args.keep}", "remove_noise": f"remove component {i}"}[name]
        m = out[name]
        print(f"  {label:<22} P(correct) {m['p_answer']:.3f}  P(noise) {m['p_noise']:.3f}  accuracy {m['accuracy']:.3f}")
    return 0


def add_commands(sub) -> argparse._SubParsersAction:
    """Add the ``memory`` group to the top-level subparsers ``sub``; returns the group's own
    subparsers object (to add more subcommands to it)."""
    mem = sub.add_parser("memory", help="the linear associative memory: train, spectrum",
                         description="A linear associative memory logits = U W e_x trained on a noisy map "
                                     "(mechtrunc.memory); where the noise association sits in W's spectrum.")
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
    sp.add_argument("dir", help="directory written by `mechtrunc memory train`")
    sp.add_argument("--keep", type=float, default=0.1, help="LASER kept fraction of the rank (default 0.1)")
    sp.add_argument("--top", type=int, default=8, help="components to print (default 8)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    _threads_option(sp)
    sp.set_defaults(func=cmd_spectrum)
    return msub
