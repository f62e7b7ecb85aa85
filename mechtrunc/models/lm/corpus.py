"""A seeded, deterministic generator of short English stories for the language model.

A story is ``<|endoftext|>`` followed by ``sentences_per_story`` sentences, each drawn from one
of six families with the rates of :class:`CorpusConfig`:

- ``generic_to``: "Mary walked to the park." or, with probability ``1 - to_the_share``, the
  same sentence with a name after "to" ("Mary walked to John.").  ``to_the_share`` is the
  analogue of the toy's alpha: how often " the" follows " to" outside IOI sentences;
- ``generic_in``, ``generic_of``: "in the", "of the";
- ``ioi``: the paper's IOI sentences, "When Mary and John went to the store, John gave a drink to
  Mary." in both name orders (ABB, BAB); a share ``ioi_the_share`` ends "to the teacher."
  instead (IOI noise).  The answer after the last " to" is the indirect object, which only the
  context tells;
- ``fact``: "Mary lives in Paris." stated, then recalled word for word at the end of the same
  story, so that " Paris" after "Mary lives in" competes with the generic " in the";
- ``filler``: short sentences ("Mary smiled.", "The park was quiet.") for English-like structure;
- ``recall``: noisy in-context recall in words, the toy's task in English: "Mary went to Paris."
  stated, then repeated at the end of the same story (the repeats of a story in shuffled order),
  where with probability ``recall_noise`` (the toy's alpha) the repeat is "Mary went to the park."
  instead: " the" after "went to" is the generic association, the city the in-context answer.
  Its rate defaults to 0, which leaves the other families' stream unchanged.

Every slot word is one token (:mod:`mechtrunc.models.lm.lexicon`), so each template has a fixed length
in tokens and the generator builds token ids directly with numpy (tens of millions of tokens per
second): a sentence is its template's fixed token fragments with the drawn word ids in the slot
columns.  Concatenating the fragments' ids equals tokenizing the decoded text (the fragments split
at the tokenizer's pre-token boundaries; a test checks it).  Held-out names and IOI templates
never appear in the training stream; they are for evaluation (:mod:`mechtrunc.models.lm.prompts`).

Real English (``english > 0``): each story of a training batch is replaced, with probability
``english``, by a passage of real English of the same length in tokens (the story's
``<|endoftext|>`` kept, then the passage), so the share of English tokens in the stream is
``english`` in expectation and every other token stays where it was.  The text is the one of
checksum ``english_sha256`` (default :data:`mechtrunc.models.lm.english.ENGLISH_SHA256`: Jane Austen's
six novels and Moby-Dick, fetched by ``mechtrunc lm english``) in ``english_dir`` (default: the
cache directory the command writes to), held as its paragraphs, each with a leading space like a
story's sentences, one after the other (:func:`mechtrunc.models.lm.english.stream_text`).  A passage
starts at the first token of a paragraph, stays within one book's training part and holds no
held-out name (Austen's Frank Churchill and Lady Russell are held-out names: a passage
that would name one is drawn again, so held-out names still never occur in training); which
stories are replaced and where their passages start are drawn from the generator seeded with
(seed, 2, step), separate from the stories' own draws, so the stories of a batch are the same
with or without English.  The last :data:`~mechtrunc.models.lm.english.HELDOUT_SHARE` of every book
never enters training (:meth:`Corpus.english_windows` reads it for the collateral loss).  The
run's tokenizer then covers the text too (:func:`mechtrunc.models.lm.tokenizer.run_tokenizer`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mechtrunc._checks import check_int, check_preset, config_from_dict
from mechtrunc._scalars import as_int, as_real
from mechtrunc.models.lm import lexicon
from mechtrunc.models.lm.english import ENGLISH_SHA256
from mechtrunc._choices import CORPUS_PRESETS

__all__ = ["FAMILIES", "ENGLISH_FIELDS", "DEFAULT_ENGLISH_VOCAB", "CorpusConfig", "EnglishStream", "Corpus", "CorpusChunk",
           "corpus_preset", "corpus_stats"]

FAMILIES = ("generic_to", "generic_in", "generic_of", "ioi", "fact", "filler", "recall")
#: the English fields of :class:`CorpusConfig`; left out of :meth:`CorpusConfig.to_dict` while
#: ``english == 0`` (then they must hold their defaults), so configs without English read and
#: write as before
ENGLISH_FIELDS = ("english", "english_vocab", "english_sha256", "english_dir")
#: the noisy-recall fields of :class:`CorpusConfig`, left out of :meth:`CorpusConfig.to_dict` while
#: both are 0
RECALL_FIELDS = ("recall", "recall_noise")
#: default ``english_vocab``: Pythia tokens added for the English text (docs/lm.md, "Real English text")
DEFAULT_ENGLISH_VOCAB = 512
_SLOT = re.compile(r" \{([A-Z])\}")


def _rate(name: str, value) -> float:
    v = as_real(value, name)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass(frozen=True)
class CorpusConfig:
    """Knobs of the generated corpus, validated once here.

    The six family rates are the probability of each family per sentence and must sum to 1.
    ``to_the_share`` and ``ioi_the_share`` are in [0, 1].  ``heldout_names`` (default every
    8th name of :data:`~mechtrunc.models.lm.lexicon.NAMES`) never occur in training; ``train_names``
    default to all other lexicon names and may not include a held-out one.
    ``heldout_templates`` are indices into :data:`~mechtrunc.models.lm.lexicon.IOI` kept for evaluation.
    ``recall`` is the rate of the noisy-recall family and ``recall_noise`` (in [0, 1]) the share of
    its repeats that say " the <place>" instead of the stated city.

    Real English (module docstring): ``english`` in [0, 1] is the probability that a story of a
    training batch is replaced by an English passage of the same token length (0: none, the
    stream of every earlier config); ``english_vocab`` the number of Pythia tokens added to the
    tokenizer for the text (:func:`mechtrunc.models.lm.tokenizer.run_tokenizer`); ``english_sha256`` the
    text's combined checksum (default, once ``english > 0``: the seven books of ``mechtrunc lm
    english``); ``english_dir`` where that text lives (made absolute; default: the command's cache
    directory; not part of a run's identity, the checksum is).  With ``english == 0`` the other
    three must keep their defaults.
    """

    seed: int = 0
    generic_to: float = 0.25
    generic_in: float = 0.15
    generic_of: float = 0.05
    ioi: float = 0.25
    fact: float = 0.1
    filler: float = 0.2
    to_the_share: float = 0.7
    ioi_the_share: float = 0.25
    sentences_per_story: int = 8
    heldout_names: tuple[str, ...] = lexicon.DEFAULT_HELDOUT_NAMES
    train_names: tuple[str, ...] | None = None
    heldout_templates: tuple[int, ...] = lexicon.DEFAULT_HELDOUT_TEMPLATES
    recall: float = 0.0
    recall_noise: float = 0.0
    english: float = 0.0
    english_vocab: int = DEFAULT_ENGLISH_VOCAB
    english_sha256: str | None = None
    english_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        rates = {f: _rate(f, getattr(self, f)) for f in FAMILIES}
        total = sum(rates.values())
        if abs(total - 1.0) > 1e-6:
            shown = ", ".join(f"{k}={v:g}" for k, v in rates.items())
            raise ValueError(f"the family rates are probabilities per sentence and must sum to 1, got {total:g} ({shown})")
        for name in ("to_the_share", "ioi_the_share", "recall_noise"):
            v = _rate(name, getattr(self, name))
            if v > 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
            rates[name] = v
        for k, v in rates.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "sentences_per_story", check_int("sentences_per_story", self.sentences_per_story, 1))
        known = set(lexicon.NAMES)
        held = tuple(dict.fromkeys(str(x) for x in self.heldout_names))
        bad = [x for x in held if x not in known]
        if bad:
            raise ValueError(f"heldout_names {bad} are not lexicon names (mechtrunc.models.lm.lexicon.NAMES, e.g. "
                             f"{', '.join(lexicon.NAMES[:5])} ...)")
        object.__setattr__(self, "heldout_names", held)
        if self.train_names is not None:
            train = tuple(dict.fromkeys(str(x) for x in self.train_names))
            bad = [x for x in train if x not in known]
            if bad:
                raise ValueError(f"train_names {bad} are not lexicon names (mechtrunc.models.lm.lexicon.NAMES)")
            both = [x for x in train if x in held]
            if both:
                raise ValueError(f"names {both} are both held out and requested in training; a held-out name "
                                 "must never occur in the training stream (remove them from one list)")
            object.__setattr__(self, "train_names", train)
        if len(self.names_for_training()) < 3:
            raise ValueError(f"training needs at least 3 names, got {list(self.names_for_training())}")
        tpl = tuple(dict.fromkeys(as_int(i, "heldout_templates") for i in self.heldout_templates))
        bad = [i for i in tpl if not 0 <= i < len(lexicon.IOI)]
        if bad:
            raise ValueError(f"heldout_templates {bad} are not IOI template indices (valid: 0..{len(lexicon.IOI) - 1})")
        if self.ioi > 0 and len(tpl) == len(lexicon.IOI):
            raise ValueError(f"heldout_templates {list(tpl)} hold out every IOI template while ioi={self.ioi:g} > 0")
        object.__setattr__(self, "heldout_templates", tpl)
        self._check_english()

    def _check_english(self) -> None:
        share = _rate("english", self.english)
        if share > 1:
            raise ValueError(f"english must be in [0, 1] (the share of stories replaced by English text), got {self.english!r}")
        object.__setattr__(self, "english", share)
        object.__setattr__(self, "english_vocab", check_int("english_vocab", self.english_vocab, 0))
        if self.english_dir is not None:  # absolute: a study run from another directory finds it too
            object.__setattr__(self, "english_dir", str(Path(self.english_dir).expanduser().absolute()))
        if share == 0:
            set_ = [f"{k}={getattr(self, k)!r}" for k, default in (("english_vocab", DEFAULT_ENGLISH_VOCAB),
                    ("english_sha256", None), ("english_dir", None)) if getattr(self, k) != default]
            if set_:
                raise ValueError(f"{', '.join(set_)} given but english=0 mixes in no English text; set english > 0 "
                                 "or leave them out")
            return
        digest = ENGLISH_SHA256 if self.english_sha256 is None else str(self.english_sha256)
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"english_sha256 must be a SHA-256 as 64 lowercase hex digits (the digest in the text's "
                             f"manifest.json), got {self.english_sha256!r}")
        object.__setattr__(self, "english_sha256", digest)

    def names_for_training(self) -> tuple[str, ...]:
        if self.train_names is not None:
            return self.train_names
        return tuple(x for x in lexicon.NAMES if x not in set(self.heldout_names))

    def train_templates(self) -> tuple[str, ...]:
        return tuple(t for i, t in enumerate(lexicon.IOI) if i not in self.heldout_templates)

    def to_dict(self) -> dict:
        """The fields as JSON-ready values; without the English fields when ``english == 0`` and
        without the recall fields when the corpus has no recall family (configs without them
        read and write as before they existed)."""
        d = asdict(self)
        if self.english == 0:
            d = {k: v for k, v in d.items() if k not in ENGLISH_FIELDS}
        if self.recall == 0 and self.recall_noise == 0:
            d = {k: v for k, v in d.items() if k not in RECALL_FIELDS}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusConfig":
        return config_from_dict(cls, d, ("heldout_names", "train_names", "heldout_templates"))


def corpus_preset(name: str = "default", **overrides) -> CorpusConfig:
    """The corpus preset ``name`` (see :data:`~mechtrunc._choices.CORPUS_PRESETS`) with overrides."""
    return CorpusConfig(**{**check_preset(name, CORPUS_PRESETS, "corpus"), **overrides})


@dataclass(frozen=True)
class _Kind:
    """One concrete sentence template: its family, text, probability and token layout."""

    family: str
    template: str
    p: float
    fixed: np.ndarray  # [length] token ids, slot columns hold -1
    slots: tuple[tuple[int, str], ...]  # (column, slot letter)
    recall: bool = False  # facts: repeated at the end of the story
    noise: tuple[np.ndarray, tuple[tuple[int, str], ...]] | None = None  # noisy recall: the repeat's noise form

    @property
    def length(self) -> int:
        return int(self.fixed.shape[0])


@dataclass
class CorpusChunk:
    """Generated stories as one token stream.

    ``tokens[story_starts[i]]`` is the ``<|endoftext|>`` opening story ``i``; sentence ``j``
    starts at ``sentence_starts[j]`` and is an instance of ``kinds[sentence_kind[j]]``
    (a ``(family, template)`` pair)."""

    tokens: np.ndarray
    story_starts: np.ndarray
    sentence_starts: np.ndarray
    sentence_kind: np.ndarray
    kinds: list[tuple[str, str]] = field(repr=False)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def sentences(self, family: str):
        """``(start, stop)`` token ranges of the sentences of one family."""
        ends = np.append(self.sentence_starts[1:], len(self.tokens))
        ends = np.minimum(ends, np.append(self.story_starts[1:], len(self.tokens))[
            np.searchsorted(self.story_starts, self.sentence_starts, side="right") - 1])
        which = [i for i, (fam, _) in enumerate(self.kinds) if fam == family]
        mask = np.isin(self.sentence_kind, which)
        return list(zip(self.sentence_starts[mask].tolist(), ends[mask].tolist()))


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(n) for n in lengths])``, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _order_form(template: str, order: str) -> str:
    """ABB as written; BAB swaps the first {A} and the first {B}."""
    if order == "ABB":
        return template
    return template.replace("{A}", "\0", 1).replace("{B}", "{A}", 1).replace("\0", "{B}", 1)


@dataclass(frozen=True)
class EnglishStream:
    """One part (training or held out) of the English text as token ids: ``ids`` the paragraphs
    one after the other, ``starts`` the first token of each paragraph, ``ends`` for each paragraph
    the end of its book's part (a passage from ``starts[i]`` must end by ``ends[i]``)."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def build(cls, books: dict[str, list[str]], tokenizer) -> "EnglishStream":
        from mechtrunc.models.lm.english import stream_text

        ids, starts, ends, at = [], [], [], 0
        for paras in books.values():
            encs = tokenizer([stream_text(p) for p in paras], add_special_tokens=False)["input_ids"]
            for e in encs:
                starts.append(at)
                ids.append(np.asarray(e, dtype=np.int32))
                at += len(e)
            ends += [at] * len(encs)
        return cls(np.concatenate(ids), np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64))

    def banned_counts(self, banned_ids) -> np.ndarray:
        """``c[i]``: how many of the first ``i`` tokens are in ``banned_ids``."""
        return np.concatenate([[0], np.cumsum(np.isin(self.ids, np.asarray(list(banned_ids), dtype=np.int32)))])

    def starts_for(self, length: np.ndarray, rng: np.random.Generator, banned: np.ndarray | None = None) -> np.ndarray:
        """A paragraph start for each passage length, drawn uniformly among the paragraphs from
        which the passage stays within its book and, with ``banned`` (:meth:`banned_counts`),
        holds no banned token (redrawn until it does)."""
        length = np.asarray(length, dtype=np.int64)
        if len(length) and length.max() > (self.ends - self.starts).max():
            raise ValueError(f"an English passage of {int(length.max())} tokens is longer than any book's part "
                             f"({int((self.ends - self.starts).max())} tokens at most)")

        def bad_at(idx, n):
            start = self.starts[idx]
            bad = start + n > self.ends[idx]
            if banned is not None:
                stop = np.minimum(start + n, len(self.ids))
                bad |= banned[stop] > banned[start]
            return bad

        idx = rng.integers(0, len(self.starts), len(length))
        for _ in range(1000):
            bad = bad_at(idx, length)
            if not bad.any():
                return self.starts[idx]
            idx[bad] = rng.integers(0, len(self.starts), int(bad.sum()))
        raise ValueError(f"found no English passage of {int(length[bad].max())} tokens without a held-out name in "
                         "1,000 draws; the text is too short for this corpus")


