"""Private tokenizer helpers shared by the Pythia prompt tasks (IOI, factual recall, user files).

Prompts are tokenized without special tokens (Pythia's tokenizer adds no BOS) and right-padded;
answers and competitors must be exactly one token that is not the unknown token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor


def tokenizer_name(tokenizer) -> str:
    """A short description of a tokenizer for error messages."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"the tokenizer {name}" if name else f"the tokenizer (a {type(tokenizer).__name__} with no name)"


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` if it is exactly one token (and not the unknown token), else None.

    >>> single_token_id(pythia_tokenizer, " Mary")  # doctest: +SKIP
    6393
    """
    if not text:
        return None
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        return None
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is not None and ids[0] == unk_id and text.strip() != str(tokenizer.unk_token):
        return None
    return int(ids[0])


def required_token_id(tokenizer, text: str, role: str) -> int:
    """The single-token id of ``text`` (e.g. the competitor " the"), or a ValueError naming it."""
    token = single_token_id(tokenizer, text)
    if token is None:
        raise ValueError(f"the {role} {text!r} is not a single token under {tokenizer_name(tokenizer)}")
    return token


def pad_id(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else its eos token, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def tokenize_prompts(
    tokenizer, texts: Sequence[str]
) -> tuple[Int[Tensor, "seq pos"], Int[Tensor, "seq"]]:
    """Tokenize ``texts`` (no BOS), right-pad to the longest, and return ``(tokens, pos)`` where
    ``pos[i]`` is the index of the last real token of prompt ``i``."""
    if len(texts) == 0:
        raise ValueError("no prompts to tokenize")
    encoded = [encode(tokenizer, t) for t in texts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} ({texts[i]!r}) tokenizes to no tokens under {tokenizer_name(tokenizer)}")
    width = max(len(ids) for ids in encoded)
    tokens = torch.full((len(encoded), width), pad_id(tokenizer), dtype=torch.long)
    for i, ids in enumerate(encoded):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    pos = torch.tensor([len(ids) - 1 for ids in encoded], dtype=torch.long)
    return tokens, pos
