"""Evaluation prompt sets for the language model, as the project's :class:`~mechtrunc.PromptSet`.

Splits (:data:`SPLITS`):

- ``"heldout"`` (default): the held-out IOI templates of the
  :class:`~mechtrunc.models.lm.corpus.CorpusConfig` with training names in fresh combinations (and, for
  facts, fresh name-city pairs): the sentences were never trained on, the names were;
- ``"heldout_names"``: held-out templates *and* held-out names.  A model cannot say a name it
  never saw: with untied embeddings (Pythia's), the unembedding row of a token that never occurs
  as a target is only ever pushed down, so P(held-out name) stays below 1e-6 (docs/lm.md: the
  9,000-step study run says the IO 0.33 of the time with training names, 4e-7 with held-out
  ones); this split probes exactly that;
- ``"train"``: training templates and names (an in-distribution check).

Every prompt is in the format of the training stream: a story of the corpus opens with
``<|endoftext|>`` (the tokenizer's eos token, :class:`~mechtrunc.models.lm.corpus.Corpus`) and each of its
sentences starts with a space, so a prompt is ``<|endoftext|>`` then the sentence(s), e.g.
``"<|endoftext|> Mary walked to"`` (the text holds the special token; tokenizing it with
``add_special_tokens=False`` gives its id, so prompt files round-trip).

- :func:`lm_ioi_prompts`: the corpus' IOI templates with place and object filled in, handed to
  :func:`mechtrunc.ioi_prompts` (answer: the indirect object; competitors " the" and the subject);
- :func:`lm_fact_prompts`: "Mary lives in Oslo. <distractor sentences> Mary lives in" -> " Oslo",
  competitor " the" (the generic continuation of " in");
- :func:`lm_generic_prompts`: "Mary walked to" -> " the" (the generic association alone; competitor:
  another name of the split, the other continuation the corpus gives " to");
- :func:`lm_recall_prompts`: noisy recall in words, the toy's task: "Mary went to Paris. <distractor
  sentences> Mary went to" -> " Paris", competitors " the" (the generic association) and a city;
  ``k`` statements about distinct names in context (``k = 1``: task ``recall``, the other city is
  one absent from the context; ``k >= 2``: task ``binding``, the other city is another stated one,
  so telling them apart needs the name bound to its city);
- :func:`lm_binding_prompts`: :func:`lm_recall_prompts` with :data:`BINDING_K` statements (task ``binding``);
- :func:`lm_task_prompts`: one of these by task name (:data:`TASKS`: the tasks of the registry,
  :mod:`mechtrunc.tasks.registry`, with a language-model variant);
  :func:`run_prompts`: the default prompts of a language-model run (its own corpus' held-out
  prompts), what the lenses, patching and the study evaluate a run on;
- :func:`prompt_records`: a prompt set as records of a JSONL prompt file (``mechtrunc lm
  prompts``), which :func:`mechtrunc.load_prompts` and ``--task FILE`` read back unchanged.
"""

from __future__ import annotations

import os
import random
import re

import torch

from mechtrunc._choices import LM_SPLITS, task_names
from mechtrunc.models.lm import lexicon
from mechtrunc.models.lm.corpus import CorpusConfig
from mechtrunc.models.lm_run import LMRunDirectory, run_dir
from mechtrunc.core.prompts import PromptSet

__all__ = ["prompts_for_model", "uses_run_prompts", "SPLITS", "TASKS", "lm_ioi_prompts", "lm_fact_prompts", "lm_generic_prompts",
           "lm_recall_prompts", "lm_binding_prompts", "lm_task_prompts",
           "run_corpus", "run_prompts", "prompt_records"]

SPLITS = LM_SPLITS
#: statements in context of the ``binding`` prompts (``recall`` has one)
BINDING_K = 2
_SLOT = re.compile(r"\{([A-Z])\}")


def __getattr__(name: str):
    if name == "TASKS":  # generated from the task registry: the tasks with a language-model variant
        return task_names("lm")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _split(config: CorpusConfig | None, split: str) -> tuple[CorpusConfig, tuple[str, ...], tuple[str, ...]]:
    config = config if config is not None else CorpusConfig()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return config, config.names_for_training(), config.train_templates()
    templates = tuple(lexicon.IOI[i] for i in config.heldout_templates)
    return config, config.heldout_names if split == "heldout_names" else config.names_for_training(), templates


