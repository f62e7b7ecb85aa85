"""Noisy recall in words (the corpus' ``recall`` family, its prompts) and the study pieces that
serve it (tasks of a run, thresholds, the margin ledger)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import mechtrunc as mt
from mechtrunc.models.lm import Corpus, CorpusConfig, corpus_preset, lm_recall_prompts, lm_task_prompts, lm_tokenizer
from mechtrunc.models.lm import lexicon
from mechtrunc.studies import lm as S

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tok():
    return lm_tokenizer()


def _words(tok, chunk, start, stop):
    return tok.decode(chunk.tokens[start:stop].tolist())


def test_the_default_stream_is_unchanged_by_the_recall_family(tok):
    # the bytes of the default corpus before the recall family existed (numpy's PCG64 is portable)
    c = Corpus(CorpusConfig(), tok)
    assert hashlib.md5(c.stories(50).tokens.tobytes()).hexdigest() == "2140a0545ed27d9239227585b340ac6f"
    assert hashlib.md5(c.batch(3, 16, 64).tobytes()).hexdigest() == "e91a8cb27758057c194f06d91698c055"
    assert len(tok) == 1306  # no new token: the recall templates reuse the lexicon's words


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.6])
def test_recall_repeats_say_the_with_probability_alpha_and_otherwise_the_stated_city(tok, alpha):
    c = Corpus(corpus_preset("recall", recall_noise=alpha, seed=3), tok)
    chunk = c.stories(3000)
    noisy = clean = 0
    ends = np.append(chunk.story_starts[1:], len(chunk.tokens))
    for s0, s1 in zip(chunk.story_starts[:400], ends[:400]):
        sentences = [x.strip() + "." for x in _words(tok, chunk, s0 + 1, s1).split(".") if x.strip()]
        stated = {}
        for sent in sentences:
            if " went to " not in sent:
                continue
            name, place = sent.split(" went to ")
            if name in stated:  # a repeat: the stated city, or " the PLACE"
                if place.startswith("the "):
                    noisy += 1
                    assert place[4:-1] in lexicon.PLACES
                else:
                    clean += 1
                    assert place == stated[name] or sentences.count(f"{name} went to {place}") >= 2
            else:
                stated[name] = place
    share = noisy / (noisy + clean)
    assert abs(share - alpha) < 0.06, share
    assert noisy + clean > 150


def test_recall_repeats_come_in_shuffled_order(tok):
    c = Corpus(corpus_preset("recall", recall_noise=0.0, seed=1), tok)
    chunk = c.stories(4000)
    ends = np.append(chunk.story_starts[1:], len(chunk.tokens))
    first_is_first, two = 0, 0
    for s0, s1 in zip(chunk.story_starts, ends):
        went = [x.strip() for x in _words(tok, chunk, s0 + 1, s1).split(".") if " went to " in x]
        names = [x.split(" went to ")[0] for x in went]
        if len(went) == 4 and len(set(names)) == 2:  # two statements, two repeats
            two += 1
            first_is_first += names[2] == names[0]
    assert two > 200
    assert 0.4 < first_is_first / two < 0.6


def test_recall_prompts_are_stories_of_the_corpus_format(tok):
    cfg = corpus_preset("recall")
    ps = lm_recall_prompts(tok, cfg, n=60, seed=2)
    the = tok.encode(" the", add_special_tokens=False)[0]
    for i, text in enumerate(ps.texts):
        assert text.startswith("<|endoftext|> ")
        sentences = [x.strip() for x in text[len("<|endoftext|>"):].split(".")]
        query = sentences[-1]
        assert query.endswith(" went to") and query.count(" ") == 2
        stated = [x for x in sentences[:-1] if x.startswith(query.split()[0] + " went to ")]
        assert len(stated) == 1 and tok.decode(ps.answer[i]) == " " + stated[0].split()[-1]
        assert int(ps.competitors[i, 0]) == the
        other = tok.decode(ps.competitors[i, 1])
        assert other not in text and other != tok.decode(ps.answer[i])  # k = 1: an absent city
        assert len(sentences) - 1 == cfg.sentences_per_story  # a story: statement + distractors, then the query
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ps.tokens[i, : len(ids)].tolist() == ids and int(ps.pos[i]) == len(ids) - 1


def test_binding_prompts_hold_two_statements_and_the_other_city_is_stated(tok):
    ps = lm_task_prompts("binding", tok, corpus_preset("recall"), n=200, seed=0)
    first = 0
    for i, text in enumerate(ps.texts):
        answer, other = tok.decode(ps.answer[i]), tok.decode(ps.competitors[i, 1])
        assert answer != other and f"went to{answer}." in text and f"went to{other}." in text
        first += text.index(f"went to{answer}.") < text.index(f"went to{other}.")
    assert 70 < first < 130  # the queried statement is first about half the time
    assert ps.competitor_names == ("the", "other") and ps.meta["k"] == 2


def test_recall_prompt_arguments_are_checked(tok):
    with pytest.raises(ValueError, match=r"k \(statements in context\) must be an integer in \[1, 29\], got 0"):
        lm_recall_prompts(tok, corpus_preset("recall"), k=0)
    with pytest.raises(ValueError, match=r"distractors must be an integer >= 0, got -1"):
        lm_recall_prompts(tok, corpus_preset("recall"), distractors=-1)
    with pytest.raises(ValueError, match=r"recall_noise must be in \[0, 1\], got 1.5"):
        corpus_preset("recall", recall_noise=1.5)
    with pytest.raises(ValueError, match=r"unknown language-model task 'bind'; valid: .*binding"):
        lm_task_prompts("bind", tok)


def test_study_tasks_and_threshold_follow_the_corpus():
    assert S.study_tasks(CorpusConfig()) == ("ioi", "factual", "generic")
    assert S.study_tasks(corpus_preset("recall")) == ("recall", "binding")
    assert S.study_tasks(corpus_preset("recall_overweighted")) == ("recall", "binding", "generic")
    assert S.answer_tasks(S.study_tasks(corpus_preset("recall_overweighted"))) == ("recall", "binding")
    assert S.the_threshold(corpus_preset("recall", recall_noise=0.6)) == pytest.approx(0.3)
    assert S.the_threshold(CorpusConfig()) == pytest.approx(0.35)


def test_learning_steps_of_a_made_up_recall_history():
    rows = []
    for step, (ra, rt, bo) in {0: (0.0, 0.0, 0.5), 10: (0.1, 0.2, 0.5), 20: (0.5, 0.2, 0.6),
                                30: (0.4, 0.1, 0.8), 40: (0.7, 0.1, 0.9)}.items():
        rows += [{"step": step, "prompts": "recall/eval", "p_answer": ra, "p_the": rt},
                 {"step": step, "prompts": "binding/eval", "p_answer": ra, "p_the": rt, "acc_vs_other": bo}]
    got = S.learning_steps(pd.DataFrame(rows), the_threshold=0.15)
    assert got["step_the"] == 10.0 and got["step_recall_beats_the"] == 20.0 and got["step_binding"] == 30.0
    assert got["step_competition"] == 20.0 and got["the_first"] is True
    assert np.isnan(got["step_ioi_beats_the"]) and np.isnan(got["step_fact_beats_the"])
    assert np.isnan(S.learning_steps(pd.DataFrame(rows), the_threshold=0.0)["step_the"])  # alpha 0: never


def test_margin_ledger_splits_the_margin_and_removes_each_mlp(nano_run, tok):
    model = mt.hf.load_model(nano_run[0] / "step200", local_files_only=True)
    ps = lm_task_prompts("ioi", tok, n=16, seed=5)
    led = S.margin_ledger(model, ps)
    parts = led[led["kind"].isin(["mlp", "head", "embed", "other", "bias"])]["value"].sum()
    bias = mt.attribute(model, ps)
    bias = bias[(bias["kind"] == "attn_bias") & (bias["competitor"] == "the")]["attribution"].sum()
    total = float(led[led["kind"] == "total"]["value"].iloc[0])
    assert parts + bias == pytest.approx(total, abs=1e-3)
    assert total == pytest.approx(float(mt.evaluate(model, ps).iloc[0]["logit_diff_the"]), abs=1e-3)
    heads = led[led["kind"] == "head"].groupby("layer")["value"].sum()
    attn = led[led["kind"] == "attn"].set_index("layer")["value"]
    assert (attn - heads).abs().max() < 1.0  # heads plus the output bias
    removed = led[led["kind"] == "mlp_removed_p_the"].set_index("layer")["value"]
    assert list(removed.index) == [0, 1]
    want = mt.evaluate(model, ps, mt.Truncate("mlp.W_out", layer=1, keep=0.0)).iloc[0]["p_the"] - \
        mt.evaluate(model, ps).iloc[0]["p_the"]
    assert removed[1] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match=r"competitors are \('name',\)"):
        S.margin_ledger(model, lm_task_prompts("generic", tok, n=4))
