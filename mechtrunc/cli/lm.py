"""``mechtrunc lm corpus``, ``mechtrunc lm english``, ``mechtrunc lm prompts``, ``mechtrunc lm train`` and
``mechtrunc lm study``: the language model of :mod:`mechtrunc.models.lm` (a small GPT-NeoX trained on a
generated English corpus, optionally mixed with real English text) and its study
(:func:`mechtrunc.studies.lm.study_run`).  Heavy imports happen inside the
command functions; presets are read from the light :mod:`mechtrunc._choices`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mechtrunc.cli.checks import UsageError, choice, device, fraction, nonneg_int, positive_int
from mechtrunc._choices import CORPUS_PRESETS, LM_PRECISIONS, LM_PRESETS, LM_SPLITS, task_names
from mechtrunc.models.lm_run import LMRunDirectory

__all__ = ["add_commands", "study_summary"]


class _OldCorpusSeed(argparse.Action):
    """``lm corpus --seed``: the old name of ``--corpus-seed``, still read, with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        print("mechtrunc: warning: `lm corpus --seed` is deprecated; the corpus seed is --corpus-seed in every "
              "`mechtrunc lm` command", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _corpus_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus (mechtrunc.models.lm.corpus.CorpusConfig)")
    g.add_argument("--corpus", type=choice(CORPUS_PRESETS, "corpus preset"), default="default",
                   help=f"corpus preset: {', '.join(CORPUS_PRESETS)} (default: default; rare_the is the control)")
    g.add_argument("--corpus-seed", type=nonneg_int, default=None, dest="corpus_seed", help="corpus seed (default 0)")
    g.add_argument("--to-the-share", type=fraction, default=None,
                   help='share of generic "to" followed by " the" rather than a name (default 0.7)')
    g.add_argument("--ioi-the-share", type=fraction, default=None,
                   help='share of IOI sentences ending "to the ROLE" rather than the indirect object (default 0.25)')
    g.add_argument("--recall-noise", type=fraction, default=None,
                   help='noisy recall (the toy\'s alpha): share of recall repeats saying "went to the PLACE" instead '
                        'of the stated city (the recall presets; default 0.3 for recall)')
    g.add_argument("--english", type=fraction, default=None,
                   help="share of stories replaced by passages of real English (Austen, Moby-Dick; fetch it first with "
                        "`mechtrunc lm english`; default 0)")
    g.add_argument("--english-dir", default=None,
                   help="directory of the English text, e.g. the --out of `mechtrunc lm english` (default: where "
                        "that command writes by default); its checksum is recorded in the config")
    g.add_argument("--english-vocab", type=nonneg_int, default=None,
                   help="Pythia tokens added to the tokenizer for the English text (default 512)")


def _corpus_config(args):
    given = [f"--{k}" for k in ("english-dir", "english-vocab") if getattr(args, k.replace("-", "_")) is not None]
    if given and not args.english:
        raise UsageError(f"{' and '.join(given)} given without --english SHARE > 0 (no English text is mixed in); "
                         "add --english or leave them out")
    from mechtrunc.models.lm.corpus import corpus_preset

    over = {k: v for k, v in (("seed", args.corpus_seed), ("to_the_share", args.to_the_share),
                              ("ioi_the_share", args.ioi_the_share), ("recall_noise", args.recall_noise),
                              ("english", args.english), ("english_dir", args.english_dir),
                              ("english_vocab", args.english_vocab)) if v is not None}
    if args.english_dir is not None:  # the text in that directory, whichever it is (its digest goes in the config)
        from mechtrunc.models.lm.english import english_digest

        over["english_sha256"] = english_digest(args.english_dir)
    return corpus_preset(args.corpus, **over)


def cmd_english(args) -> int:
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory for the English text")
    if args.debs is not None and not Path(args.debs).expanduser().is_dir():
        raise UsageError(f"--debs {args.debs} is not a directory; give the directory holding the two .deb files")
    from mechtrunc.models.lm.english import fetch_english

    manifest = fetch_english(out, debs=args.debs)  # a refused checksum or download: ValueError, exit 2
    where = manifest["out"]
    if args.json:
        print(json.dumps(manifest))
        return 0
    words = sum(b["words"] for b in manifest["books"].values())
    what = "already there, verified" if manifest["already_there"] else "fetched and verified"
    print(f"{len(manifest['books'])} books, {words:,} words: {what} in {where} (digest {manifest['digest']}); train "
          f"on it with `mechtrunc lm train --english SHARE` (--english-dir {where} if not the default)")
    return 0


def cmd_corpus(args) -> int:
    if args.english:
        raise UsageError("--english mixes real English into training batches (`mechtrunc lm train`); `lm corpus` "
                         "prints the generated stories only: leave --english out")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise UsageError(f"--out {out} exists; give a new file (nothing was overwritten)")
    import time

    from mechtrunc.models.lm.corpus import Corpus, corpus_stats

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
    from mechtrunc.models.lm.prompts import lm_task_prompts, prompt_records
    from mechtrunc.models.lm.tokenizer import run_tokenizer

    corpus = _corpus_config(args)
    tok = run_tokenizer(corpus)
    records = prompt_records(lm_task_prompts(args.task, tok, corpus, n=args.n, seed=args.seed, split=args.split), tok)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} {args.split} {args.task} prompts to {out}; use it as --task {out}")
    return 0