def _story_start(tokenizer) -> str:
    """The text that opens every story of the training stream: the tokenizer's eos token."""
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError("the tokenizer has no eos token: the language model's prompts open with it, as every "
                         "story of its corpus does (use mechtrunc.models.lm.tokenizer.run_tokenizer(config))")
    return str(eos)


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
        stem = _story_start(tokenizer) + " " + t[: t.rindex(" {A}.")]
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
        texts.append(_story_start(tokenizer) + stated + middle + stated[: stated.rindex(" ")])
        answers.append(" " + city)
        relations.append(fact[len("{A} "): fact.index(" {T}")])
    return _story_prompts(tokenizer, texts, answers, {"the": [" the"] * n}, "answers",
                          {"task": "factual", "relation": relations, "answer_text": answers, "split": split,
                           "seed": seed})


def _story_prompts(tokenizer, texts: list[str], answers: list[str], competitors: dict[str, list[str]], what: str,
                   meta: dict) -> PromptSet:
    """One item per prompt text, scored at its last token: ``answers`` and each competitor column
    (name -> one word per prompt) must be single tokens (``what`` names the answers in the error)."""
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    columns = [answers, *competitors.values()]
    ids = [[tokenizer.encode(w, add_special_tokens=False) for w in col] for col in columns]
    bad = sorted({w for col, got in zip(columns, ids) for w, x in zip(col, got) if len(x) != 1})
    if bad:
        raise ValueError(f"{what} {bad} are not single tokens under the tokenizer (use the lm tokenizer)")
    first = [[x[0] for x in col] for col in ids]
    return PromptSet(
        tokens=enc["input_ids"],
        rows=torch.arange(len(texts)),
        pos=enc["attention_mask"].sum(1) - 1,
        answer=torch.tensor(first[0]),
        competitors=torch.tensor(first[1:], dtype=torch.long).T.contiguous(),
        competitor_names=tuple(competitors),
        texts=texts,
        meta=meta,
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
        texts.append(_story_start(tokenizer) + _fill(stem, rng, names))
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


def _distractor_pool(config: CorpusConfig) -> list[str]:
    """The templates of the corpus' families that carry no task (generic and filler sentences),
    those with a nonzero rate; generic "to" sentences in their " the" form when ``to_the_share``
    is 1, in both forms otherwise."""
    pool = []
    if config.generic_to > 0:
        pool += [pair[0] for pair in lexicon.GENERIC_TO] + ([pair[1] for pair in lexicon.GENERIC_TO]
                                                            if config.to_the_share < 1 else [])
    for family, templates in (("generic_in", lexicon.GENERIC_IN), ("generic_of", lexicon.GENERIC_OF),
                              ("filler", lexicon.FILLER)):
        if getattr(config, family) > 0:
            pool += list(templates)
    return pool or list(lexicon.FILLER)


def lm_recall_prompts(tokenizer, config: CorpusConfig | None = None, n: int = 200, seed: int = 0,
                      split: str = "heldout", k: int = 1, distractors: int | None = None) -> PromptSet:
    """``n`` noisy-recall prompts in the format of the corpus' ``recall`` stories: ``k``
    statements "Mary went to Paris." about distinct names of ``split`` and distinct cities mixed in
    random order with ``distractors`` sentences of the corpus' task-free families (default: the
    rest of a story, ``sentences_per_story - k``), then the repeats, as a story ends: the queried
    statement's repeat cut after "went to", preceded by the full repeats of a random subset of the
    other statements.  Answer: its city; competitors ``the`` (" the", the generic association)
    and ``other``: with ``k >= 2`` another stated city (binding a name to its city tells them
    apart), with ``k = 1`` a city absent from the context (a baseline for copying *a* city)."""
    config, names, _ = _split(config, split)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    top = min(len(names), len(lexicon.CITIES)) - 1
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
        raise ValueError(f"k (statements in context) must be an integer in [1, {top}], got {k!r}")
    if distractors is None:
        distractors = max(0, config.sentences_per_story - k)
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise ValueError(f"distractors must be an integer >= 0, got {distractors!r}")
    rng = random.Random(seed)
    pool = _distractor_pool(config)
    texts, answers, others = [], [], []
    for i in range(n):
        statement = lexicon.RECALL[i % len(lexicon.RECALL)][0]
        who = rng.sample(list(names), k)
        cities = rng.sample(list(lexicon.CITIES), k + 1)
        rest = [x for x in names if x not in who]
        stated = [" " + statement.format(A=a, T=t) for a, t in zip(who, cities)]
        body = stated + [" " + _fill(rng.choice(pool), rng, rest) for _ in range(distractors)]
        rng.shuffle(body)
        before = [x for x in stated[1:] if rng.random() < 0.5]  # repeats that come before the query's
        query = stated[0][: stated[0].rindex(" ")]
        texts.append(_story_start(tokenizer) + "".join(body) + "".join(before) + query)
        answers.append(" " + cities[0])
        others.append(" " + cities[1 if k >= 2 else k])
    return _story_prompts(tokenizer, texts, answers, {"the": [" the"] * n, "other": others}, "cities",
                          {"task": "recall" if k == 1 else "binding", "k": k, "answer_text": answers,
                           "other_text": others, "split": split, "seed": seed})


def lm_binding_prompts(tokenizer, config: CorpusConfig | None = None, n: int = 200, seed: int = 0,
                       split: str = "heldout") -> PromptSet:
    """:func:`lm_recall_prompts` with :data:`BINDING_K` statements in context (task ``binding``)."""
    return lm_recall_prompts(tokenizer, config, n=n, seed=seed, split=split, k=BINDING_K)


def lm_task_prompts(task: str, tokenizer, config: CorpusConfig | None = None, n: int = 200, seed: int = 0,
                    split: str = "heldout") -> PromptSet:
    """The prompts of ``task`` of a corpus config, ``n`` of them, seeded: the language-model
    variant of a registered task (:data:`TASKS`; the built-in ones: :func:`lm_ioi_prompts`,
    :func:`lm_fact_prompts`, :func:`lm_generic_prompts`, :func:`lm_recall_prompts` (``recall``)
    and :func:`lm_binding_prompts`)."""
    if task not in task_names("lm"):
        raise ValueError(f"unknown language-model task {task!r}; valid: {', '.join(task_names('lm'))}")
    from mechtrunc.tasks.registry import task_builder

    return task_builder(task, "lm")(tokenizer, config, n=n, seed=seed, split=split)


def run_corpus(path) -> CorpusConfig:
    """The corpus config of a language-model run (its ``run.json``), given the run directory or
    one of its checkpoints."""
    from mechtrunc.models.lm.train import LMConfig

    return LMConfig.from_dict(LMRunDirectory(run_dir(path) or path).read_config()).corpus


def run_prompts(path, task: str = "ioi", n: int = 200, seed: int = 0, tokenizer=None,
                split: str = "heldout") -> PromptSet:
    """The default prompts of a language-model run: :func:`lm_task_prompts` of the run's own corpus
    (``run.json``; ``path`` is the run directory or one of its ``step{N}`` checkpoints), held-out
    split, in the training stream's format.  ``tokenizer`` defaults to
    :func:`mechtrunc.models.lm.tokenizer.run_tokenizer` of the run's corpus (the one every checkpoint holds).  The lenses,
    patching and the study (:func:`mechtrunc.studies.lm.lm_study_prompts`: its select and eval
    draws are seeds ``2 seed`` and ``2 seed + 1``) all evaluate a run on these."""
    corpus = run_corpus(path)
    if tokenizer is None:
        from mechtrunc.models.lm.tokenizer import run_tokenizer

        tokenizer = run_tokenizer(corpus)
    return lm_task_prompts(task, tokenizer, corpus, n=n, seed=seed, split=split)


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


def prompts_for_model(model, task: str | os.PathLike, tokenizer=None, n: int = 200, seed: int = 0) -> PromptSet:
    """The default prompts of ``task`` for the model at ``model`` (a path or hub id): a
    language-model run of ``mechtrunc lm train`` (the run directory or one of its ``step{N}``
    checkpoints) is evaluated on its own corpus' held-out prompts of a task with a language-model
    variant (:data:`TASKS`; :func:`run_prompts`, in the format it was trained on);
    anything else, or a prompt file as ``task``, on :func:`mechtrunc.tasks.prompts_for_task` with ``tokenizer``.
    What the lenses, patching and the truncation and checkpoint studies of the command line use."""
    if uses_run_prompts(model, task):
        return run_prompts(run_dir(model), str(task), n=n, seed=seed, tokenizer=tokenizer)
    if tokenizer is None:
        raise ValueError(f"the prompts of task {str(task)!r} for {model!r} need its tokenizer (tokenizer=None)")
    from mechtrunc.tasks.registry import prompts_for_task

    return prompts_for_task(task, tokenizer, n=n, seed=seed)


def uses_run_prompts(model, task: str | os.PathLike) -> bool:
    """Whether :func:`prompts_for_model` gives ``model`` its run's own prompts: ``model`` is a
    language-model run (or one of its checkpoints) and ``task`` one of its tasks."""
    return isinstance(model, (str, os.PathLike)) and str(task) in task_names("lm") and run_dir(model) is not None
