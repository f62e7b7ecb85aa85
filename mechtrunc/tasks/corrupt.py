"""Corrupted twins of the built-in tasks, for activation and path patching.

Each builder returns a ``(clean, corrupted)`` pair of :class:`~mechtrunc.core.prompts.PromptSet`
values of the same shape (same number of sequences, same length, same read items: the
corrupted set reads the *clean* answer and competitors, so a metric measured on it says how much
of the clean behaviour survives).  Both carry the positions of the task's roles, one per
sequence, in ``meta["roles"]`` (names) and ``meta["role_pos"]`` (a tuple per sequence); a
patching scan reads them as its position groups (:meth:`PromptSet.role_positions`).

- :func:`ioi_abc`: IOI's standard corruption, the "ABC" distribution (Wang et al. 2022): the
  indirect object and both mentions of the subject replaced by three different names, so no
  name is repeated.  Roles ``io``, ``s1``, ``s2``, ``end``.
- :func:`factual_swap`: factual recall with another subject: each prompt paired with a prompt
  of the same relation, the same token length and a different answer.  Roles ``subject`` (the
  last token where the two differ) and ``end``.
- :func:`recall_pair`: the toy task with the trigger's earlier occurrence replaced: one read
  item per sequence at the trigger's second occurrence, and in the corrupted sequence the first
  occurrence becomes another token, so the in-context pair "trigger, output" is gone.  Roles
  ``trigger1`` (the replaced occurrence), ``after1`` (the output token after it), ``end`` (the
  second occurrence, where the answer is read).
- :func:`city_swap`: a language model's noisy-recall prompts
  (:func:`mechtrunc.models.lm.prompts.lm_recall_prompts`) with the stated city replaced by the
  ``other`` competitor's city, so the context no longer holds the answer.  Roles ``city`` (the
  stated city's first occurrence) and ``end``.
"""

from __future__ import annotations

import random
import re

import torch
from torch import Tensor

from mechtrunc.core.prompts import PromptSet
from mechtrunc.tasks._tokens import tokenize_prompts

__all__ = ["ioi_abc", "factual_swap", "recall_pair", "city_swap"]


def _with_roles(p: PromptSet, tokens: Tensor, roles: tuple[str, ...], role_pos: list[tuple[int, ...]],
                texts: list[str] | None, extra: dict | None = None) -> PromptSet:
    meta = {**p.meta, "roles": roles, "role_pos": role_pos, **(extra or {})}
    return PromptSet(tokens, p.rows.clone(), p.pos.clone(), p.answer.clone(), p.competitors.clone(),
                     p.competitor_names, texts, meta)


def _token_pos(tokenizer, text: str, char_start: int) -> int:
    """Index of the token starting the word at ``char_start`` (its leading space belongs to it)."""
    prefix = text[:char_start]
    if prefix.endswith(" "):
        prefix = prefix[:-1]
    return len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0


