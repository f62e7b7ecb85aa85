"""The prompt-set type shared by every task (toy recall, IOI, factual recall, user files).

A :class:`PromptSet` is a batch of token sequences plus a list of *read items*: for item ``i``,
read the logits of sequence ``rows[i]`` at position ``pos[i]``, where ``answer[i]`` is the correct
next token and ``competitors[i]`` the competing generic tokens (the noise token, " the", the IOI
subject...).  One sequence may carry many items (the toy reads every repeated trigger); a
Pythia prompt carries one, at its last real token.  Sequences of different lengths are padded on
the right, which causal attention never reads from the positions we score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["PromptSet", "special_ids"]


@dataclass
class PromptSet:
    tokens: Int[Tensor, "seq pos"]
    rows: Int[Tensor, "item"]
    pos: Int[Tensor, "item"]
    answer: Int[Tensor, "item"]
    competitors: Int[Tensor, "item n_comp"]
    competitor_names: tuple[str, ...] = ("generic",)
    texts: list[str] | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens must be [seq, pos], got shape {tuple(self.tokens.shape)}")
        n = self.rows.shape[0]
        for name in ("pos", "answer"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(getattr(self, name).shape)}")
        if self.competitors.ndim == 1:
            self.competitors = self.competitors.unsqueeze(-1)
        if self.competitors.shape[0] != n:
            raise ValueError(f"competitors must have {n} rows, got {self.competitors.shape[0]}")
        if len(self.competitor_names) != self.competitors.shape[1]:
            raise ValueError(
                f"competitor_names {self.competitor_names} do not match "
                f"{self.competitors.shape[1]} competitor columns"
            )
        if n and not (0 <= int(self.rows.min()) and int(self.rows.max()) < self.tokens.shape[0]):
            raise ValueError(f"rows must be in [0, {self.tokens.shape[0] - 1}] (sequence indices)")
        if n and not (0 <= int(self.pos.min()) and int(self.pos.max()) < self.tokens.shape[1]):
            raise ValueError(f"pos must be in [0, {self.tokens.shape[1] - 1}] (positions)")
        for name in ("answer", "competitors"):
            t = getattr(self, name)
            if t.numel() and int(t.min()) < 0:
                raise ValueError(f"{name} holds a negative token id ({int(t.min())})")

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_sequences(self) -> int:
        return int(self.tokens.shape[0])

    def _subset(self, seq_idx) -> tuple["PromptSet", Tensor]:
        dev = self.tokens.device
        idx = torch.arange(self.n_sequences, device=dev)[seq_idx]
        remap = torch.full((self.n_sequences,), -1, dtype=torch.long, device=dev)
        remap[idx] = torch.arange(len(idx), device=dev)
        keep = remap[self.rows.to(dev)] >= 0
        items = keep.nonzero().squeeze(1)
        n_seq, n_items = self.n_sequences, len(self)
        idx_list = idx.tolist()

        def slice_meta(value):
            # per-sequence and per-item lists follow the subset; anything else is copied
            if isinstance(value, list) and len(value) == n_seq:
                return [value[i] for i in idx_list]
            if isinstance(value, list) and len(value) == n_items:
                return [value[i] for i in items.tolist()]
            return value

        subset = PromptSet(
            tokens=self.tokens[idx],
            rows=remap[self.rows[keep]],
            pos=self.pos[keep],
            answer=self.answer[keep],
            competitors=self.competitors[keep],
            competitor_names=self.competitor_names,
            texts=[self.texts[i] for i in idx_list] if self.texts is not None else None,
            meta={k: slice_meta(v) for k, v in self.meta.items()},
        )
        return subset, items

    def subset_sequences(self, seq_idx: Int[Tensor, "k"] | slice) -> "PromptSet":
        """The prompt set restricted to some sequences (items re-indexed; per-sequence and
        per-item lists in ``meta`` are sliced too)."""
        return self._subset(seq_idx)[0]

    def role_positions(self) -> dict[str, Tensor]:
        """``{role: [seq] positions}`` for a set whose ``meta`` names its roles (``roles``, one
        name each, and ``role_pos``, one tuple per sequence: the pairs of
        :mod:`mechtrunc.tasks.corrupt`); empty when it has none."""
        roles = self.meta.get("roles")
        if not roles:
            return {}
        table = torch.tensor(self.meta["role_pos"], dtype=torch.long).reshape(-1, len(roles))
        return {r: table[:, j] for j, r in enumerate(roles)}

    def batches(self, batch_size: int):
        """Yield ``(item_index, PromptSet)`` chunks of at most ``batch_size`` sequences, where
        ``item_index`` holds the positions of the chunk's items in this prompt set."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, self.n_sequences, batch_size):
            chunk, items = self._subset(slice(start, start + batch_size))
            yield items, chunk

    def to(self, device: torch.device | str) -> "PromptSet":
        return PromptSet(
            self.tokens.to(device), self.rows.to(device), self.pos.to(device),
            self.answer.to(device), self.competitors.to(device), self.competitor_names,
            self.texts, dict(self.meta),
        )


def special_ids(tokenizer) -> set[int]:
    """Every special token id of a tokenizer: ``all_special_ids`` (BOS, EOS, UNK, PAD and any added
    special token) and the pad, eos and bos ids.  Empty for None."""
    if tokenizer is None:
        return set()
    ids = set(int(t) for t in (getattr(tokenizer, "all_special_ids", None) or ()))
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ids.add(int(value))
    return ids
