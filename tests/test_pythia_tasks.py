"""Pythia prompt tasks: IOI, factual recall and user prompt files, checked against Pythia's real
GPT-NeoX tokenizer (shipped in the package) and a small word-level tokenizer."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest
import torch

from mechtrunc.tasks._tokens import single_token_id, tokenize_prompts
from mechtrunc.tasks.factual import factual_facts, factual_prompts, factual_relations
from mechtrunc.tasks.files import load_prompts
from mechtrunc.tasks.ioi import IOI_TEMPLATES, ioi_names, ioi_prompts

MARY, JOHN, SPAIN, THE = 6393, 2516, 11268, 253


@pytest.fixture(scope="module")
def pythia_tok(pythia_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(pythia_tokenizer_dir))


@pytest.fixture()
def small_tok(small_tokenizer_dir):
    """The word-level tokenizer over "w0".."w510" (unknown words map to <unk>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(small_tokenizer_dir))


@pytest.fixture()
def small_tok_the(small_tok):
    """The small tokenizer plus the tokens "the" and "Spain", so " the" and " Spain" are one token."""
    small_tok.add_tokens(["the", "Spain"])
    return small_tok


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- token helpers


def test_single_token_id_pythia_ids(pythia_tok):
    assert single_token_id(pythia_tok, " Mary") == MARY
    assert single_token_id(pythia_tok, " John") == JOHN
    assert single_token_id(pythia_tok, " Spain") == SPAIN
    assert single_token_id(pythia_tok, " the") == THE
    assert single_token_id(pythia_tok, " Bartholomew") is None  # 5 BPE pieces
    assert single_token_id(pythia_tok, "") is None


def test_single_token_id_rejects_unknown(small_tok):
    assert single_token_id(small_tok, " w3") == 3
    assert single_token_id(small_tok, " w3 w4") is None
    assert single_token_id(small_tok, " Mary") is None  # maps to <unk>, not a real token


def test_tokenize_prompts_pads_right(pythia_tok):
    tokens, pos = tokenize_prompts(pythia_tok, ["When Mary", "Madrid is located in"])
    madrid = pythia_tok.encode("Madrid is located in")  # 'Mad' 'rid' ' is' ' located' ' in'
    assert len(madrid) == 5 and madrid[-1] == 275
    assert tokens.tolist() == [[3039, MARY, 0, 0, 0], madrid]
    assert pos.tolist() == [1, 4]


# ---------------------------------------------------------------- IOI


def test_builtin_names_are_single_pythia_tokens(pythia_tok):
    names = ioi_names()
    assert len(names) >= 40 and len(set(names)) == len(names)
    ids = {n: single_token_id(pythia_tok, " " + n) for n in names}
    assert [n for n, i in ids.items() if i is None] == []
    assert ids["Mary"] == MARY and ids["John"] == JOHN
    assert len(set(ids.values())) == len(names)


def test_templates_count_and_form():
    assert len(IOI_TEMPLATES) >= 15 and len(set(IOI_TEMPLATES)) == len(IOI_TEMPLATES)
    for t in IOI_TEMPLATES:
        assert t.count("{A}") == 1 and t.count("{B}") == 2 and t.index("{A}") < t.index("{B}")


def test_ioi_prompts_structure(pythia_tok):
    ps = _no_warnings(ioi_prompts, pythia_tok, n=200, seed=0)
    assert len(ps) == 200 and ps.n_sequences == 200
    assert torch.equal(ps.rows, torch.arange(200))
    assert ps.competitor_names == ("the", "subject")
    assert (ps.competitors[:, 0] == THE).all()
    assert (ps.answer != ps.competitors[:, 1]).all()  # the answer is never the subject
    for i, text in enumerate(ps.texts):
        io, subj = ps.meta["io"][i], ps.meta["subject"][i]
        assert io != subj
        assert int(ps.answer[i]) == single_token_id(pythia_tok, " " + io)
        assert int(ps.competitors[i, 1]) == single_token_id(pythia_tok, " " + subj)
        assert text.split().count(io) == 1 and text.count(subj) == 2
        template = IOI_TEMPLATES[ps.meta["template"][i]]
        if ps.meta["order"][i] == "ABB":
            assert text == template.format(A=io, B=subj)
            assert text.index(io) < text.index(subj)
        else:  # the first mentions swapped: the subject comes first
            assert text == template.replace("{A}", "@", 1).replace("{B}", "{A}", 1).replace("@", "{B}", 1).format(A=io, B=subj)
            assert text.index(subj) < text.index(io)


