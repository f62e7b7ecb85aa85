"""``mechtrunc lm corpus``, ``mechtrunc lm prompts`` and ``mechtrunc lm train``: the language model of :mod:`mechtrunc.lm`
(a small GPT-NeoX trained on a generated English corpus).  Heavy imports happen inside the
command functions; presets are read from the light :mod:`mechtrunc._choices`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechtrunc.cli.checks import UsageError, choice, device, fraction, nonneg_int, positive_int
from mechtrunc._choices import CORPUS_PRESETS, LM_PRESETS, LM_SPLITS

__all__ = ["add_commands"]


def _corpus_options(p: argparse.ArgumentParser, seed_flag: str) -> None:
    g = p.add_argument_group("corpus (mechtrunc.lm.corpus.CorpusConfig)")
    g.add_argument("--corpus", type=choice(CORPUS_PRESETS, "corpus preset"), default="default",
                   help=f"corpus preset: {', '.join(CORPUS_PRESETS)} (default: default; rare_the is the control)")
    g.add_argument(seed_flag, type=nonneg_int, default=None, dest="corpus_seed", help="corpus seed (default 0)")
    g.add_argument("--to-the-share", type=fraction, default=None,
                   help='share of generic "to" followed by " the" rather than a name (default 0.7)')
    g.add_argument("--ioi-the-share", type=fraction, default=None,
                   help='share of IOI sentences ending "to the ROLE" rather than the indirect object (default 0.25)')


def _corpus_config(args):
    from mechtrunc.lm.corpus import corpus_preset

    over = {k: v for k, v in (("seed", args.corpus_seed), ("to_the_share", args.to_the_share),
                              ("ioi_the_share", args.ioi_the_share)) if v is not None}
    return corpus_preset(args.corpus, **over)


def cmd_corpus(args) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise UsageError(f"--out {out} exists; give a new file (nothing was overwritten)")
    import time

    from mechtrunc.lm.corpus import Corpus, corpus_stats

    corpus = Corpus(_corpus_config(args))
    t0 = time.perf_counter()
    chunk = corpus.stories(args.stories)
    seconds = time.perf_counter() - t0
    text = corpus.text(chunk)
    if out is not None:
        out.write_text(text)
    summary = {"stories": args.stories, "seconds": round(seconds, 4),
               "tokens_per_second": round(len(chunk) / seconds, 1) if seconds > 0 else None,
               **corpus_stats(chunk.tokens, corpus.tokenizer), "out": str(out) if out else None,
               "config": corpus.config.to_dict()}
    if args.json:
        print(json.dumps(summary))
    elif out is None:
        print(text)
    else:
        print(f"wrote {args.stories} stories ({summary['tokens']} tokens) to {out}; after ' to' the next token is "
              f"' the' {summary['p_the_after_to']:.0%} of the time, after ' in' {summary['p_the_after_in']:.0%}")
    return 0


def cmd_prompts(args) -> int:
    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise UsageError(f"--out {out} must end in .jsonl (a JSONL prompt file)")
    if out.exists():
        raise UsageError(f"--out {out} exists; give a new file (nothing was overwritten)")
    from mechtrunc.lm.prompts import lm_fact_prompts, lm_ioi_prompts, prompt_records
    from mechtrunc.lm.tokenizer import lm_tokenizer

    tok = lm_tokenizer()
    build = lm_ioi_prompts if args.task == "ioi" else lm_fact_prompts
    records = prompt_records(build(tok, _corpus_config(args), n=args.n, seed=args.seed, split=args.split), tok)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} {args.split} {args.task} prompts to {out}; use it as --task {out}")
    return 0


def cmd_train(args) -> int:
    from mechtrunc.lm.train import lm_preset, train_lm

    over = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("device", args.device),
                              ("threads", args.threads), ("precision", args.precision)) if v is not None}
    cfg = lm_preset(args.preset, corpus=_corpus_config(args), **over)
    summary = train_lm(cfg, args.out, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
        return 0
    resumed = f" (resumed at step {summary['resumed_from']})" if summary["resumed_from"] else ""
    print(f"trained {args.preset} ({cfg.n_layers} layers, d {cfg.d_model}, {summary['parameters']:,} parameters) "
          f"for {cfg.steps} steps{resumed} in {summary['seconds']:.1f} s -> {args.out}")
    print(f"final loss {summary['final_loss']:.4f}; {len(summary['checkpoints'])} checkpoints "
          f"(step0 ... step{cfg.steps}); read them with `mechtrunc pythia checkpoints --model {args.out}`")
    return 0


def add_commands(sub) -> argparse._SubParsersAction:
    """Add the ``lm`` group to the top-level subparsers ``sub``; returns the group's subparsers."""
    lm = sub.add_parser("lm", help="a small GPT-NeoX trained on a generated English corpus: corpus, prompts, train",
                        description="A language model of our own (mechtrunc.lm): a seeded generated corpus with "
                                    "IOI sentences, facts and generic 'to the', and Pythia-style training with "
                                    "Pythia's checkpoint schedule.")
    lsub = lm.add_subparsers(dest="lm_command", metavar="SUBCOMMAND")
    lsub.required = True
    co = lsub.add_parser("corpus", help="generate stories (text to --out or stdout, or --json statistics)",
                         description="Generate stories of the corpus; print them, write them to --out, or "
                                     "print statistics and generator speed with --json.")
    co.add_argument("--stories", type=positive_int, default=10, help="number of stories (default 10)")
    co.add_argument("--out", default=None, help="write the text to this new file")
    co.add_argument("--json", action="store_true", help="print statistics as JSON instead of the text")
    _corpus_options(co, "--seed")
    co.set_defaults(func=cmd_corpus)
    pr = lsub.add_parser("prompts", help="write held-out IOI or factual prompts as a JSONL prompt file",
                         description="Write the evaluation prompts of mechtrunc.lm.prompts (held-out names and "
                                     "templates by default) as a JSONL prompt file, for --task FILE of "
                                     "`mechtrunc pythia truncate|checkpoints`.")
    pr.add_argument("--task", type=choice(("ioi", "factual"), "task"), default="ioi", help="ioi (default) or factual")
    pr.add_argument("--n", type=positive_int, default=200, help="number of prompts (default 200)")
    pr.add_argument("--seed", type=nonneg_int, default=0, help="prompt seed (default 0)")
    pr.add_argument("--split", type=choice(LM_SPLITS, "split"), default="heldout",
                    help="heldout (default: held-out templates, training names), heldout_names (held-out "
                         "templates and names: the model cannot say those) or train")
    pr.add_argument("--out", required=True, help="new .jsonl file")
    _corpus_options(pr, "--corpus-seed")
    pr.set_defaults(func=cmd_prompts)
    tr = lsub.add_parser("train", help="train a preset; checkpoints OUT/step{N}/ at Pythia's schedule",
                         description="Train (or resume: rerun the same command) a GPT-NeoX preset on the corpus. "
                                     "OUT gets run.json, step{N}/ save_pretrained checkpoints (model and "
                                     "tokenizer), state.pt, history.csv and summary.json.  A directory holding "
                                     "another run is refused.")
    tr.add_argument("--preset", required=True, type=choice(LM_PRESETS, "model preset"),
                    help=f"model and training preset: {', '.join(LM_PRESETS)}")
    tr.add_argument("--out", required=True, help="output directory (new, or this run's to resume)")
    tr.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    tr.add_argument("--seed", type=nonneg_int, default=None, help="initialisation seed (default 0)")
    tr.add_argument("--device", type=device, default=None, help="torch device (default: the preset's)")
    tr.add_argument("--precision", type=choice(("fp32", "bf16"), "precision"), default=None,
                    help="fp32 or bf16 autocast (default: the preset's)")
    tr.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: the preset's)")
    _corpus_options(tr, "--corpus-seed")
    tr.add_argument("--json", action="store_true", help="print the summary as JSON")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)
    return lsub
