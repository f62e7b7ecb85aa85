"""Indirect object identification (IOI) prompts for Pythia-style causal LMs.

"When Mary and John went to the store, John gave a drink to" -> " Mary": the answer is the
indirect object (the name mentioned once), the competitors are the generic " the" and the
subject " John" (the repeated name).  Templates are written in ABB form with ``{A}`` the
indirect object and ``{B}`` the subject; the BAB form swaps the first mention of each, so the
subject is first-mentioned ("When John and Mary went to the store, John gave a drink to").
"""

from __future__ import annotations

import random
import warnings
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import torch

from mechtrunc.core.prompts import PromptSet
from mechtrunc.tasks._tokens import required_token_id, single_token_id, tokenize_prompts, tokenizer_name

__all__ = ["IOI_TEMPLATES", "ORDERS", "ioi_names", "ioi_prompts"]

ORDERS = ("ABB", "BAB")

IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {B} gave a drink to",
    "When {A} and {B} got a snack at the cafe, {B} decided to give it to",
    "After {A} and {B} went to the park, {B} handed a frisbee to",
    "Then, {A} and {B} were working at the office. {B} decided to give a file to",
    "While {A} and {B} were cooking dinner, {B} passed the salt to",
    "{A} and {B} went to the party. Later, {B} offered a slice of cake to",
    "When {A} and {B} arrived at the school, {B} gave a book to",
    "After the meeting, {A} and {B} went for a walk, and {B} showed a photo to",
    "At the restaurant, {A} and {B} ordered lunch, and {B} passed the menu to",
    "When {A} and {B} were at the beach, {B} threw a ball to",
    "{A} and {B} had a long day at work, so {B} sent a message to",
    "During the trip, {A} and {B} stopped at a hotel, and {B} gave the keys to",
    "When {A} and {B} finished the game, {B} handed the trophy to",
    "After {A} and {B} moved into the new house, {B} wrote a letter to",
    "On the train, {A} and {B} sat together, and {B} lent a pen to",
    "When {A} and {B} met at the library, {B} returned a book to",
    "Friends {A} and {B} found a lost cat, and {B} gave it to",
    "After {A} and {B} cleaned the kitchen, {B} brought a cup of tea to",
)


@lru_cache(maxsize=1)
def ioi_names() -> tuple[str, ...]:
    """The built-in first names (``mechtrunc/data/ioi_names.txt``), each one token with a
    leading space under Pythia's GPT-NeoX tokenizer."""
    text = resources.files("mechtrunc.data").joinpath("ioi_names.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _check_template(t: str) -> None:
    if t.count("{A}") != 1 or t.count("{B}") < 2 or t.find("{A}") > t.find("{B}"):
        raise ValueError(
            f"IOI template {t!r} must be in ABB form: one '{{A}}' (indirect object) before the "
            "first of at least two '{B}' (subject), e.g. "
            "'When {A} and {B} went to the store, {B} gave a drink to'"
        )
    if t != t.rstrip():
        raise ValueError(f"IOI template {t!r} must not end with whitespace (the answer token carries the space)")
    try:
        t.format(A="x", B="y")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"IOI template {t!r} may only use the placeholders {{A}} and {{B}}: {e}") from None


def _order_form(template: str, order: str) -> str:
    """The template in the given order: ABB as written, BAB with the first {A} and {B} swapped."""
    if order == "ABB":
        return template
    return template.replace("{A}", "\0", 1).replace("{B}", "{A}", 1).replace("\0", "{B}", 1)