def test_ioi_pos_is_last_real_token(pythia_tok):
    ps = ioi_prompts(pythia_tok, n=60, seed=3)
    lengths = [len(pythia_tok.encode(t)) for t in ps.texts]
    assert ps.pos.tolist() == [n - 1 for n in lengths]
    assert ps.tokens.shape == (60, max(lengths))
    for i, text in enumerate(ps.texts):
        p = int(ps.pos[i])
        assert pythia_tok.decode(ps.tokens[i, : p + 1]) == text
        assert pythia_tok.decode(ps.tokens[i, p]) == " to"  # every built-in template ends "... to"
        assert (ps.tokens[i, p + 1 :] == 0).all()  # padded with id 0 (<|endoftext|>)


@pytest.mark.parametrize("n", [200, 36, 7, 1])
def test_ioi_balanced_over_templates_and_orders(pythia_tok, n):
    ps = ioi_prompts(pythia_tok, n=n, seed=1)
    T = len(IOI_TEMPLATES)
    tpl = Counter(ps.meta["template"])
    order = Counter(ps.meta["order"])
    counts = [tpl.get(t, 0) for t in range(T)]
    assert sum(counts) == n and max(counts) - min(counts) <= 1
    assert abs(order["ABB"] - order["BAB"]) <= 1 and order["ABB"] + order["BAB"] == n
    for t in range(T):
        per = Counter(o for tt, o in zip(ps.meta["template"], ps.meta["order"]) if tt == t)
        assert abs(per["ABB"] - per["BAB"]) <= 1
    if n == 200:  # 200 = 18 * 11 + 2 with the 18 built-in templates
        assert sorted(Counter(counts).items()) == [(11, T - 2), (12, 2)]
        assert order == {"ABB": 100, "BAB": 100}


def test_ioi_seeded_determinism(pythia_tok):
    a = ioi_prompts(pythia_tok, n=50, seed=7)
    b = ioi_prompts(pythia_tok, n=50, seed=7)
    c = ioi_prompts(pythia_tok, n=50, seed=8)
    assert a.texts == b.texts and torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.answer, b.answer) and torch.equal(a.competitors, b.competitors)
    assert a.meta["template"] == b.meta["template"] and a.meta["order"] == b.meta["order"]
    assert a.texts != c.texts


def test_ioi_custom_names_and_templates(pythia_tok):
    ps = ioi_prompts(pythia_tok, n=4, names=["Mary", "John"], templates=["When {A} and {B} met, {B} waved to"])
    expected = {
        ("ABB", "Mary", "John"): "When Mary and John met, John waved to",
        ("BAB", "Mary", "John"): "When John and Mary met, John waved to",
        ("ABB", "John", "Mary"): "When John and Mary met, Mary waved to",
        ("BAB", "John", "Mary"): "When Mary and John met, Mary waved to",
    }
    keys = list(zip(ps.meta["order"], ps.meta["io"], ps.meta["subject"]))
    assert ps.texts == [expected[k] for k in keys] and sorted(ps.meta["order"]) == ["ABB", "ABB", "BAB", "BAB"]
    by_answer = {int(a): int(s) for a, s in zip(ps.answer, ps.competitors[:, 1])}
    assert by_answer == {MARY: JOHN, JOHN: MARY}
    with pytest.raises(ValueError, match="ABB form"):
        ioi_prompts(pythia_tok, n=4, templates=["{B} and {A} met, {B} waved to"])
    with pytest.raises(ValueError, match="n must be >= 1"):
        ioi_prompts(pythia_tok, n=0)


def test_ioi_filters_multi_token_names_pythia(pythia_tok):
    with pytest.warns(UserWarning, match=r"dropping 2 IOI name\(s\).*\['Bartholomew', 'Xenophon'\]"):
        ps = ioi_prompts(pythia_tok, n=10, names=["Mary", "Bartholomew", "John", "Xenophon"])
    assert ps.meta["names"] == ["Mary", "John"]
    assert set(ps.answer.tolist()) == {MARY, JOHN}


