"""``mechtrunc lens vocab`` and ``mechtrunc lens logit``: the vocabulary lens of weight components
and the logit lens at every residual site (:mod:`mechtrunc.analysis.lens`).

MODEL is a toy run (``mechtrunc toy train`` / ``demo``), a linear-memory run (``mechtrunc memory
train``), a language-model run (``mechtrunc lm train``: its last checkpoint) or anything
:func:`mechtrunc.models.hf.load_model` reads (a hub id, a ``save_pretrained`` directory such as
``RUN/step200``)."""

from __future__ import annotations

import argparse
import json

from mechtrunc import _choices
from mechtrunc.cli.checks import (
    UsageError, choice, device, fraction, model_arg, model_kind, nonneg_int, positive_int, resolve_model,
)

__all__ = ["add_commands", "load_lens_model"]

# mechtrunc.analysis.lens.LENS_MATRICES and HEAD_MATRICES, written here to keep torch out of the
# argument checks (tests/test_lens.py checks they are equal)
_LENS_MATRICES = ("mlp.W_in", "mlp.W_out", "attn.W_O", "attn.OV", "W")
_HEAD_MATRICES = ("attn.W_O", "attn.OV")


def load_lens_model(args) -> dict:
    """``{"model", "kind", "itos", "prompts", "generic_data", "generic_count", "tokenizer"}`` for a
    lens command: the clean prompts to score and the data generic tokens are counted on (toy: the
    noisy training targets; memory: sampled targets; language models: every real token of the
    prompts, special tokens and padding masked out).  A language-model run (or one of its
    ``step{N}`` checkpoints) is scored on its own held-out prompts of ``--task`` ioi, factual or
    generic (:func:`mechtrunc.models.lm.prompts.run_prompts`, as ``patch`` and ``lm study``)."""
    kind, source, step = resolve_model(args.model, args.step)
    if kind == "toy":
        from mechtrunc.models.toy_training import load_run

        model, cfg, task = load_run(args.model, device=args.device)
        prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
        noisy = task.sample(cfg.test_size, seed=cfg.seed + 20_000).to_prompts(clean=False)
        return dict(model=model, kind=kind, itos=task.itos, prompts=prompts, generic_data=noisy,
                    generic_count="answers", tokenizer=None)
    if kind == "memory":
        import torch

        from mechtrunc.models.memory import load_memory_run

        model = load_memory_run(args.model).model
        _, targets = model.sample(4096, torch.Generator().manual_seed(0))
        return dict(model=model, kind=kind, itos=None, prompts=model.prompts(), generic_data=targets,
                    generic_count="answers", tokenizer=None)
    from mechtrunc.models.lm.prompts import prompts_for_model
    from mechtrunc.models.lm_run import run_dir
    from mechtrunc.models.hf import load_model

    model = load_model(source, step=step, device=args.device, **({"local_files_only": True} if run_dir(source) else {}))
    # a language-model run: its own prompts, as patch and lm study
    prompts = prompts_for_model(source, args.task, model.tokenizer, n=args.n, seed=args.seed)
    return dict(model=model, kind=kind, itos=None, prompts=prompts, generic_data=prompts, generic_count="tokens",
                tokenizer=model.tokenizer)


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def cmd_vocab(args) -> int:
    if args.head is not None and args.matrix not in _HEAD_MATRICES:
        raise UsageError(f"--head applies only to {' and '.join(_HEAD_MATRICES)}, not to {args.matrix}")
    if args.matrix == "W" and args.layer not in (None, 0):
        raise UsageError(f"the linear memory has one layer (0), got --layer {args.layer}")
    loaded = load_lens_model(args)
    from mechtrunc.analysis.lens import generic_tokens, rank_generic_components, vocab_lens

    model, itos = loaded["model"], loaded["itos"]
    if args.generic:
        generic = [int(t) if t.isdigit() else t for t in args.generic]
        found = None
    else:
        found = generic_tokens(loaded["generic_data"], k=args.n_generic, tokenizer=loaded["tokenizer"],
                               count=loaded["generic_count"])
        generic = found["token"].tolist()
    ranked = rank_generic_components(model, args.matrix, args.layer, generic, head=args.head, itos=itos)
    best = ranked.head(args.top)
    frames = []
    import pandas as pd

    for (layer, head), group in best.groupby(["layer", "head"], sort=False, dropna=False):
        frames.append(vocab_lens(model, args.matrix, int(layer), k=args.k, itos=itos,
                                 head=None if pd.isna(head) else int(head),
                                 components=[int(c) for c in group["component"]]))

    lens = pd.concat(frames, ignore_index=True)
    decode = (lambda t: itos[t] if t < len(itos) else f"#{t}") if itos is not None else \
        (loaded["tokenizer"].decode if loaded["tokenizer"] is not None else (lambda t: f"#{t}"))
    gen_ids = ranked.attrs["generic"]
    if args.json:
        print(json.dumps({"model": args.model, "matrix": args.matrix, "layer": args.layer, "head": args.head,
                          "generic": [{"token": t, "token_str": decode(t if isinstance(t, int) else int(t))} for t in gen_ids],
                          "generic_counts": _records(found) if found is not None else None,
                          "ranking": _records(best), "lens": _records(lens)}))
        return 0
    print("generic tokens: " + ", ".join(f"{decode(int(t))!r} ({int(t)})" for t in gen_ids)
          + (" (most frequent in the data)" if found is not None else ""))
    print(f"components of {args.matrix} that promote them most (of {len(ranked)}):")
    cols = ["layer", "head", "component", "singular_value", "generic_score", "generic_z", "generic_rank", "top_str"]
    if args.matrix not in _HEAD_MATRICES:
        cols.remove("head")
    print(best[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nvocabulary lens (top / bottom {args.k} tokens of each component's output direction):")
    for (layer, head, comp), g in lens.groupby(["layer", "head", "component"], sort=False, dropna=False):
        where = f"L{layer}" + ("" if pd.isna(head) else f"H{head}") + f" #{comp}"
        for side in ("top", "bottom"):
            s = g[g["side"] == side]
            print(f"  {where:>10} {side:>6}: " + "  ".join(f"{t!r} {p:+.2f}" for t, p in zip(s["token_str"], s["push"])))
    return 0


def _interventions(args) -> dict:
    import mechtrunc as mt

    runs = {"full model": []}
    for matrix, layer, keep in args.truncate or []:
        layer = int(layer)
        runs[f"{matrix} L{layer} keep {keep:g}"] = [mt.Truncate(matrix, layer=layer, keep=keep, rule=args.rule)]
    for layer in args.remove_ffn or []:
        runs[f"FFN L{layer} removed"] = [mt.Ablate("mlp", layer=layer)]
    return runs


def _truncation(text: str):
    """``MATRIX:LAYER:KEEP``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected MATRIX:LAYER:KEEP (e.g. mlp.W_in:1:0.1), got {text!r}")
    matrix = choice(_choices.MATRICES, "matrix", "matrices")(parts[0])
    return matrix, nonneg_int(parts[1]), fraction(parts[2])


def cmd_logit(args) -> int:
    if model_kind(args.model) == "memory":
        raise UsageError("the logit lens reads a Transformer's residual stream; the linear memory has none "
                         "(use `mechtrunc lens vocab` on it)")
    loaded = load_lens_model(args)
    from mechtrunc.analysis.lens import logit_lens_compare

    runs = _interventions(args)
    df = logit_lens_compare(loaded["model"], loaded["prompts"], runs, batch_size=args.batch_size)
    names = loaded["prompts"].competitor_names
    cols = ["label", "layer", "site", "accuracy", "p_answer", *[f"p_{c}" for c in names]]
    if args.json:
        print(json.dumps({"model": args.model, "resid_mid": df.attrs["resid_mid"], "n_items": len(loaded["prompts"]),
                          "rows": _records(df)}))
        return 0
    print(f"logit lens on {len(loaded['prompts'])} items (resid_mid: {df.attrs['resid_mid']}):")
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=model_arg, help="toy run, memory run or language-model run directory (its last "
                   "checkpoint, or --step), a save_pretrained directory (e.g. RUN/step200) or a hub id")
    p.add_argument("--step", type=nonneg_int, default=None,
                   help="language-model runs and hub ids: the training checkpoint (RUN/step{N}, hub revision step{N})")
    p.add_argument("--task", default="ioi", help=f"language models: {_choices.task_words('prompts')} or a CSV/JSONL "
                   "prompt file (default ioi); toy and memory runs use their own clean test set")
    p.add_argument("--n", type=positive_int, default=200, help="number of task prompts (language models)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the task prompts")
    p.add_argument("--device", type=device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print the tables as JSON")


def add_commands(sub) -> None:
    """Add the ``lens`` group to the top-level subparsers ``sub``."""
    lens = sub.add_parser("lens", help="vocabulary lens of weight components, logit lens of the residual stream",
                          description="Read weight components and residual-stream sites through the unembedding.")
    lens_sub = lens.add_subparsers(dest="lens_command", metavar="SUBCOMMAND")
    lens_sub.required = True
    v = lens_sub.add_parser("vocab", help="which components promote the generic tokens, and what each one writes",
                            description="Rank the singular components of a matrix by how much they promote the "
                                        "generic tokens (the most frequent tokens of the data unless --generic is "
                                        "given), and print the tokens the best ones promote and suppress.")
    _common(v)
    v.add_argument("--matrix", type=choice(_LENS_MATRICES, "matrix", "matrices"), default="mlp.W_out",
                   help=f"matrix: {', '.join(_LENS_MATRICES)} (W: the linear memory's; default mlp.W_out)")
    v.add_argument("--layer", type=nonneg_int, default=None, help="0-based layer (default: every layer)")
    v.add_argument("--head", type=nonneg_int, default=None,
                   help=f"one head of {' / '.join(_HEAD_MATRICES)} (default: all)")
    v.add_argument("--k", type=positive_int, default=10, help="tokens per side of each component (default 10)")
    v.add_argument("--top", type=positive_int, default=3, help="components to show through the lens (default 3)")
    v.add_argument("--generic", nargs="+", metavar="TOKEN", default=None,
                   help="generic tokens (ids or single-token strings); default: the most frequent ones in the data")
    v.add_argument("--n-generic", type=positive_int, default=1, help="how many frequent tokens are generic (default 1)")
    v.set_defaults(func=cmd_vocab)
    lg = lens_sub.add_parser("logit", help="logit lens at every layer's resid_pre / resid_mid / resid_post",
                             description="P(answer) and P(competitor) read off the residual stream at every site, "
                                         "for the full model and for each truncation or removal given.")
    _common(lg)
    lg.add_argument("--truncate", type=_truncation, action="append", metavar="MATRIX:LAYER:KEEP",
                    help="add a run with this LASER truncation (repeatable), e.g. mlp.W_in:1:0.1")
    lg.add_argument("--remove-ffn", type=nonneg_int, action="append", metavar="LAYER",
                    help="add a run with this layer's FFN removed (repeatable)")
    lg.add_argument("--rule", choices=_choices.RULES, default=_choices.DEFAULT_RULE,
                    help=f"rank rule of --truncate (default {_choices.DEFAULT_RULE}; authors: the paper's released "
                         "code, as its toy table)")
    lg.add_argument("--batch-size", type=positive_int, default=64, help="prompts per forward pass")
    lg.set_defaults(func=cmd_logit)