def ioi_abc(prompts: PromptSet, tokenizer, seed: int = 0, max_tries: int = 50) -> tuple[PromptSet, PromptSet]:
    """IOI prompts (:func:`mechtrunc.ioi_prompts` or the language model's IOI prompts) and their
    ABC corruption: in each prompt the indirect object, the subject's first and its second mention
    become three names drawn (seeded) from the set's names, all different from each other and
    from the originals, with the prompt's token length unchanged (names are redrawn until it is).
    """
    meta = prompts.meta
    if meta.get("task") != "ioi" or prompts.texts is None or "io" not in meta or "subject" not in meta:
        raise ValueError("ioi_abc needs IOI prompts (meta task 'ioi' with texts, io and subject), "
                         f"got a prompt set of task {meta.get('task')!r}")
    names = list(meta.get("names") or dict.fromkeys([*meta["io"], *meta["subject"]]))
    if len(names) < 5:
        raise ValueError(f"the ABC corruption needs at least 5 names (2 originals + 3 new), the set has {len(names)}")
    rng = random.Random(seed)
    lengths = prompts.pos + 1  # one read item per prompt, at its last real token
    texts, role_pos, clean_role_pos = [], [], []
    for i, text in enumerate(prompts.texts):
        io, subj = meta["io"][i], meta["subject"][i]
        spans = sorted([(m.start(), "io") for m in re.finditer(rf"\b{re.escape(io)}\b", text)]
                       + [(m.start(), "s") for m in re.finditer(rf"\b{re.escape(subj)}\b", text)])
        if [k for _, k in spans].count("io") != 1 or [k for _, k in spans].count("s") != 2:
            raise ValueError(f"IOI prompt {i} does not mention its indirect object once and its subject twice: {text!r}")
        s_starts = [c for c, k in spans if k == "s"]
        io_start = next(c for c, k in spans if k == "io")
        clean_role_pos.append(tuple(_token_pos(tokenizer, text, c) for c in (io_start, *s_starts)) + (int(prompts.pos[i]),))
        pool = [n for n in names if n not in (io, subj)]
        for _ in range(max_tries):
            a, b, c = rng.sample(pool, 3)
            new = {io_start: (io, a), s_starts[0]: (subj, b), s_starts[1]: (subj, c)}
            out, last, moved = "", 0, {}
            for start in sorted(new):
                old, repl = new[start]
                out += text[last:start]
                moved[start] = len(out)  # where the new name starts in the corrupted text
                out += repl
                last = start + len(old)
            cand = out + text[last:]
            if len(tokenizer(cand, add_special_tokens=False)["input_ids"]) == int(lengths[i]):
                break
        else:
            raise ValueError(f"no ABC names keep IOI prompt {i} at {int(lengths[i])} tokens after {max_tries} draws: {text!r}")
        texts.append(cand)
        role_pos.append(tuple(_token_pos(tokenizer, cand, moved[c]) for c in (io_start, *s_starts))
                        + (int(prompts.pos[i]),))
    tokens, _ = tokenize_prompts(tokenizer, texts)
    tokens = _fit(tokens, prompts.tokens)
    roles = ("io", "s1", "s2", "end")
    return (_with_roles(prompts, prompts.tokens, roles, clean_role_pos, list(prompts.texts)),
            _with_roles(prompts, tokens, roles, role_pos, texts, {"corruption": "ABC"}))


def _fit(tokens: Tensor, like: Tensor) -> Tensor:
    """``tokens`` right-padded (with ``like``'s pad) or cut to ``like``'s width."""
    if tokens.shape[1] >= like.shape[1]:
        return tokens[:, : like.shape[1]].clone()
    pad = like[:, -1:].expand(-1, like.shape[1] - tokens.shape[1])
    return torch.cat([tokens, pad], 1)


def factual_swap(prompts: PromptSet, tokenizer, seed: int = 0) -> tuple[PromptSet, PromptSet]:
    """Factual prompts (:func:`mechtrunc.factual_prompts` or the language model's facts) paired
    with another subject: each prompt's twin is a prompt of the same relation (``meta["relation"]``
    when present, else any), the same token length and another answer, drawn seeded.  Prompts
    with no such twin are left out of both sets (the count is in ``meta["dropped"]``); none left is
    a ValueError."""
    if prompts.texts is None:
        raise ValueError("factual_swap needs prompts with texts (factual_prompts or the language model's facts)")
    rng = random.Random(seed)
    n = prompts.n_sequences
    rel = prompts.meta.get("relation") or [None] * n
    length = prompts.pos + 1
    answer = prompts.answer
    keep, twin = [], []
    for i in range(n):
        cands = [j for j in range(n) if j != i and rel[j] == rel[i] and int(length[j]) == int(length[i])
                 and int(answer[j]) != int(answer[i])]
        if cands:
            keep.append(i)
            twin.append(rng.choice(cands))
    if not keep:
        raise ValueError("no factual prompt has a twin of the same relation and token length with another answer")
    clean = prompts.subset_sequences(torch.tensor(keep))
    tokens = prompts.tokens[torch.tensor(twin)].clone()
    subj = []
    for k in range(len(keep)):
        differ = (clean.tokens[k] != tokens[k]).nonzero()
        subj.append((int(differ.max()) if differ.numel() else 0, int(clean.pos[k])))
    roles = ("subject", "end")
    texts = [prompts.texts[j] for j in twin]
    extra = {"dropped": n - len(keep)}
    return (_with_roles(clean, clean.tokens, roles, subj, clean.texts, extra),
            _with_roles(clean, tokens, roles, subj, texts, {**extra, "corruption": "other subject"}))