def test_ioi_filters_multi_token_names_small_tokenizer(small_tok_the):
    names = ["w1", "w2", "w3 w4", "Mary", "w5"]
    with pytest.warns(UserWarning, match=r"\['w3 w4', 'Mary'\]"):
        ps = ioi_prompts(small_tok_the, n=8, names=names, templates=["w10 {A} w11 {B} w12 {B} w13"])
    the_id = small_tok_the.convert_tokens_to_ids("the")
    assert (ps.competitors[:, 0] == the_id).all()
    assert set(ps.answer.tolist()) <= {1, 2, 5} and (ps.answer != ps.competitors[:, 1]).all()
    assert ps.tokens.shape == (8, 7) and ps.pos.tolist() == [6] * 8
    assert (ps.tokens[:, 6] == 13).all() and (ps.tokens[:, 0] == 10).all()


def test_ioi_too_few_names_raises(small_tok):
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="at least 2 names") as e:
        ioi_prompts(small_tok, names=["w1", "Mary", "w3 w4"])
    msg = str(e.value)
    assert small_tok.name_or_path in msg  # names the tokenizer
    assert "1 remain (['w1'])" in msg and "rejected: ['Mary', 'w3 w4']" in msg


def test_ioi_without_the_token_raises(small_tok):
    with pytest.raises(ValueError, match="' the' is not a single token"):
        ioi_prompts(small_tok, names=["w1", "w2"], templates=["w10 {A} w11 {B} w12 {B} w13"])


# ---------------------------------------------------------------- factual recall


def test_builtin_facts_are_single_pythia_tokens(pythia_tok):
    facts = factual_facts()
    assert len(facts) >= 100 and len({p for _, p, _ in facts}) == len(facts)
    assert len(factual_relations()) >= 3
    assert {"city_country", "country_capital", "country_language"} <= set(factual_relations())
    bad = [(p, a) for _, p, a in facts if single_token_id(pythia_tok, a) is None]
    assert bad == []
    assert all(a.startswith(" ") and not p.endswith(" ") for _, p, a in facts)
    assert ("city_country", "Madrid is located in", " Spain") in facts
    assert ("country_capital", "The capital of France is", " Paris") in facts
    assert ("country_language", "The official language of Germany is", " German") in facts


def test_factual_prompts_pythia(pythia_tok):
    ps = _no_warnings(factual_prompts, pythia_tok)
    facts = factual_facts()
    assert len(ps) == len(facts) and ps.texts == [p for _, p, _ in facts]
    assert ps.competitor_names == ("the",) and ps.competitors.shape == (len(facts), 1)
    assert (ps.competitors == THE).all()
    i = ps.texts.index("Madrid is located in")
    assert int(ps.answer[i]) == SPAIN and ps.meta["relation"][i] == "city_country"
    assert pythia_tok.decode(ps.tokens[i, : ps.pos[i] + 1]) == "Madrid is located in"
    assert pythia_tok.decode(ps.tokens[i, ps.pos[i]]) == " in"
    assert ps.pos.tolist() == [len(pythia_tok.encode(t)) - 1 for t in ps.texts]
    assert [pythia_tok.decode(a) for a in ps.answer] == [a for _, _, a in facts]


def test_factual_relation_filter(pythia_tok):
    ps = factual_prompts(pythia_tok, relations=["country_capital"])
    n_cap = sum(r == "country_capital" for r, _, _ in factual_facts())
    assert len(ps) == n_cap >= 30 and set(ps.meta["relation"]) == {"country_capital"}
    with pytest.raises(ValueError, match=r"unknown relation.*'capitals'.*valid relations"):
        factual_prompts(pythia_tok, relations=["capitals"])


def test_factual_drops_multi_token_answers_with_warning(small_tok_the):
    with pytest.warns(UserWarning, match=r"dropping \d+ fact\(s\).*'The capital of France is' -> ' Paris'"):
        ps = factual_prompts(small_tok_the)
    spain = [p for _, p, a in factual_facts() if a == " Spain"]
    assert ps.texts == spain and len(spain) == 3
    assert (ps.answer == small_tok_the.convert_tokens_to_ids("Spain")).all()