def ioi_prompts(
    tokenizer,
    n: int = 200,
    seed: int = 0,
    names: list[str] | None = None,
    templates: list[str] | None = None,
) -> PromptSet:
    """``n`` IOI prompts, one read item per prompt at its last real token.

    Items are balanced over templates and over both name orders (ABB: the indirect object is
    mentioned first; BAB: the subject is): counts differ by at most one, and each template gets
    both orders equally.  Two distinct names are drawn per prompt and the item order is
    shuffled, all from ``seed`` (same seed, same prompts).

    Args:
        tokenizer: a Hugging Face tokenizer (the model's own).  Prompts are encoded with no
            special tokens and right-padded with its pad (else eos) id.
        n: number of prompts.
        seed: seed for names, template assignment and item order.
        names: first names (without leading space); default the built-in list.  Names that are
            not a single token (with a leading space) under ``tokenizer`` are dropped with a warning.
        templates: ABB-form templates with ``{A}`` (indirect object) and ``{B}`` (subject);
            default :data:`IOI_TEMPLATES`.

    Returns:
        A :class:`PromptSet` with ``answer`` the indirect object, ``competitors`` (" the",
        subject), ``texts`` and ``meta`` lists ``template`` (index), ``order`` ("ABB"/"BAB"),
        ``io`` and ``subject`` (names), plus ``templates`` and ``names`` used.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    templates = _checked_templates(templates)
    name_ids = _single_token_names(tokenizer, names)
    the_id = required_token_id(tokenizer, " the", "competitor")
    items = _draw_items(random.Random(seed), templates, list(name_ids), n)
    return _tokenize_items(tokenizer, items, name_ids, the_id, templates, seed)


# template and name selection
def _checked_templates(templates: list[str] | None) -> list[str]:
    templates = list(IOI_TEMPLATES if templates is None else templates)
    if not templates:
        raise ValueError("templates must be a non-empty list of ABB-form IOI templates")
    for t in templates:
        _check_template(t)
    return templates


def _single_token_names(tokenizer, names: list[str] | None) -> dict[str, int]:
    """``{name: token id}`` of the names (default: the built-in list) that are one token with a
    leading space under ``tokenizer``, in order without duplicates; the others are dropped with a
    warning (raised at :func:`ioi_prompts`' caller); fewer than 2 left is an error."""
    candidates = [nm.strip() for nm in (ioi_names() if names is None else names) if nm.strip()]
    name_ids: dict[str, int] = {}
    rejected: list[str] = []
    for name in dict.fromkeys(candidates):  # dedupe, keep order
        tid = single_token_id(tokenizer, " " + name)
        if tid is None:
            rejected.append(name)
        else:
            name_ids[name] = tid
    if rejected:
        warnings.warn(
            f"dropping {len(rejected)} IOI name(s) that are not a single token (with a leading space) "
            f"under {tokenizer_name(tokenizer)}: {rejected}",
            stacklevel=3,
        )
    if len(name_ids) < 2:
        raise ValueError(
            f"IOI needs at least 2 names that are single tokens under {tokenizer_name(tokenizer)}; "
            f"{len(name_ids)} remain ({list(name_ids)}), rejected: {rejected}"
        )
    return name_ids


class _Items(NamedTuple):
    """The drawn prompts: per item its template index, order, text, indirect object and subject."""

    template: list[int]
    order: list[str]
    texts: list[str]
    io: list[str]
    subject: list[str]


def _draw_items(rng: random.Random, templates: list[str], valid: list[str], n: int) -> _Items:
    """``n`` items balanced over templates and orders, in a shuffled order, each with two
    distinct names of ``valid``."""
    # item k: template slot t = k % T (a seeded permutation picks which templates get the extras);
    # its j-th use (j = k // T) has order (j + t) % 2.  Template counts, order counts and the
    # orders within each template then all differ by at most one.
    T = len(templates)
    tpl_perm = list(range(T))
    rng.shuffle(tpl_perm)
    combos = [(tpl_perm[k % T], ORDERS[(k // T + k % T) % 2]) for k in range(n)]
    rng.shuffle(combos)

    texts, io_names, s_names = [], [], []
    for tpl_idx, order in combos:
        io, subj = rng.sample(valid, 2)
        texts.append(_order_form(templates[tpl_idx], order).format(A=io, B=subj))
        io_names.append(io)
        s_names.append(subj)
    return _Items([c[0] for c in combos], [c[1] for c in combos], texts, io_names, s_names)


# tokenisation
def _tokenize_items(tokenizer, items: _Items, name_ids: dict[str, int], the_id: int, templates: list[str],
                    seed: int) -> PromptSet:
    """The PromptSet of the drawn items: texts tokenised and right-padded, the indirect object as
    the answer, " the" and the subject as competitors."""
    tokens, pos = tokenize_prompts(tokenizer, items.texts)
    answer = torch.tensor([name_ids[io] for io in items.io], dtype=torch.long)
    subjects = torch.tensor([name_ids[s] for s in items.subject], dtype=torch.long)
    competitors = torch.stack([torch.full_like(answer, the_id), subjects], 1)
    return PromptSet(
        tokens=tokens,
        rows=torch.arange(len(items.texts)),
        pos=pos,
        answer=answer,
        competitors=competitors,
        competitor_names=("the", "subject"),
        texts=items.texts,
        meta={
            "task": "ioi",
            "template": items.template,
            "order": items.order,
            "io": items.io,
            "subject": items.subject,
            "templates": templates,
            "names": list(name_ids),
            "seed": seed,
        },
    )
