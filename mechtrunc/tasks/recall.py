"""Noisy in-context recall (Chen, Bruna, Bietti, arXiv 2406.03068), vectorised on torch.

A sequence of ``seq_len + 1`` tokens is a Markov chain over a character vocabulary (tiny
Shakespeare bigrams by default) in which ``k`` trigger tokens behave specially: the token after
a trigger is the sequence's own output token for that trigger, except with probability
``alpha`` it is a fixed noise token.  Inputs are tokens ``0..T-1``, targets tokens ``1..T``;
the loss is taken at positions holding a trigger seen for the second time or later.

Every sequence is generated in parallel; the only loop is over positions (the chain is
sequential), so one call costs ``seq_len`` small batched tensor operations on CPU or GPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechtrunc.core.prompts import PromptSet

__all__ = ["RecallConfig", "RecallBatch", "RecallTask", "char_stats", "random_markov_stats"]


@dataclass(frozen=True)
class CharStats:
    """Unigram and bigram counts of a vocabulary (token id = index)."""

    itos: tuple[str, ...]
    unigram: Float[Tensor, "vocab"]
    bigram: Float[Tensor, "vocab vocab"]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)


@lru_cache(maxsize=1)
def char_stats() -> CharStats:
    """The tiny-Shakespeare character statistics shipped with the package (65 characters)."""
    raw = json.loads(
        resources.files("mechtrunc.data").joinpath("tinyshakespeare_char_counts.json").read_text()
    )
    return CharStats(
        itos=tuple(raw["itos"]),
        unigram=torch.tensor(raw["unigram_counts"], dtype=torch.float64),
        bigram=torch.tensor(raw["bigram_counts"], dtype=torch.float64),
    )


def random_markov_stats(vocab_size: int, seed: int = 0, concentration: float = 0.5) -> CharStats:
    """A random Markov chain over ``vocab_size`` tokens, for users who want another vocabulary.

    Each bigram row (and the unigram vector) is a vector of exponential variates raised to the
    power ``1 / concentration`` (smaller = peakier rows), drawn from a seeded generator.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    g = torch.Generator().manual_seed(seed)
    # clamp: torch.rand can return exactly 0, whose -log is inf (a NaN row once normalised)
    draw = lambda *shape: (
        -torch.rand(*shape, generator=g, dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny).log()
    ) ** (1.0 / concentration)
    return CharStats(
        itos=tuple(f"<{i}>" for i in range(vocab_size)),
        unigram=draw(vocab_size),
        bigram=draw(vocab_size, vocab_size),
    )