def test_factual_no_valid_answer_raises(small_tok):
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no factual prompt has a single-token answer"):
        factual_prompts(small_tok)


# ---------------------------------------------------------------- user files


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_csv(pythia_tok, tmp_path):
    p = _write(tmp_path, "facts.csv",
               'prompt,answer,competitors,relation\n'
               'Madrid is located in, Spain, the| John,city\n'
               '"When Mary and John went to the store, John gave a drink to", Mary, the| John,ioi\n')
    ps = load_prompts(p, pythia_tok)
    assert ps.texts == ["Madrid is located in", "When Mary and John went to the store, John gave a drink to"]
    assert ps.answer.tolist() == [SPAIN, MARY]
    assert ps.competitors.tolist() == [[THE, JOHN], [THE, JOHN]]
    assert ps.competitor_names == ("the", "John")
    assert ps.pos.tolist() == [4, len(pythia_tok.encode(ps.texts[1])) - 1]
    assert pythia_tok.decode(ps.tokens[1, ps.pos[1]]) == " to" and (ps.tokens[0, 5:] == 0).all()
    assert ps.meta["relation"] == ["city", "ioi"]


def test_load_csv_default_competitor(pythia_tok, tmp_path):
    p = _write(tmp_path, "a.csv", "prompt,answer\nMadrid is located in, Spain\nThe capital of France is, Paris\n")
    ps = load_prompts(p, pythia_tok)
    assert ps.competitors.tolist() == [[THE], [THE]] and ps.competitor_names == ("the",)
    p2 = _write(tmp_path, "b.csv", "prompt,answer,competitors\nMadrid is located in, Spain,\n")
    assert load_prompts(p2, pythia_tok).competitors.tolist() == [[THE]]


def test_load_jsonl(pythia_tok, tmp_path):
    rows = [
        {"prompt": "Madrid is located in", "answer": " Spain", "competitors": [" the", " Mary"]},
        {"prompt": "The capital of France is", "answer": " Paris", "competitors": " the| John"},
    ]
    p = _write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = load_prompts(str(p), pythia_tok)
    assert ps.answer.tolist() == [SPAIN, pythia_tok.encode(" Paris")[0]]
    assert ps.competitors.tolist() == [[THE, MARY], [THE, JOHN]]
    assert ps.competitor_names == ("c0", "c1")  # second competitor differs across rows
    p1 = _write(tmp_path, "one.jsonl", json.dumps({"prompt": "Madrid is located in", "answer": " Spain"}))
    one = load_prompts(p1, pythia_tok)
    assert one.competitors.tolist() == [[THE]] and one.competitor_names == ("the",) and one.pos.tolist() == [4]


