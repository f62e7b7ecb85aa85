"""Evaluation prompt sets for the language model, as the project's :class:`~mechtrunc.PromptSet`.

Splits (:data:`SPLITS`):

- ``"heldout"`` (default): the held-out IOI templates of the
  :class:`~mechtrunc.lm.corpus.CorpusConfig` with training names in fresh combinations (and, for
  facts, fresh name-city pairs): the sentences were never trained on, the names were;
- ``"heldout_names"``: held-out templates *and* held-out names.  A model cannot say a name it
  never saw: with untied embeddings (Pythia's), the unembedding row of a token that never occurs
  as a target is only ever pushed down, so P(held-out name) stays below 1e-6 (docs/lm.md: the
  9,000-step study run says the IO 0.33 of the time with training names, 4e-7 with held-out
  ones); this split probes exactly that;
- ``"train"``: training templates and names (an in-distribution check).  Prompts start with a space,
as every sentence of the corpus does.

- :func:`lm_ioi_prompts`: the corpus' IOI templates with place and object filled in, handed to
  :func:`mechtrunc.ioi_prompts` (answer: the indirect object; competitors " the" and the subject);
- :func:`lm_fact_prompts`: "Mary lives in Oslo. <distractor sentences> Mary lives in" -> " Oslo",
  competitor " the" (the generic continuation of " in");
- :func:`lm_generic_prompts`: "Mary walked to" -> " the" (the generic association alone; competitor:
  another name of the split, the other continuation the corpus gives " to");
- :func:`prompt_records`: a prompt set as records of a JSONL prompt file (``mechtrunc lm
  prompts``), which :func:`mechtrunc.load_prompts` and ``--task FILE`` read back unchanged.
"""

from __future__ import annotations

import random
import re

import torch

from mechtrunc._choices import LM_SPLITS
from mechtrunc.lm import lexicon
from mechtrunc.lm.corpus import CorpusConfig
from mechtrunc.prompts import PromptSet

__all__ = ["SPLITS", "lm_ioi_prompts", "lm_fact_prompts", "lm_generic_prompts", "prompt_records"]

SPLITS = LM_SPLITS
_SLOT = re.compile(r"\{([A-Z])\}")


def _split(config: CorpusConfig | None, split: str) -> tuple[CorpusConfig, tuple[str, ...], tuple[str, ...]]:
    config = config if config is not None else CorpusConfig()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return config, config.names_for_training(), config.train_templates()
    templates = tuple(lexicon.IOI[i] for i in config.heldout_templates)
    return config, config.heldout_names if split == "heldout_names" else config.names_for_training(), templates


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


def lm_generic_prompts(tokenizer, config: CorpusConfig | None = None, n: int = 200, seed: int = 0,
                       split: str = "heldout") -> PromptSet:
    """``n`` prompts of the generic "to" family cut before " the" ("Mary walked to" -> " the"),
    names from ``split``; competitor ``name``: another name of the split.  Measures the generic
    association alone: its ``p_answer`` is P(" the") after " to"."""
    config, names, _ = _split(config, split)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    texts, others = [], []
    for i in range(n):
        the_form = lexicon.GENERIC_TO[i % len(lexicon.GENERIC_TO)][0]
        stem = " " + the_form[: the_form.index(" to the ") + len(" to")]
        texts.append(_fill(stem, rng, names))
        others.append(" " + rng.choice([x for x in names if " " + x not in texts[-1]]))
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    (the_id,) = tokenizer.encode(" the", add_special_tokens=False)
    other_ids = [tokenizer.encode(x, add_special_tokens=False) for x in others]
    return PromptSet(
        tokens=enc["input_ids"],
        rows=torch.arange(n),
        pos=enc["attention_mask"].sum(1) - 1,
        answer=torch.full((n,), the_id, dtype=torch.long),
        competitors=torch.tensor([ids[:1] for ids in other_ids], dtype=torch.long),
        competitor_names=("name",),
        texts=texts,
        meta={"task": "generic", "split": split, "seed": seed},
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
