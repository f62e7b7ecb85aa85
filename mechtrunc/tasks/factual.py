"""Factual-recall prompts ("Madrid is located in" -> " Spain") for Pythia-style causal LMs.

The built-in facts live in ``mechtrunc/data/factual_recall.csv`` (columns ``relation``,
``prompt``, ``answer``); every answer is one token, leading space included, under Pythia's
GPT-NeoX tokenizer.  The competitor is the generic continuation " the".
"""

from __future__ import annotations

import csv
import io
import warnings
from functools import lru_cache
from importlib import resources

import torch

from mechtrunc.core.prompts import PromptSet
from mechtrunc.tasks._tokens import required_token_id, single_token_id, tokenize_prompts, tokenizer_name

__all__ = ["factual_facts", "factual_relations", "factual_prompts"]

FactualItem = tuple[str, str, str]  # (relation, prompt, answer)


@lru_cache(maxsize=1)
def factual_facts() -> tuple[FactualItem, ...]:
    """The built-in facts as ``(relation, prompt, answer)`` triples."""
    text = resources.files("mechtrunc.data").joinpath("factual_recall.csv").read_text()
    return tuple((r["relation"], r["prompt"], r["answer"]) for r in csv.DictReader(io.StringIO(text)))


def factual_relations() -> tuple[str, ...]:
    """The relations of the built-in facts, in file order."""
    return tuple(dict.fromkeys(rel for rel, _, _ in factual_facts()))


def factual_prompts(tokenizer, relations: list[str] | None = None) -> PromptSet:
    """The built-in factual-recall prompts, one read item per prompt at its last real token.

    Args:
        tokenizer: a Hugging Face tokenizer (the model's own).  Prompts are encoded with no
            special tokens and right-padded with its pad (else eos) id.
        relations: keep only these relations (see :func:`factual_relations`); default all.

    Facts whose answer is not a single token under ``tokenizer`` are dropped with a warning
    naming them; if none remain, ValueError.

    Returns:
        A :class:`PromptSet` with competitor " the" (``competitor_names=("the",)``), ``texts``
        and ``meta`` lists ``relation`` and ``answer_text``.
    """
    known = factual_relations()
    if relations is not None:
        unknown = [r for r in relations if r not in known]
        if unknown or not relations:
            raise ValueError(f"unknown relation(s) {unknown or relations!r}; valid relations: {list(known)}")
    facts = [f for f in factual_facts() if relations is None or f[0] in relations]

    kept: list[tuple[FactualItem, int]] = []
    dropped: list[FactualItem] = []
    for fact in facts:
        tid = single_token_id(tokenizer, fact[2])
        if tid is None:
            dropped.append(fact)
        else:
            kept.append((fact, tid))
    if dropped:
        warnings.warn(
            f"dropping {len(dropped)} fact(s) whose answer is not a single token under "
            f"{tokenizer_name(tokenizer)}: " + ", ".join(f"{p!r} -> {a!r}" for _, p, a in dropped),
            stacklevel=2,
        )
    if not kept:
        raise ValueError(
            f"no factual prompt has a single-token answer under {tokenizer_name(tokenizer)} "
            f"(relations {list(relations) if relations is not None else list(known)})"
        )
    the_id = required_token_id(tokenizer, " the", "competitor")

    texts = [f[1] for f, _ in kept]
    tokens, pos = tokenize_prompts(tokenizer, texts)
    answer = torch.tensor([tid for _, tid in kept], dtype=torch.long)
    return PromptSet(
        tokens=tokens,
        rows=torch.arange(len(kept)),
        pos=pos,
        answer=answer,
        competitors=torch.full((len(kept), 1), the_id, dtype=torch.long),
        competitor_names=("the",),
        texts=texts,
        meta={
            "task": "factual",
            "relation": [f[0] for f, _ in kept],
            "answer_text": [f[2] for f, _ in kept],
        },
    )