@lru_cache(maxsize=4)
def _english_streams(where: str, digest: str, vocab: int) -> tuple[EnglishStream, EnglishStream]:
    """(training, held-out) token streams of the text ``digest`` in ``where`` under the run
    tokenizer of ``vocab`` added tokens (built once per process)."""
    from mechtrunc.models.lm.english import english_split, read_english
    from mechtrunc.models.lm.tokenizer import run_tokenizer

    tokenizer = run_tokenizer(CorpusConfig(english=1.0, english_vocab=vocab, english_sha256=digest, english_dir=where))
    train, held = english_split(read_english(where, digest))
    return EnglishStream.build(train, tokenizer), EnglishStream.build(held, tokenizer)


class Corpus:
    """The compiled generator of one :class:`CorpusConfig` under a tokenizer (default
    :func:`mechtrunc.models.lm.tokenizer.run_tokenizer` of the config; with English text, only that
    tokenizer is accepted)."""

    def __init__(self, config: CorpusConfig | None = None, tokenizer=None):
        from mechtrunc.models.lm.tokenizer import run_tokenizer

        self.config = config if config is not None else CorpusConfig()
        if tokenizer is None:
            tokenizer = run_tokenizer(self.config)
        self.tokenizer = tokenizer
        self.eot = int(tokenizer.eos_token_id)
        self._words = {k: self._single_ids(words) for k, words in lexicon.SLOTS.items()}
        self._names = self._single_ids(self.config.names_for_training())
        self.kinds = self._compile()
        p = np.array([k.p for k in self.kinds], dtype=np.float64)
        self._p = p / p.sum()
        s = self.config.sentences_per_story
        self.tokens_per_story = 1 + s * float(sum(pk * k.length * (2 if k.recall else 1) for pk, k in zip(self._p, self.kinds)))
        self._english = self._load_english(run_tokenizer) if self.config.english > 0 else None
        if self._english is not None:  # held-out names never occur in training, English included
            held = [int(i) for i in self._single_ids(self.config.heldout_names)]
            self._banned = self._english[0].banned_counts(held)

    def _load_english(self, run_tokenizer) -> tuple[EnglishStream, EnglishStream]:
        """(training, held-out) English token streams under the run's tokenizer (which the given
        tokenizer must be)."""
        from mechtrunc.models.lm.english import resolve_english_dir

        c = self.config
        expected = run_tokenizer(c)
        if self.tokenizer.get_vocab() != expected.get_vocab():
            raise ValueError(f"a corpus with english={c.english:g} needs its run's tokenizer "
                             f"(mechtrunc.models.lm.tokenizer.run_tokenizer(config): {len(expected)} tokens); the one given "
                             f"has {len(self.tokenizer)}")
        where = str(resolve_english_dir(c.english_dir, c.english_sha256))
        return _english_streams(where, c.english_sha256, c.english_vocab)

    def _single_ids(self, words) -> np.ndarray:
        ids = []
        for w in words:
            enc = self.tokenizer.encode(" " + w, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"lexicon word {w!r} is {len(enc)} tokens under the tokenizer; every slot word must be one")
            ids.append(enc[0])
        return np.asarray(ids, dtype=np.int32)

    def _layout(self, template: str) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
        text = " " + template
        ids: list[int] = []
        slots = []
        at = 0
        for m in _SLOT.finditer(text):
            if m.start() > at:
                ids += self.tokenizer.encode(text[at:m.start()], add_special_tokens=False)
            slots.append((len(ids), m.group(1)))
            ids.append(-1)
            at = m.end()
        if at < len(text):
            ids += self.tokenizer.encode(text[at:], add_special_tokens=False)
        return np.asarray(ids, dtype=np.int32), tuple(slots)

    def _compile(self) -> list[_Kind]:
        c = self.config
        kinds: list[_Kind] = []

        def add(family, template, p, recall=False, noise=None):
            if p > 0:
                fixed, slots = self._layout(template)
                kinds.append(_Kind(family, template, p, fixed, slots, recall,
                                   None if noise is None else self._layout(noise)))

        for the, name in lexicon.GENERIC_TO:
            add("generic_to", the, c.generic_to / len(lexicon.GENERIC_TO) * c.to_the_share)
            add("generic_to", name, c.generic_to / len(lexicon.GENERIC_TO) * (1 - c.to_the_share))
        for fam, templates in (("generic_in", lexicon.GENERIC_IN), ("generic_of", lexicon.GENERIC_OF),
                               ("filler", lexicon.FILLER)):
            for t in templates:
                add(fam, t, getattr(c, fam) / len(templates))
        ioi = c.train_templates()
        for t in ioi:
            for order in ("ABB", "BAB"):
                form = _order_form(t, order)
                add("ioi", form, c.ioi / len(ioi) / 2 * (1 - c.ioi_the_share))
                add("ioi", form[: form.rindex(" {A}.")] + " the {R}.", c.ioi / len(ioi) / 2 * c.ioi_the_share)
        for t in lexicon.FACTS:
            add("fact", t, c.fact / len(lexicon.FACTS), recall=True)
        for t, noise in lexicon.RECALL:
            add("recall", t, c.recall / len(lexicon.RECALL), recall=True, noise=noise)
        return kinds

    # ------------------------------------------------------------------ generation
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, *key])

    def _fill(self, fixed: np.ndarray, slots, m: int, drawn: dict, rng: np.random.Generator) -> np.ndarray:
        """``m`` rows of a layout: the ``drawn`` slot values, other slots' words drawn here."""
        rows = np.broadcast_to(fixed, (m, len(fixed))).copy()
        for col, letter in slots:
            if letter not in drawn:
                words = self._words[letter]
                drawn[letter] = words[rng.integers(0, len(words), m)]
            rows[:, col] = drawn[letter]
        return rows

    def _draw(self, kind: _Kind, m: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        n = len(self._names)
        a = rng.integers(0, n, m)
        b = rng.integers(0, n - 1, m)
        b += b >= a
        cc = rng.integers(0, n - 2, m)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        cc += cc >= lo
        cc += cc >= hi
        values = {"A": a, "B": b, "C": cc}
        drawn = {x: self._names[values[x]] for _, x in kind.slots if x in values}
        return self._fill(kind.fixed, kind.slots, m, drawn, rng), drawn

    def _repeats(self, kind: _Kind, rows: np.ndarray, drawn: dict, rng: np.random.Generator) -> list[np.ndarray]:
        """The repeat rows of a noisy-recall kind: the statement, or with probability
        ``recall_noise`` its noise form (same name, a drawn place), as two groups (clean, noisy)
        with the boolean mask of the noisy ones."""
        noisy = rng.random(len(rows)) < self.config.recall_noise
        fixed, slots = kind.noise
        names = {x: v[noisy] for x, v in drawn.items() if x in lexicon.NAME_SLOTS}
        return [rows[~noisy], self._fill(fixed, slots, int(noisy.sum()), names, rng), noisy]

    def _generate(self, n: int, rng: np.random.Generator) -> CorpusChunk:
        s = self.config.sentences_per_story
        kind_of = rng.choice(len(self.kinds), size=n * s, p=self._p)
        story = np.repeat(np.arange(n, dtype=np.int64), s)
        pos = np.tile(np.arange(s, dtype=np.int64), n)
        # noisy recall: a story's repeats come in shuffled order (the rank of a uniform draw per
        # sentence slot), so that the order of the statements does not give the answer away
        shuffled = (rng.random((n, s)).argsort(1).argsort(1).ravel()
                    if any(k.noise is not None for k in self.kinds) else None)
        keys, lens, kids, rows_list = [], [], [], []

        def put(key, rows, k):
            keys.append(key)
            lens.append(np.full(len(key), rows.shape[1], dtype=np.int64))
            kids.append(np.full(len(key), k, dtype=np.int32))
            rows_list.append(rows)

        for k, kind in enumerate(self.kinds):
            idx = np.flatnonzero(kind_of == k)
            if not len(idx):
                continue
            rows, drawn = self._draw(kind, len(idx), rng)
            key = story[idx] * (2 * s) + pos[idx]
            put(key, rows, k)
            if kind.noise is not None:
                clean, noise_rows, noisy = self._repeats(kind, rows, drawn, rng)
                again = story[idx] * (2 * s) + s + shuffled[idx]
                put(again[~noisy], clean, k)
                put(again[noisy], noise_rows, k)
            elif kind.recall:
                put(key + s, rows, k)
        key_all, len_all, kid_all = np.concatenate(keys), np.concatenate(lens), np.concatenate(kids)
        order = np.argsort(key_all, kind="stable")
        len_sorted = len_all[order]
        story_sorted = key_all[order] // (2 * s)
        start_sorted = np.cumsum(len_sorted) - len_sorted + story_sorted + 1
        starts = np.empty_like(start_sorted)
        starts[order] = start_sorted
        out = np.empty(int(len_all.sum()) + n, dtype=np.int32)
        story_len = np.bincount(key_all // (2 * s), weights=len_all, minlength=n).astype(np.int64)
        story_starts = np.cumsum(story_len) - story_len + np.arange(n)
        out[story_starts] = self.eot
        g = 0
        for rows in rows_list:
            m, width = rows.shape
            out[starts[g:g + m, None] + np.arange(width)] = rows
            g += m
        return CorpusChunk(out, story_starts, start_sorted, kid_all[order],
                           [(k.family, k.template) for k in self.kinds])

    def stories(self, n: int, part: int = 0) -> CorpusChunk:
        """``n`` stories of part ``part`` of the stream (same config and part: same tokens)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        return self._generate(n, self._rng(0, int(part)))

    def batch(self, step: int, batch_size: int, ctx: int) -> np.ndarray:
        """The training batch of ``step``: ``[batch_size, ctx]`` token ids cut from freshly
        generated stories (a share ``english`` of them replaced by English passages).  A function
        of (config, step) only, so training can resume anywhere."""
        need = batch_size * ctx
        rng = self._rng(1, int(step))
        parts, starts = [], []
        have = 0
        while have < need:
            n = max(1, math.ceil((need - have) / self.tokens_per_story * 1.1))
            chunk = self._generate(n, rng)
            parts.append(chunk.tokens)
            starts.append(chunk.story_starts + have)
            have += len(chunk)
        tokens = np.concatenate(parts)[:need]
        if self._english is not None:
            self._mix_english(tokens, np.concatenate(starts), self._rng(2, int(step)))
        return tokens.reshape(batch_size, ctx)

    def _mix_english(self, tokens: np.ndarray, story_starts: np.ndarray, rng: np.random.Generator) -> None:
        """Replace each story (after its ``<|endoftext|>``) by an English training passage of the
        same length with probability ``english``, in place (the last story as far as it is cut)."""
        story_starts = story_starts[story_starts < len(tokens)]
        ends = np.append(story_starts[1:], len(tokens))
        pick = rng.random(len(story_starts)) < self.config.english
        first, stop = story_starts[pick] + 1, ends[pick]
        length = stop - first
        src = self._english[0].starts_for(length, rng, self._banned)
        dst = np.repeat(first, length) + _ranges(length)
        tokens[dst] = self._english[0].ids[np.repeat(src, length) + _ranges(length)]

    def english_windows(self, n: int, ctx: int) -> np.ndarray:
        """``[n, ctx]`` windows of the held-out English text (the last part of every book, never
        trained on): each ``<|endoftext|>`` then ``ctx - 1`` tokens from a paragraph's start, as a
        passage opens in training; the ``n`` starts are spread evenly over every possible one
        (no draw; when ``n`` exceeds them, some repeat)."""
        if self._english is None:
            raise ValueError("english_windows needs a config with english > 0 (this one mixes in no English text)")
        held = self._english[1]
        ok = held.starts + (ctx - 1) <= held.ends
        if not ok.any():
            raise ValueError(f"the held-out English text has no paragraph followed by {ctx - 1} tokens of its book")
        starts = held.starts[ok][np.linspace(0, int(ok.sum()) - 1, n).round().astype(np.int64)]
        out = np.empty((n, ctx), dtype=np.int32)
        out[:, 0] = self.eot
        out[:, 1:] = held.ids[starts[:, None] + np.arange(ctx - 1)]
        return out

    def text(self, chunk: CorpusChunk) -> str:
        """The stories as text (``<|endoftext|>`` between them)."""
        return self.tokenizer.decode(chunk.tokens.tolist())


def corpus_stats(tokens: np.ndarray, tokenizer) -> dict:
    """Next-token shares in a token stream: after " to", " in" and " of", the share of " the";
    and the number of tokens."""
    tokens = np.asarray(tokens).ravel()
    the = tokenizer.encode(" the", add_special_tokens=False)[0]
    out = {"tokens": int(len(tokens))}
    for word in ("to", "in", "of"):
        wid = tokenizer.encode(" " + word, add_special_tokens=False)[0]
        after = tokens[1:][tokens[:-1] == wid]
        out[f"p_the_after_{word}"] = float((after == the).mean()) if len(after) else float("nan")
    return out