def _alias_tables(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Walker/Vose alias tables of each row of a row-stochastic matrix: drawing column ``i``
    uniformly, then keeping ``i`` with probability ``prob[r, i]`` and else taking
    ``alias[r, i]``, samples row ``r`` exactly.  Zero-probability entries get ``prob = 0``
    and are never drawn."""
    n_rows, n = rows.shape
    prob = torch.zeros(n_rows, n, dtype=torch.float64)
    alias = torch.arange(n).repeat(n_rows, 1)
    for r in range(n_rows):
        scaled = (rows[r] / rows[r].sum() * n).tolist()
        small = sorted((i for i in range(n) if scaled[i] < 1.0), key=lambda i: scaled[i], reverse=True)
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            lo, hi = small.pop(), large[-1]  # zero-mass columns are popped first
            prob[r, lo], alias[r, lo] = scaled[lo], hi
            scaled[hi] -= 1.0 - scaled[lo]
            if scaled[hi] < 1.0:
                large.pop()
                small.append(hi)
        best = int(rows[r].argmax())
        for i in large + small:  # left over by rounding
            if rows[r, i] > 0:
                prob[r, i] = 1.0
            else:  # never keep a zero-mass column: always jump to a positive one
                prob[r, i], alias[r, i] = 0.0, best
    return prob, alias


@dataclass(frozen=True)
class RecallConfig:
    """Parameters of the noisy in-context recall distribution.

    Defaults follow the authors' released run except ``alpha`` (0.3 is their default; the
    released run and the ``paper`` preset use 0.5).
    """

    alpha: float = 0.3
    k: int = 1
    seq_len: int = 256
    fixed_triggers: bool = True
    noise_token: int | Literal["extra"] = 2
    bigrams: Literal["shakespeare", "random"] = "shakespeare"
    vocab_size: int = 65  # only used with bigrams="random"
    markov_seed: int = 0  # only used with bigrams="random"

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.alpha) <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len!r}")
        if self.bigrams not in ("shakespeare", "random"):
            raise ValueError(f"bigrams must be 'shakespeare' or 'random', got {self.bigrams!r}")
        base = self.base_vocab_size
        if not (1 <= self.k <= base - 1):
            raise ValueError(
                f"k must be between 1 and {base - 1} (vocabulary of {base} tokens "
                f"minus the noise token), got {self.k!r}"
            )
        if self.noise_token != "extra" and not (
            isinstance(self.noise_token, int) and 0 <= self.noise_token < base
        ):
            raise ValueError(
                f"noise_token must be a token id in [0, {base - 1}] or 'extra', "
                f"got {self.noise_token!r}"
            )

    @property
    def base_vocab_size(self) -> int:
        return 65 if self.bigrams == "shakespeare" else self.vocab_size

    @property
    def d_vocab(self) -> int:
        """Model vocabulary size: the base vocabulary, plus one if the noise token is extra."""
        return self.base_vocab_size + (1 if self.noise_token == "extra" else 0)

    @property
    def noise_id(self) -> int:
        return self.base_vocab_size if self.noise_token == "extra" else int(self.noise_token)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RecallBatch:
    """One batch of the task. ``counts`` marks how often the trigger at each input position has
    occurred so far (0 at non-trigger positions); the loss mask is ``counts >= 2``."""

    inputs: Int[Tensor, "batch pos"]
    targets: Int[Tensor, "batch pos"]
    counts: Int[Tensor, "batch pos"]
    triggers: Int[Tensor, "batch k"]
    outputs: Int[Tensor, "batch k"]
    noise_id: int

    @property
    def loss_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.counts >= 2

    def clean_targets(self) -> Int[Tensor, "batch pos"]:
        """Targets with every post-trigger token replaced by the sequence's output token."""
        hit = self.inputs.unsqueeze(-1) == self.triggers.unsqueeze(1)  # [b, p, k]
        out = (hit.long() * self.outputs.unsqueeze(1)).sum(-1)
        return torch.where(hit.any(-1), out, self.targets)

    def select(self, idx: slice | Tensor) -> "RecallBatch":
        """The batch restricted to some sequences."""
        return RecallBatch(self.inputs[idx], self.targets[idx], self.counts[idx], self.triggers[idx],
                           self.outputs[idx], self.noise_id)

    def bigram_prompts(self) -> PromptSet:
        """Read items at every non-trigger position (answer: the actual next token, produced by
        the bigram chain): the collateral-damage measure for edits aimed at the trigger."""
        rows, pos = (self.counts == 0).nonzero(as_tuple=True)
        answer = self.targets[rows, pos]
        return PromptSet(
            tokens=self.inputs, rows=rows, pos=pos, answer=answer,
            competitors=torch.full_like(answer, self.noise_id).unsqueeze(-1), competitor_names=("noise",),
        )

    def to_prompts(self, clean: bool = True) -> PromptSet:
        """Read positions: every trigger occurrence with count >= 2; answer: the clean output
        token (``clean=False``: the token actually sampled there, noise included, i.e. the
        training target); competitor: the noise token."""
        rows, pos = self.loss_mask.nonzero(as_tuple=True)
        answer = (self.clean_targets() if clean else self.targets)[rows, pos]
        return PromptSet(
            tokens=self.inputs,
            rows=rows,
            pos=pos,
            answer=answer,
            competitors=torch.full_like(answer, self.noise_id).unsqueeze(-1),
            competitor_names=("noise",),
        )