def cmd_train(args) -> int:
    from mechtrunc.models.lm.train import lm_preset, train_lm

    over = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("device", args.device),
                              ("threads", args.threads), ("processes", args.processes), ("precision", args.precision))
            if v is not None}
    cfg = lm_preset(args.preset, corpus=_corpus_config(args), **over)
    summary = train_lm(cfg, args.out, progress=not args.no_progress, extend=args.extend)
    if args.json:
        print(json.dumps(summary))
        return 0
    what = f"{args.preset} ({cfg.n_layers} layers, d {cfg.d_model}, {summary['parameters']:,} parameters)"
    start = summary["resumed_from"]
    if summary.get("already_finished"):
        print(f"already finished: {args.out} holds the finished {what} run of {cfg.steps} steps (its training took "
              f"{summary['seconds']:.1f} s); nothing was trained or written")
    elif start:
        print(f"trained {what} for steps {start + 1}..{cfg.steps} (resumed at step {start}) in "
              f"{summary['seconds_this_run']:.1f} s ({summary['seconds']:.1f} s in all) -> {args.out}")
    else:
        print(f"trained {what} for {cfg.steps} steps in {summary['seconds_this_run']:.1f} s -> {args.out}")
    print(f"final loss {summary['final_loss']:.4f}; {len(summary['checkpoints'])} checkpoints "
          f"(step0 ... step{cfg.steps}); read them with `mechtrunc pythia checkpoints --model {args.out}`")
    return 0


def _check_run_dir(run: Path) -> None:
    """What can be checked without torch: RUN is a directory holding a language-model run."""
    if not run.exists():
        raise UsageError(f"{run} does not exist; give the --out directory of `mechtrunc lm train`")
    if not run.is_dir():
        raise UsageError(f"{run} is a file, not a directory; give the --out directory of `mechtrunc lm train`")
    try:
        LMRunDirectory(run).read_run()
    except ValueError as e:
        raise UsageError(str(e)) from None