def recall_pair(task, n: int = 256, seed: int = 10_000) -> tuple[PromptSet, PromptSet]:
    """The toy task's clean test sequences (:meth:`RecallTask.test_set`, ``n`` of them, seeded)
    with one read item each, at the trigger's second occurrence, and their corruption: the
    trigger's first occurrence replaced by a token drawn (seeded) among the non-trigger,
    non-noise tokens.  Sequences whose trigger occurs fewer than twice are left out
    (``meta["dropped"]``).  With several triggers (``k > 1``) the first trigger of each
    sequence is used."""
    batch = task.test_set(n, seed=seed)
    trig = batch.triggers[:, 0]
    is_t = batch.inputs == trig[:, None]
    count = is_t.long().cumsum(1) * is_t
    first = torch.where(count == 1, 1, 0).argmax(1)
    second = torch.where(count == 2, 1, 0).argmax(1)
    ok = (count == 2).any(1) & (first + 1 < second)
    idx = ok.nonzero().squeeze(1)
    if idx.numel() == 0:
        raise ValueError("no test sequence holds its trigger twice: use longer sequences")
    g = torch.Generator().manual_seed(seed)
    tokens = batch.inputs[idx].clone()
    corrupted = tokens.clone()
    V = task.base_vocab
    banned = torch.zeros(len(idx), V + 1, dtype=torch.bool)
    banned[torch.arange(len(idx))[:, None], batch.triggers[idx]] = True
    banned[:, min(task.config.noise_id, V)] = True
    scores = torch.rand(len(idx), V + 1, generator=g)
    scores[banned] = -1.0
    scores[:, V] = -1.0  # the extra noise id (if any) is never drawn either
    repl = scores.argmax(1)
    f, s = first[idx], second[idx]
    corrupted[torch.arange(len(idx)), f] = repl
    answer = batch.clean_targets()[idx, s]
    clean = PromptSet(tokens, torch.arange(len(idx)), s.clone(), answer,
                      torch.full_like(answer, batch.noise_id).unsqueeze(-1), ("noise",),
                      meta={"task": "recall", "dropped": int(n - len(idx))})
    role_pos = [(int(a), int(a) + 1, int(b)) for a, b in zip(f, s)]
    roles = ("trigger1", "after1", "end")
    return (_with_roles(clean, tokens, roles, role_pos, None),
            _with_roles(clean, corrupted, roles, role_pos, None, {"corruption": "first trigger replaced"}))


def city_swap(prompts: PromptSet) -> tuple[PromptSet, PromptSet]:
    """Recall prompts (one read item per sequence, an ``other`` competitor that is a single token
    absent from the context, as :func:`mechtrunc.models.lm.prompts.lm_recall_prompts` with one
    statement builds) and their corruption: every occurrence of the answer token before the read
    position replaced by the ``other`` token, so the stated city is another one.  Sequences whose
    context does not hold the answer token are left out of both (``meta["dropped"]``)."""
    if "other" not in prompts.competitor_names:
        raise ValueError(f"city_swap needs recall prompts with an 'other' competitor; these have "
                         f"{', '.join(prompts.competitor_names)}")
    if len(prompts) != prompts.n_sequences or not torch.equal(prompts.rows.cpu(), torch.arange(prompts.n_sequences)):
        raise ValueError("city_swap needs one read item per sequence (recall prompts)")
    j = list(prompts.competitor_names).index("other")
    tokens = prompts.tokens.cpu()
    before = torch.arange(tokens.shape[1])[None] < prompts.pos.cpu()[:, None]
    hit = (tokens == prompts.answer.cpu()[:, None]) & before
    keep = hit.any(1).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError("no recall prompt states its answer in the context")
    clean = prompts.subset_sequences(keep)
    hit = hit[keep]
    corrupted = torch.where(hit, clean.competitors[:, j].cpu()[:, None], clean.tokens.cpu())
    role_pos = [(int(h.nonzero()[0]), int(p)) for h, p in zip(hit, clean.pos.cpu())]
    extra = {"dropped": prompts.n_sequences - int(keep.numel())}
    return (_with_roles(clean, clean.tokens.clone(), ("city", "end"), role_pos, clean.texts, extra),
            _with_roles(clean, corrupted, ("city", "end"), role_pos, None, {**extra, "corruption": "other city"}))
