"""The real English text of the language model (docs/lm.md, "Real English text"): its books, how
often " the" follows " to" in it, and the vocabulary the English arm needs.

Reads the text fetched by ``mechtrunc lm english`` (default location, or ``--english-dir``) and
writes ``docs/data/lm_english_books.csv`` (words, paragraphs and tokens per book, held-out
share), ``docs/data/lm_english_the.csv`` (P(" the") after " to", "went to", " in", " of" in the
training part, as the model's stream holds it), ``docs/data/lm_english_mix.csv`` (the same after
" to", " in", " of" in the mixed training stream of the default corpus, per English share) and
``docs/data/lm_english_vocab.csv`` (for each
``english_vocab``: vocabulary size, the share of Pythia's tokens of the held-out English that the
vocabulary lacks, tokens per Pythia token and the unembedding's share of the FLOPs of a forward
pass of a 4-layer d 128 model at context 64), then the generated blocks of docs/lm.md.  Under a
minute on one core; the numbers are a function of the text and the code (no timing, no seed).

    python analyses/english_text.py [--english-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import _docs
from mechtrunc.models.lm.corpus import DEFAULT_ENGLISH_VOCAB, Corpus, CorpusConfig, corpus_stats
from mechtrunc.models.lm.english import ENGLISH_SHA256, default_english_dir, english_split, read_english, stream_text
from mechtrunc.models.lm.tokenizer import build_tokenizer_json, english_extra_tokens, english_token_counts, run_tokenizer

VOCABS = (0, 256, 512, 1024, 2048)
#: English shares of the mixed training stream whose next-token statistics are measured
SHARES = (0.0, 0.1, 0.3, 0.6)
#: batches (of the small preset's 32 x 64 tokens) measured per share
MIX_STEPS = 200
#: the English arm's model: 4 layers, d 128, the small preset's context
LAYERS, D_MODEL, CTX = 4, 128, 64


def _flop_share(vocab: int) -> float:
    """The unembedding's share of a forward pass's FLOPs per token (projections, MLP, attention
    scores over the context, unembedding)."""
    body = LAYERS * (12 * D_MODEL**2 + 2 * CTX * D_MODEL) * 2
    unembed = 2 * D_MODEL * vocab
    return unembed / (body + unembed)


def _next_tokens(ids: np.ndarray, context: list[int]) -> np.ndarray:
    """The tokens that follow each occurrence of ``context`` in ``ids``."""
    k = len(context)
    hit = np.ones(len(ids) - k, dtype=bool)
    for j, c in enumerate(context):
        hit &= ids[j:len(ids) - k + j] == c
    return ids[k:][hit]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--english-dir", default=None, help="the fetched text (default: mechtrunc lm english's default)")
    args = ap.parse_args(argv)
    where = Path(args.english_dir) if args.english_dir else default_english_dir()
    books = read_english(where, ENGLISH_SHA256)
    train, held = english_split(books)
    started = time.time()

    from tokenizers import Tokenizer

    import mechtrunc as mt

    full = mt.hf.tokenizer().backend_tokenizer  # Pythia's own BPE, offline

    def n_tokens(paras):
        return sum(len(e.ids) for e in full.encode_batch([stream_text(p) for p in paras], add_special_tokens=False))

    rows = []
    for book, paras in books.items():
        rows.append({"book": book, "paragraphs": len(paras), "words": sum(len(p.split()) for p in paras),
                     "pythia_tokens": n_tokens(paras), "heldout_paragraphs": len(held[book]),
                     "heldout_words": sum(len(p.split()) for p in held[book])})
    pd.DataFrame(rows).to_csv(_docs.DATA / "lm_english_books.csv", index=False)

    tok = run_tokenizer(CorpusConfig(english=1.0, english_dir=str(where)))
    ids = np.concatenate([np.asarray(e, dtype=np.int64) for paras in train.values()
                          for e in tok([stream_text(p) for p in paras], add_special_tokens=False)["input_ids"]])
    (the,) = tok.encode(" the")
    the_rows = []
    for context in (" to", " went to", " in", " of"):
        after = _next_tokens(ids, tok.encode(context))
        top = np.bincount(after).argmax()
        the_rows.append({"context": context.strip(), "p_the": round(float((after == the).mean()), 4), "count": len(after),
                         "top_next": tok.decode([int(top)]).strip(), "p_top_next": round(float((after == top).mean()), 4)})
    pd.DataFrame(the_rows).to_csv(_docs.DATA / "lm_english_the.csv", index=False)

    mix_rows = []
    for share in SHARES:
        corpus = Corpus(CorpusConfig(english=share, english_dir=str(where)) if share else CorpusConfig())
        stream = np.concatenate([corpus.batch(step, 32, CTX).ravel() for step in range(MIX_STEPS)])
        mix_rows.append({"english": share, **corpus_stats(stream, corpus.tokenizer)})
    pd.DataFrame(mix_rows).to_csv(_docs.DATA / "lm_english_mix.csv", index=False)

    counts = english_token_counts(p for paras in train.values() for p in paras)
    held_encs = full.encode_batch([stream_text(p) for paras in held.values() for p in paras], add_special_tokens=False)
    pythia_held = sum(len(e.ids) for e in held_encs)
    vocab_rows = []
    for n in VOCABS:
        text = build_tokenizer_json(extra_tokens=english_extra_tokens(counts, n))
        small = Tokenizer.from_str(text)
        vocab = set(json.loads(text)["model"]["vocab"])
        missing = sum(1 for e in held_encs for t in e.tokens if t not in vocab)
        ours = sum(len(e.ids) for e in small.encode_batch([stream_text(p) for paras in held.values() for p in paras],
                                                          add_special_tokens=False))
        size = small.get_vocab_size()
        vocab_rows.append({"english_vocab": n, "vocab_size": size, "missing_share": round(missing / pythia_held, 4),
                           "tokens_per_pythia_token": round(ours / pythia_held, 3),
                           "unembed_flop_share": round(_flop_share(size), 3)})
        print(vocab_rows[-1], file=sys.stderr)
    pd.DataFrame(vocab_rows).to_csv(_docs.DATA / "lm_english_vocab.csv", index=False)
    written = _docs.record_written("english_text.py", since=started)
    for name in _docs.ENGLISH_BLOCKS:
        _docs.write_block(name)
    print(f"wrote {', '.join(written)} and the blocks {', '.join(_docs.ENGLISH_BLOCKS)} of docs/lm.md "
          f"(default english_vocab {DEFAULT_ENGLISH_VOCAB})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