def _plain(v):
    """A JSON-ready value: numpy scalars to Python, NaN to None."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def study_summary(tables: dict, run: Path, n_prompts: int, loss_budget: float) -> dict:
    """The JSON object of ``mechtrunc lm study``: the summary row (order-of-learning steps,
    training time and loss) and, per checkpoint and task, the chosen truncation with its change on
    the eval prompts (``metrics``: full, intervened, change, ci_low, ci_high; empty when no
    truncation beats the full model within the loss budget)."""
    from mechtrunc.models.lm.prompts import run_corpus
    from mechtrunc.studies.lm import answer_tasks, study_tasks

    summary = {k: _plain(v) for k, v in tables["summary"].iloc[0].items()}
    best, grid = tables["best"], tables["grid"]
    tasks = answer_tasks(study_tasks(run_corpus(run)))
    chosen = []
    for when in dict.fromkeys(grid["checkpoint"]):
        step = int(grid.loc[grid["checkpoint"] == when, "step"].iloc[0])
        for task in tasks:
            rows = best[(best["checkpoint"] == when) & (best["task"] == task)] if len(best) else best
            entry = {"checkpoint": when, "step": step, "task": task, "baseline": True, "layer": None, "matrix": None,
                     "keep": None, "intervention": None, "select_gain": 0.0, "loss_increase": 0.0, "n_items": None,
                     "metrics": {}}
            if len(rows):
                first = rows.iloc[0]
                entry.update({k: _plain(first[k]) for k in ("baseline", "matrix", "keep", "intervention",
                                                             "select_gain", "loss_increase")})
                entry["baseline"] = bool(entry["baseline"])
                entry["layer"] = int(first["layer"])
                entry["n_items"] = int(first["n_items"])
                entry["metrics"] = {r["metric"]: {k: _plain(r[k]) for k in ("full", "intervened", "change", "ci_low",
                                                                             "ci_high")}
                                    for _, r in rows.iterrows()}
            chosen.append(entry)
    from mechtrunc.studies.lm_files import LMStudyDirectory

    return {"run": str(run), "study_dir": str(LMStudyDirectory(run).dir), "n_prompts": n_prompts, "loss_budget": loss_budget,
            "summary": summary, "truncations": chosen}


def _step_text(v) -> str:
    return "never (not by the last checkpoint)" if v is None else f"step {int(v)}"


def _change_text(name: str, m: dict) -> str:
    return (f"{name} {m['full']:.4f} -> {m['intervened']:.4f} ({m['change']:+.4f}, 95% CI "
            f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}])")


def cmd_study(args) -> int:
    run = Path(args.run)
    _check_run_dir(run)
    from mechtrunc.analysis.selection import DEFAULT_BUDGET
    from mechtrunc.studies.lm import study_run

    loss_budget = DEFAULT_BUDGET
    tables = study_run(run, n_prompts=args.n, loss_budget=loss_budget)  # a cached study with others is refused
    rep = study_summary(tables, run, args.n, loss_budget)
    if args.json:
        print(json.dumps(rep))
        return 0
    s = rep["summary"]
    print(f"study of {run} ({s['layers']} layers, d_model {s['d_model']}, seed {s['seed']}, {s['steps']} steps; "
          f"{args.n} prompts per set) -> {rep['study_dir']}")
    print("order of learning (eval prompts):")
    from mechtrunc.models.lm.prompts import run_corpus
    from mechtrunc.studies.lm import the_threshold

    recall = "step_recall_beats_the" in s
    threshold = (f"P(' the') at the recall repeat reaches {the_threshold(run_corpus(run)):g} (recall_noise / 2)" if recall
                 else f"P(' the') after ' to' reaches {s['to_the_share'] / 2:g} (to_the_share / 2)")
    main = "recall answer (the stated city)" if recall else "IO"
    for key, what in (("step_the", threshold),
                      ("step_fact_beats_the", "factual answer beats ' the' for good"),
                      ("step_ioi_beats_the", "IOI answer (IO) beats ' the' for good"),
                      ("step_io_beats_s", "IO beats S (accuracy >= 0.75) for good"),
                      ("step_recall_beats_the", "recall answer beats ' the' for good"),
                      ("step_binding", "binding: the city beats the other stated city (accuracy >= 0.75) for good"),
                      ("step_competition", f"{main} and ' the' compete most evenly (max min(P(answer), P(' the')))")):
        if key in s and not (recall and key in ("step_fact_beats_the", "step_ioi_beats_the", "step_io_beats_s")):
            print(f"  {key:20s} {_step_text(s[key]):36s} {what}")
    print(f"chosen truncations (best P(answer) on the select prompts within +{loss_budget:g} nats of corpus loss; "
          "change on the eval prompts):")
    for t in rep["truncations"]:
        where = f"  {t['checkpoint']} (step {t['step']}) {t['task']}:"
        if t["baseline"] or not t["metrics"]:
            print(f"{where} none (no truncation beats the full model within the loss budget)")
            continue
        print(f"{where} layer {t['layer']} {t['matrix']} keep {t['keep']:g} (corpus loss {t['loss_increase']:+.3f} nats)")
        for metric, name in (("p_answer", "P(answer)"), ("p_the", "P(' the')"), ("p_other", "P(other city)")):
            if metric in t["metrics"]:
                print(f"    {_change_text(name, t['metrics'][metric])}")
    print(f"tables in {rep['study_dir']}; HTML page: mechtrunc report {run}")
    return 0


def add_commands(sub) -> argparse._SubParsersAction:
    """Add the ``lm`` group to the top-level subparsers ``sub``; returns the group's subparsers."""
    lm = sub.add_parser("lm", help="a small GPT-NeoX trained on a generated English corpus: corpus, english, prompts, train, study",
                        description="A language model of our own (mechtrunc.models.lm): a seeded generated corpus with "
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
    _corpus_options(co)
    co.add_argument("--seed", type=nonneg_int, dest="corpus_seed", action=_OldCorpusSeed, help=argparse.SUPPRESS)
    co.set_defaults(func=cmd_corpus)
    en = lsub.add_parser("english", help="fetch real English text (Austen's novels, Moby-Dick) with checksums",
                         description="Fetch Jane Austen's six novels and Moby-Dick (public domain) from Debian's "
                                     "packages r-cran-janeaustenr and r-cran-tokenizers (pinned SHA-256), decode "
                                     "their R data and write one text file per book and manifest.json into --out. "
                                     "A directory that already holds the verified text is left as it is.")
    en.add_argument("--out", default=None,
                    help="directory for the text (default: english/ in mechtrunc's cache, ~/.cache/mechtrunc/english)")
    en.add_argument("--debs", default=None,
                    help="read the two .deb files from this directory instead of downloading them (still verified)")
    en.add_argument("--json", action="store_true", help="print the manifest as JSON")
    en.set_defaults(func=cmd_english)
    pr = lsub.add_parser("prompts", help="write held-out prompts of a task (IOI, factual...) as a JSONL prompt file",
                         description="Write the evaluation prompts of mechtrunc.models.lm.prompts (held-out names and "
                                     "templates by default) as a JSONL prompt file, for --task FILE of "
                                     "`mechtrunc pythia truncate|checkpoints`.")
    pr.add_argument("--task", type=choice(task_names("lm"), "task"), default="ioi",
                    help=f"{', '.join(task_names('lm'))} (default ioi; recall: one 'X went to CITY.' in context, "
                         "binding: two)")
    pr.add_argument("--n", type=positive_int, default=200, help="number of prompts (default 200)")
    pr.add_argument("--seed", type=nonneg_int, default=0, help="prompt seed (default 0)")
    pr.add_argument("--split", type=choice(LM_SPLITS, "split"), default="heldout",
                    help="heldout (default: held-out templates, training names), heldout_names (held-out "
                         "templates and names: the model cannot say those) or train")
    pr.add_argument("--out", required=True, help="new .jsonl file")
    _corpus_options(pr)
    pr.set_defaults(func=cmd_prompts)
    tr = lsub.add_parser("train", help="train a preset; checkpoints OUT/step{N}/ at Pythia's schedule",
                         description="Train (or resume: rerun the same command) a GPT-NeoX preset on the corpus. "
                                     "OUT gets run.json, step{N}/ save_pretrained checkpoints (model and "
                                     "tokenizer), state.pt, history.csv and summary.json.  A finished run is left "
                                     "as it is; a directory holding another run is refused, naming each "
                                     "differing field.")
    tr.add_argument("--preset", required=True, type=choice(LM_PRESETS, "model preset"),
                    help=f"model and training preset: {', '.join(LM_PRESETS)}")
    tr.add_argument("--out", required=True, help="output directory (new, or this run's to resume)")
    tr.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    tr.add_argument("--seed", type=nonneg_int, default=None, help="initialisation seed (default 0)")
    tr.add_argument("--device", type=device, default=None, help="torch device (default: the preset's)")
    tr.add_argument("--precision", type=choice(LM_PRECISIONS, "precision"), default=None,
                    help="fp32 or bf16 autocast (default: the preset's)")
    tr.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads of each process (default: the preset's; 1 with --processes above 1)")
    tr.add_argument("--processes", type=positive_int, default=None,
                    help="data-parallel processes on the CPU, each on its share of the batch's rows, at most the "
                         "batch size (default: the preset's)")
    tr.add_argument("--extend", action="store_true",
                    help="train the run in --out on to a larger --steps; refused, with the reason, when the "
                         "learning rates of the updates done depend on --steps (the presets' warm-up and cosine "
                         "decay do)")
    _corpus_options(tr)
    tr.add_argument("--json", action="store_true", help="print the summary as JSON")
    tr.set_defaults(func=cmd_train)
    st = lsub.add_parser("study", help="measure a finished run: learning curves, order of learning, truncation grid",
                         description="The study of one finished run (mechtrunc.studies.lm.study_run): learning "
                                     "curves of every checkpoint on held-out IOI, factual and generic 'to' prompts, "
                                     "the order of learning, the truncation grid with its corpus loss, the chosen "
                                     "truncations with bootstrap intervals, and where the ' the' association lives. "
                                     "Tables are cached in RUN/study/ (a rerun reads them; an interrupted study "
                                     "resumes); `mechtrunc report RUN` shows them.")
    st.add_argument("run", help="the run directory (the --out of `mechtrunc lm train`)")
    st.add_argument("--n", type=positive_int, default=200, help="prompts per prompt set and draw (default 200)")
    st.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    st.set_defaults(func=cmd_study)
    return lsub