class RecallTask:
    """Sampler for the noisy in-context recall distribution.

    >>> task = RecallTask(RecallConfig(alpha=0.5, seq_len=64))
    >>> batch = task.sample(8, seed=0)
    >>> batch.inputs.shape
    torch.Size([8, 64])
    """

    def __init__(self, config: RecallConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or RecallConfig()
        self.device = torch.device(device)
        cfg = self.config
        stats = char_stats() if cfg.bigrams == "shakespeare" else random_markov_stats(
            cfg.vocab_size, cfg.markov_seed
        )
        self.stats = stats
        V = stats.vocab_size
        self.unigram_cdf = torch.cumsum(stats.unigram / stats.unigram.sum(), 0).double()
        rows = stats.bigram / stats.bigram.sum(1, keepdim=True).clamp_min(1e-12)
        # one extra row, used after a dedicated ("extra") noise token: the unigram distribution
        rows = torch.cat([rows, (stats.unigram / stats.unigram.sum()).unsqueeze(0)])
        # guard against float rounding: from the last bin with positive mass on, the unigram
        # CDF is exactly 1 (with searchsorted(right=True) below, zero-mass bins are never drawn)
        uni_last = int((stats.unigram > 0).nonzero().max())
        self.unigram_cdf[uni_last:] = 1.0
        self.unigram_cdf = self.unigram_cdf.to(self.device)
        # bigram rows as alias tables (Walker/Vose): a draw is one uniform column i, then i or
        # alias[i] by a second uniform -- two table lookups per token, no search.
        prob, alias = _alias_tables(rows)
        self.alias_prob = prob.flatten().float().to(self.device)  # [(V + 1) * V]
        self.alias_index = alias.flatten().to(self.device)
        order = torch.argsort(stats.unigram, descending=True, stable=True)
        self.fixed_triggers = order[: cfg.k].to(self.device)
        self.base_vocab = V

    @property
    def itos(self) -> tuple[str, ...]:
        extra = ("<noise>",) if self.config.noise_token == "extra" else ()
        return self.stats.itos + extra

    def _triggers(self, batch: int, g: torch.Generator) -> Int[Tensor, "batch k"]:
        cfg = self.config
        if cfg.fixed_triggers:
            return self.fixed_triggers.unsqueeze(0).expand(batch, -1).clone()
        # k distinct non-noise tokens per sequence: top-k of random scores
        scores = torch.rand(batch, self.base_vocab, generator=g, device=self.device)
        if cfg.noise_token != "extra":
            scores[:, cfg.noise_id] = -1.0
        return scores.topk(cfg.k, dim=1).indices

    def sample(
        self, batch_size: int, seed: int | None = None, generator: torch.Generator | None = None,
        alpha: float | None = None,
    ) -> RecallBatch:
        """Draw ``batch_size`` sequences.  Pass ``seed`` (reproducible) or a ``generator``
        (a stream of batches); ``alpha`` overrides the configured noise level (0 = clean)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cfg = self.config
        alpha = cfg.alpha if alpha is None else alpha
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(0 if seed is None else seed)
        g, dev, B, T = generator, self.device, batch_size, cfg.seq_len

        triggers = self._triggers(B, g)
        outputs = torch.randint(0, self.base_vocab, (B, cfg.k), generator=g, device=dev)
        # every uniform is drawn up front, position-major ([position, sequence], so each step
        # reads contiguous rows): a column and an accept draw per Markov step (alias method) and
        # the noise decision after each position
        u_column = torch.rand(T + 1, B, generator=g, device=dev)
        u_accept = torch.rand(T + 1, B, generator=g, device=dev)
        is_noise = torch.rand(T, B, generator=g, device=dev) < alpha

        # trig_out[b, v] = output token if v is a trigger of sequence b, else -1
        V = self.base_vocab
        trig_out = torch.full((B, V + 1), -1, dtype=torch.long, device=dev)
        trig_out.scatter_(1, triggers, outputs)
        trig_flat = trig_out.flatten()
        row_offset = torch.arange(B, device=dev) * (V + 1)

        seq = torch.empty(T + 1, B, dtype=torch.long, device=dev)
        # right=True: index = number of CDF entries <= u, so a zero-width bin is never chosen
        seq[0] = torch.searchsorted(self.unigram_cdf, u_column[0].double(), right=True)
        column = (u_column * V).long().clamp_max_(V - 1)
        noise = torch.full((B,), cfg.noise_id, dtype=torch.long, device=dev)
        prob, alias = self.alias_prob, self.alias_index
        for t in range(T):
            prev = seq[t]
            cell = prev * V + column[t + 1]
            # index_select: the fastest 1-D lookup (about 3x advanced indexing on CPU)
            markov = torch.where(u_accept[t + 1] < prob.index_select(0, cell), column[t + 1],
                                 alias.index_select(0, cell))
            out = trig_flat.index_select(0, row_offset + prev)
            torch.where(out >= 0, torch.where(is_noise[t], noise, out), markov, out=seq[t + 1])
        seq = seq.T

        inputs, targets = seq[:, :-1], seq[:, 1:]
        is_trig = (inputs.unsqueeze(-1) == triggers.unsqueeze(1)).int()  # [B, T, k]
        counts = (is_trig.cumsum(1) * is_trig).sum(-1).long()
        return RecallBatch(inputs, targets, counts, triggers, outputs, cfg.noise_id)

    def batches(self, batch_size: int, seed: int = 0):
        """An endless, reproducible stream of training batches."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        while True:
            yield self.sample(batch_size, generator=g)

    def test_set(self, n: int = 512, seed: int = 10_000) -> RecallBatch:
        """The clean test set (alpha = 0), 512 sequences by default as in the paper."""
        return self.sample(n, seed=seed, alpha=0.0)
