"""The language model of mechtrunc.lm: corpus, tokenizer, prompts, training (issue 15)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mechtrunc.lm import lexicon
from mechtrunc.lm.corpus import Corpus, CorpusConfig, corpus_preset, corpus_stats
from mechtrunc.lm.tokenizer import lm_tokenizer


@pytest.fixture(scope="module")
def tok():
    return lm_tokenizer()


@pytest.fixture(scope="module")
def corpus(tok):
    return Corpus(CorpusConfig(seed=3), tok)


# ------------------------------------------------------------------ tokenizer
def test_lexicon_words_are_single_pythia_tokens_and_keep_pythia_segmentation(tok):
    import mechtrunc as mt

    pythia = mt.pythia.tokenizer()
    assert len(lexicon.NAMES) >= 150
    for words in (lexicon.NAMES, *lexicon.SLOTS.values()):
        for w in words:
            assert len(pythia.encode(" " + w)) == 1, w
            assert len(tok.encode(" " + w)) == 1, w
    text = " When Mary and John went to the store, John gave a drink to Mary. Mary lives in Paris."
    assert tok.convert_ids_to_tokens(tok.encode(text)) == pythia.convert_ids_to_tokens(pythia.encode(text))
    assert 500 < len(tok) < 2000  # a compact vocabulary
    assert (tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<|endoftext|>")) == (0, 1, 0)
    # text outside the lexicon still round-trips (byte fallback)
    assert tok.decode(tok.encode(" Zyxw quokka 42!")) == " Zyxw quokka 42!"


def test_tokenizer_round_trips_through_auto_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = " After Anna and Tom met at the park, Tom showed a map to Anna."
    assert again.encode(text) == tok.encode(text)
    assert again.eos_token_id == 0 and again.pad_token_id == 1


# ------------------------------------------------------------------ corpus
def test_same_seed_same_bytes_other_seed_other_bytes(tok):
    a, b = Corpus(CorpusConfig(seed=5), tok), Corpus(CorpusConfig(seed=5), tok)
    ca, cb = a.stories(300), b.stories(300)
    assert a.text(ca).encode() == b.text(cb).encode()
    assert np.array_equal(a.batch(7, 4, 16), b.batch(7, 4, 16))
    c = Corpus(CorpusConfig(seed=6), tok).stories(300)
    assert not np.array_equal(ca.tokens[:500], c.tokens[:500])
    assert not np.array_equal(a.batch(7, 4, 16), a.batch(8, 4, 16))


def test_token_stream_equals_tokenizing_its_text(corpus):
    chunk = corpus.stories(200)
    assert corpus.tokenizer.encode(corpus.text(chunk)) == chunk.tokens.tolist()
    assert (chunk.tokens[chunk.story_starts] == corpus.tokenizer.eos_token_id).all()
    assert (chunk.tokens == corpus.tokenizer.eos_token_id).sum() == 200


def test_every_ioi_answer_is_the_indirect_object(corpus):
    chunk = corpus.stories(400)
    names = {corpus.tokenizer.encode(" " + n)[0] for n in lexicon.NAMES}
    to, the = corpus.tokenizer.encode(" to")[0], corpus.tokenizer.encode(" the")[0]
    n_name = n_the = 0
    for start, stop in chunk.sentences("ioi"):
        sent = chunk.tokens[start:stop].tolist()
        if sent[-3] == the:  # "... to the ROLE ." (IOI noise)
            assert sent[-4] == to and sent[-2] not in names
            n_the += 1
            continue
        assert sent[-3] == to  # "... to X ."
        mentioned = [t for t in sent[:-3] if t in names]
        io = [t for t in set(mentioned) if mentioned.count(t) == 1]
        subject = [t for t in set(mentioned) if mentioned.count(t) == 2]
        assert len(io) == 1 and len(subject) == 1, corpus.tokenizer.decode(sent)
        n_name += 1
        assert sent[-2] == io[0], corpus.tokenizer.decode(sent)
    assert n_name > 100 and n_the > 20  # ioi_the_share 0.25: both endings occur


def test_facts_are_recalled_in_the_same_story(corpus):
    chunk = corpus.stories(200)
    stories = np.split(chunk.tokens, chunk.story_starts[1:])
    text = [corpus.tokenizer.decode(s.tolist()) for s in stories]
    n = 0
    for start, _ in chunk.sentences("fact"):
        n += 1
    assert n > 50
    for t in text:
        facts = [s.strip() + "." for s in t.replace("<|endoftext|>", "").split(".")
                 if any(r in s for r in (" lives in ", " was born in ", " works in "))]
        half = len(facts) // 2
        assert facts[:half] == facts[half:]  # every statement recalled, in order, at the end


def test_heldout_names_and_templates_never_in_training(tok):
    cfg = CorpusConfig(seed=1)
    corpus = Corpus(cfg, tok)
    stream = np.concatenate([corpus.stories(300).tokens, corpus.batch(0, 8, 64).ravel()])
    held_ids = [tok.encode(" " + n)[0] for n in cfg.heldout_names]
    assert len(held_ids) >= 20 and not np.isin(stream, held_ids).any()
    text = corpus.text(corpus.stories(300))
    assert not any(f" {n} " in text or f" {n}." in text or f" {n}," in text for n in cfg.heldout_names)
    for i in cfg.heldout_templates:
        marker = lexicon.IOI[i].split("{P}, {B} ")[1].split(" {O}")[0]  # e.g. "showed a"
        assert f" {marker} " not in text
    assert sum(f" {n} " in text for n in cfg.names_for_training()) > 100


def test_to_the_share_moves_the_next_token_statistics(tok):
    hi = Corpus(CorpusConfig(to_the_share=0.9), tok)
    lo = Corpus(corpus_preset("rare_the"), tok)
    s_hi = corpus_stats(hi.stories(500).tokens, tok)
    s_lo = corpus_stats(lo.stories(500).tokens, tok)
    assert s_hi["p_the_after_to"] > 0.6 > 0.3 > s_lo["p_the_after_to"]
    assert s_hi["p_the_after_of"] == 1.0 and s_hi["p_the_after_in"] > 0.3


@pytest.mark.parametrize("kwargs, match", [
    (dict(ioi=-0.1, filler=0.45), r"ioi must be a finite number >= 0, got -0\.1"),
    (dict(ioi=0.5), r"must sum to 1, got 1\.25"),
    (dict(to_the_share=1.5), r"to_the_share must be in \[0, 1\], got 1\.5"),
    (dict(train_names=("Mary", "John", "Ruth", "Sarah")), r"\['Sarah'\] are both held out and requested in training"),
    (dict(heldout_names=("Mary", "Zorblax")), r"heldout_names \['Zorblax'\] are not lexicon names"),
    (dict(heldout_templates=(99,)), r"heldout_templates \[99\] are not IOI template indices \(valid: 0\.\.7\)"),
    (dict(sentences_per_story=0), r"sentences_per_story must be an integer >= 1, got 0"),
])
def test_bad_corpus_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CorpusConfig(**kwargs)


def test_unknown_corpus_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown corpus preset 'huge'; valid presets: default, rare_the"):
        corpus_preset("huge")


def test_config_round_trips_through_a_dict():
    cfg = CorpusConfig(seed=2, to_the_share=0.4, train_names=("Mary", "John", "Anna"))
    assert CorpusConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
