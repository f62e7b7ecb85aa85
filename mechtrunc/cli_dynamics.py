"""``mechtrunc memory dynamics``: train the minimal in-context model (attention memories + FF
memory, see :mod:`mechtrunc.dynamics`) on noisy recall and report the order of learning and the
gradient signal-to-noise ratios at initialisation.

:func:`add_parser` adds the ``dynamics`` subcommand to a ``memory`` group's subparsers.  No heavy
import at module level: torch and pandas load inside the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "cmd_dynamics"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``dynamics`` to ``subparsers`` (the ``memory`` group's)."""
    p = subparsers.add_parser(
        "dynamics", help="minimal in-context model: order of learning and gradient SNR",
        description="Train the minimal in-context model (fixed previous-token layer, learned key-query, "
                    "output-value and feed-forward associative memories) on noisy in-context recall; print "
                    "when the FF picks up the noise token (P(noise) >= alpha/2) and when the in-context "
                    "answer (FF removed) reaches accuracy 0.5, and the gradient signal-to-noise ratio of "
                    "each memory at initialisation.")
    p.add_argument("--alpha", type=_fraction, default=0.5, help="noise probability after a trigger (default 0.5)")
    p.add_argument("--k", type=_positive_int, default=1, help="number of triggers (default 1)")
    p.add_argument("--seq-len", type=int, default=64, help="sequence length T (default 64)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="use a random Markov chain over this many tokens instead of tiny Shakespeare's 65")
    p.add_argument("--d-model", type=_positive_int, default=None,
                   help="embedding dimension (default 160, or 2 x vocabulary when larger)")
    p.add_argument("--embeddings", default="orthonormal", help="orthonormal (default) or gaussian")
    p.add_argument("--optimizer", default="sgd", help="sgd (default) or adam")
    p.add_argument("--lr", type=float, default=2.5, help="learning rate (default 2.5, SGD)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="sequences per step (default 32)")
    p.add_argument("--steps", type=_positive_int, default=300, help="training steps (default 300)")
    p.add_argument("--eval-every", type=_positive_int, default=10, help="evaluate every N steps (default 10)")
    p.add_argument("--snr-batches", type=int, default=16,
                   help="independent batches for the SNR at initialisation (>= 2, default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default=None, help="directory for history.csv, snr_init.csv and config.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_dynamics)
    return p


def cmd_dynamics(args) -> int:
    from dataclasses import asdict

    from mechtrunc.dynamics import MinimalConfig, MinimalModel, gradient_snr, train_minimal
    from mechtrunc.tasks.recall import RecallTask

    if args.snr_batches < 2:
        raise ValueError(f"--snr-batches must be >= 2, got {args.snr_batches}")
    over = {}
    if args.vocab_size is not None:
        if args.vocab_size < 2:
            raise ValueError(f"--vocab-size must be >= 2, got {args.vocab_size}")
        over.update(bigrams="random", vocab_size=args.vocab_size)
    vocab = args.vocab_size if args.vocab_size is not None else 65
    d = args.d_model if args.d_model is not None else max(160, 2 * vocab if args.embeddings == "orthonormal" else 0)
    cfg = MinimalConfig(alpha=args.alpha, k=args.k, seq_len=args.seq_len, d_model=d, embeddings=args.embeddings,
                        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, steps=args.steps,
                        eval_every=args.eval_every, seed=args.seed, **over)
    model = MinimalModel(cfg)
    snr = gradient_snr(model, RecallTask(cfg.recall_config()), cfg.batch_size, n_batches=args.snr_batches, seed=cfg.seed)
    result = train_minimal(cfg)
    last = result.history.iloc[-1]
    summary = {
        "config": asdict(cfg),
        "order": result.order,
        "snr_init": {r.memory: {"mean": r.mean, "std": r.std, "snr": r.snr} for r in snr.itertuples()},
        "final": {v: {m: float(last[f"{v}_{m}"]) for m in ("accuracy", "p_noise", "p_answer")}
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
        print(json.dumps(summary))
        return 0
    o = result.order
    print(f"minimal model, alpha={cfg.alpha}, T={cfg.seq_len}, vocabulary {cfg.recall_config().d_vocab}, "
          f"{cfg.steps} steps in {result.seconds:.1f} s")
    print(f"P(noise) >= {o['noise_threshold']:.2f} at step {o['step_noise']:g}; in-context accuracy (FF removed) "
          f">= {o['icl_threshold']} at step {o['step_icl']:g}; FF first: {o['ff_first']}")
    print("gradient signal at initialisation (mean / std over batches, SNR):")
    for r in snr.itertuples():
        print(f"  {r.memory:<5} {r.mean:+.4f} / {r.std:.4f}  SNR {r.snr:+.2f}")
    print(f"{'variant':<14}{'accuracy':>10}{'P(noise)':>10}{'P(correct)':>12}")
    for v, m in summary["final"].items():
        print(f"{v:<14}{m['accuracy']:>10.3f}{m['p_noise']:>10.3f}{m['p_answer']:>12.3f}")
    return 0
