"""Evaluation prompt sets for the language model, as the project's :class:`~mechtrunc.PromptSet`.

``split="heldout"`` (default) uses only what training never saw: the held-out names and, for IOI,
the held-out templates of the :class:`~mechtrunc.lm.corpus.CorpusConfig`.  ``split="train"``
uses the training names and templates (an in-distribution check).  Prompts start with a space,
as every sentence of the corpus does.

- :func:`lm_ioi_prompts`: the corpus' IOI templates with place and object filled in, handed to
  :func:`mechtrunc.ioi_prompts` (answer: the indirect object; competitors " the" and the subject);
- :func:`lm_fact_prompts`: "Sarah lives in Oslo. <distractor sentences> Sarah lives in" -> " Oslo",
  competitor " the" (the generic continuation of " in");
- :func:`prompt_records`: a prompt set as records of a JSONL prompt file (``mechtrunc lm
  prompts``), which :func:`mechtrunc.load_prompts` and ``--task FILE`` read back unchanged.
"""

from __future__ import annotations

import random
import re

import torch

from mechtrunc.lm import lexicon
from mechtrunc.lm.corpus import CorpusConfig
from mechtrunc.prompts import PromptSet

__all__ = ["SPLITS", "lm_ioi_prompts", "lm_fact_prompts", "prompt_records"]

SPLITS = ("heldout", "train")
_SLOT = re.compile(r"\{([A-Z])\}")


def _split(config: CorpusConfig | None, split: str) -> tuple[CorpusConfig, tuple[str, ...], tuple[str, ...]]:
    config = config if config is not None else CorpusConfig()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "heldout":
        templates = tuple(lexicon.IOI[i] for i in config.heldout_templates)
        return config, config.heldout_names, templates
    return config, config.names_for_training(), config.train_templates()


def _fill(template: str, rng: random.Random, names, **fixed: str) -> str:
    """``template`` with its slots filled: ``fixed`` values first, names distinct, words at random."""
    letters = list(dict.fromkeys(_SLOT.findall(template)))
    picked = iter(rng.sample([n for n in names if n not in fixed.values()],
                             sum(1 for x in letters if x in lexicon.NAME_SLOTS and x not in fixed)))
    values = {}
    for x in letters:
        if x in fixed:
            values[x] = fixed[x]
        elif x in lexicon.NAME_SLOTS:
            values[x] = next(picked)
        else:
            values[x] = rng.choice(lexicon.SLOTS[x])
    return template.format(**values)


def lm_ioi_prompts(tokenizer, config: CorpusConfig | None = None, n: int = 200, seed: int = 0,
                   split: str = "heldout", fillings: int = 4) -> PromptSet:
    """``n`` IOI prompts from the corpus' templates (each filled with ``fillings`` seeded
    place/object choices) and names of ``split``, built by :func:`mechtrunc.ioi_prompts`."""
    from mechtrunc.tasks.ioi import ioi_prompts

    config, names, templates = _split(config, split)
    if not templates:
        raise ValueError(f"the corpus config holds out no IOI template (heldout_templates={list(config.heldout_templates)}); "
                         "give some, or use split='train'")
    if fillings < 1:
        raise ValueError(f"fillings must be >= 1, got {fillings}")
    rng = random.Random(seed)
    filled = []
    for t in templates:
        stem = " " + t[: t.rindex(" {A}.")]
        for _ in range(fillings):
            filled.append(_fill(stem, rng, names, A="{A}", B="{B}"))
    ps = ioi_prompts(tokenizer, n=n, seed=seed, names=list(names), templates=list(dict.fromkeys(filled)))
    ps.meta["split"] = split
    return ps


def lm_fact_prompts(tokenizer, config: CorpusConfig | None = None, n: int = 200, seed: int = 0,
                    split: str = "heldout", distractors: int = 3) -> PromptSet:
    """``n`` factual-recall prompts: a fact about a name of ``split``, ``distractors`` sentences
    (generic and filler families, other names), then the fact's prefix.  Answer: the city;
    competitor: " the"."""
    config, names, _ = _split(config, split)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if distractors < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors}")
    rng = random.Random(seed)
    pool = [t for pair in lexicon.GENERIC_TO for t in pair] + [*lexicon.GENERIC_IN, *lexicon.GENERIC_OF, *lexicon.FILLER]
    texts, answers, relations = [], [], []
    for i in range(n):
        fact = lexicon.FACTS[i % len(lexicon.FACTS)]
        who, city = rng.choice(names), rng.choice(lexicon.CITIES)
        others = [x for x in names if x != who]
        middle = "".join(" " + _fill(rng.choice(pool), rng, others) for _ in range(distractors))
        stated = " " + fact.format(A=who, T=city)
        texts.append(stated + middle + stated[: stated.rindex(" ")])
        answers.append(" " + city)
        relations.append(fact[len("{A} "): fact.index(" {T}")])
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    answer_ids = [tokenizer.encode(a, add_special_tokens=False) for a in answers]
    bad = sorted({a for a, ids in zip(answers, answer_ids) if len(ids) != 1})
    if bad:
        raise ValueError(f"answers {bad} are not single tokens under the tokenizer (use the lm tokenizer)")
    (the_id,) = tokenizer.encode(" the", add_special_tokens=False)
    return PromptSet(
        tokens=enc["input_ids"],
        rows=torch.arange(n),
        pos=enc["attention_mask"].sum(1) - 1,
        answer=torch.tensor([ids[0] for ids in answer_ids]),
        competitors=torch.full((n, 1), the_id, dtype=torch.long),
        competitor_names=("the",),
        texts=texts,
        meta={"task": "factual", "relation": relations, "answer_text": answers, "split": split, "seed": seed},
    )


def prompt_records(prompts: PromptSet, tokenizer) -> list[dict]:
    """One record per item of a one-item-per-prompt set: ``prompt``, ``answer``, ``competitors``
    (decoded tokens) and the per-item ``meta`` lists, the format of :func:`mechtrunc.load_prompts`."""
    if prompts.texts is None or len(prompts) != prompts.n_sequences:
        raise ValueError("prompt_records needs a prompt set with texts and one item per prompt")
    n = len(prompts)
    extra = {k: v for k, v in prompts.meta.items() if isinstance(v, list) and len(v) == n}
    return [{"prompt": prompts.texts[int(prompts.rows[i])], "answer": tokenizer.decode(prompts.answer[i]),
             "competitors": [tokenizer.decode(c) for c in prompts.competitors[i]],
             **{k: v[i] for k, v in extra.items()}} for i in range(n)]