@pytest.mark.parametrize(
    "name, text, pattern",
    [
        ("a.csv", "prompt,answer\nMadrid is located in,\n", r"a\.csv, row 1 \(line 2\): answer '' is not a single token"),
        ("a.csv", "prompt,answer\nX, Spain\nY, Bartholomew\n",
         r"a\.csv, row 2 \(line 3\): answer ' Bartholomew' is not a single token.*5 tokens"),
        ("a.csv", "prompt,answer\nX,Canberra\n", r"'Canberra'.*leading space"),
        ("a.csv", "prompt,answer\n ,  Spain\n", r"a\.csv, row 1 \(line 2\): empty prompt"),
        ("a.csv", "prompt,answer,competitors\nX, Spain, the| Xenophon\n",
         r"row 1 \(line 2\): competitor ' Xenophon' is not a single token"),
        ("a.csv", "prompt,answer,competitors\nX, Spain, the\nY, Spain, the| John\n",
         r"row 2 \(line 3\): 2 competitors.*first record has 1"),
        ("a.csv", "prompt,competitors\nX, the\n", r"a\.csv: missing column\(s\) \['answer'\]; found \['prompt', 'competitors'\]"),
        ("a.csv", "", r"a\.csv: the prompt file is empty"),
        ("a.jsonl", " \n\n", r"a\.jsonl: the prompt file is empty"),
        ("a.csv", "prompt,answer\n", r"a\.csv: no prompts found"),
        ("a.jsonl", '{"prompt": "X", "answer": " Spain"}\n{"prompt": "Y"}\n',
         r"a\.jsonl, line 2: missing field\(s\) \['answer'\]"),
        ("a.jsonl", '{"prompt": "X", "answer": " Spain"}\n\n{"prompt": "Y", "answer": " Spainish"}\n',
         r"a\.jsonl, line 3: answer ' Spainish' is not a single token"),
        ("a.jsonl", '{"prompt": "", "answer": " Spain"}\n', r"line 1: empty prompt"),
        ("a.jsonl", '{"prompt": "X", "answer": " Spain"\n', r"a\.jsonl, line 1: invalid JSON"),
        ("a.jsonl", '["X", " Spain"]\n', r"line 1: expected a JSON object"),
        ("a.jsonl", '{"prompt": "X", "answer": " Spain", "competitors": [1]}\n', r"line 1: competitors must be"),
        ("a.jsonl", '{"prompt": "X", "answer": 3}\n', r"line 1: answer must be a string, got 3"),
        ("a.txt", "prompt,answer\nX, Spain\n", r"a\.txt: unknown extension '\.txt'; valid extensions are '\.csv' and '\.jsonl'"),
    ],
)
def test_load_errors(pythia_tok, tmp_path, name, text, pattern):
    p = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=pattern):
        load_prompts(p, pythia_tok)


def test_load_missing_file(pythia_tok, tmp_path):
    with pytest.raises(ValueError, match=r"nope\.csv does not exist"):
        load_prompts(tmp_path / "nope.csv", pythia_tok)


def test_load_small_tokenizer_rejects_unknown(small_tok, tmp_path):
    p = _write(tmp_path, "s.csv", "prompt,answer,competitors\nw1 w2, w3, w4\nw5, Spain, w4\n")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\): answer ' Spain' is not a single token"):
        load_prompts(p, small_tok)
    ok = load_prompts(_write(tmp_path, "t.csv", "prompt,answer,competitors\nw1 w2, w3, w4\n"), small_tok)
    assert ok.tokens.tolist() == [[1, 2]] and ok.answer.tolist() == [3] and ok.competitor_names == ("w4",)


# ------------------------------------------------------------------------------------------
# mt.hf.tokenizer(): Pythia's tokenizer offline, from the copy shipped in the package
# ------------------------------------------------------------------------------------------
def test_shipped_pythia_tokenizer_offline(tmp_path, monkeypatch):
    import mechtrunc as mt

    monkeypatch.setenv("MECHTRUNC_CACHE", str(tmp_path / "cache"))
    assert mt.hf.PYTHIA_TOKENIZER_JSON.parent.name == "data"
    assert mt.hf.PYTHIA_TOKENIZER_JSON.parent.parent == __import__("pathlib").Path(mt.__file__).parent
    for name in (None, "pythia", "EleutherAI/pythia-160m", "EleutherAI/pythia-1.4b-deduped"):
        tok = mt.hf.tokenizer(name)
        assert [tok.encode(w)[0] for w in (" Mary", " John", " Spain", " the")] == [MARY, JOHN, SPAIN, THE]
        assert len(tok) == 50280 and tok.eos_token_id == 0
        # loaded from disk (name_or_path set), so a bridge can boot with it
        assert str(tmp_path / "cache") in tok.name_or_path
    # written once: one directory in the cache
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_non_pythia_tokenizer_falls_back_to_the_hub(tmp_path, monkeypatch, small_tokenizer_dir):
    import huggingface_hub.constants as hub_constants

    import mechtrunc as mt

    # a local directory is loaded as is
    assert mt.hf.tokenizer(str(small_tokenizer_dir)).encode("w5 w7") == [5, 7]
    # a hub id that is not cached, offline: a readable error naming it
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(mt.hf.ModelNotAvailableError, match=r"model 'gpt2' .* offline mode is on"):
        mt.hf.tokenizer("gpt2")
    with pytest.raises(mt.hf.ModelNotAvailableError, match="no such tokenizer directory: ./nowhere/tok"):
        mt.hf.tokenizer("./nowhere/tok")
