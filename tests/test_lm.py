"""The language model of mechtrunc.models.lm: corpus, tokenizer, prompts, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mechtrunc.models.lm import lexicon
from mechtrunc.models.lm.corpus import Corpus, CorpusConfig, corpus_preset, corpus_stats
from mechtrunc.models.lm.tokenizer import lm_tokenizer


@pytest.fixture(scope="module")
def tok():
    return lm_tokenizer()


@pytest.fixture(scope="module")
def corpus(tok):
    return Corpus(CorpusConfig(seed=3), tok)


# ------------------------------------------------------------------ tokenizer
def test_lexicon_words_are_single_pythia_tokens_and_keep_pythia_segmentation(tok):
    import mechtrunc as mt

    pythia = mt.hf.tokenizer()
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


# ------------------------------------------------------------------ prompts
def test_heldout_prompt_sets_use_only_heldout_names_and_templates(tok):
    from mechtrunc.models.lm.prompts import lm_fact_prompts, lm_generic_prompts, lm_ioi_prompts

    cfg = CorpusConfig()
    heldout = lm_ioi_prompts(tok, cfg, n=40, seed=1)  # held-out templates, training names
    assert not (set(heldout.meta["io"]) | set(heldout.meta["subject"])) & set(cfg.heldout_names)
    assert all(" showed a " in t or " threw a " in t for t in heldout.texts)
    ioi = lm_ioi_prompts(tok, cfg, n=40, seed=1, split="heldout_names")
    assert set(ioi.meta["io"]) | set(ioi.meta["subject"]) <= set(cfg.heldout_names)
    assert all(" showed a " in t or " threw a " in t for t in ioi.texts)  # held-out templates 6, 7
    for i in range(len(ioi)):
        assert tok.decode(ioi.answer[i]) == " " + ioi.meta["io"][i]
        assert tok.decode(ioi.competitors[i, 1]) == " " + ioi.meta["subject"][i]
        assert tok.decode(ioi.competitors[i, 0]) == " the"
    train = lm_ioi_prompts(tok, cfg, n=40, seed=1, split="train")
    assert not (set(train.meta["io"]) & set(cfg.heldout_names))
    generic = lm_generic_prompts(tok, cfg, n=10, seed=0)
    assert generic.texts[0] == "<|endoftext|> Rebecca walked to" and all(t.endswith(" to") for t in generic.texts)
    assert (generic.answer == tok.encode(" the")[0]).all() and generic.competitor_names == ("name",)
    assert all(tok.decode(c) not in t for c, t in zip(generic.competitors[:, 0], generic.texts))
    facts = lm_fact_prompts(tok, cfg, n=30, seed=2, split="heldout_names")
    for i, text in enumerate(facts.texts):
        who = text.split()[1]
        assert who in cfg.heldout_names and text.endswith(" in")
        assert text.startswith(f"<|endoftext|> {who} {facts.meta['relation'][i]}{facts.meta['answer_text'][i]}.")
        assert facts.tokens[i, facts.pos[i]] == tok.encode(" in")[0]
    with pytest.raises(ValueError, match=r"split must be one of \('heldout', 'heldout_names', 'train'\), got 'test'"):
        lm_ioi_prompts(tok, cfg, split="test")
    with pytest.raises(ValueError, match=r"holds out no IOI template \(heldout_templates=\[\]\)"):
        lm_ioi_prompts(tok, CorpusConfig(heldout_templates=()))


def test_prompts_are_in_the_format_of_the_training_stories(tok):
    """A story of the training stream opens with <|endoftext|> and its first sentence; every
    evaluation prompt does too (a model is evaluated on prompts in the format it was trained on)."""
    from mechtrunc.models.lm.corpus import Corpus
    from mechtrunc.models.lm.prompts import TASKS, lm_task_prompts

    cfg = CorpusConfig()
    chunk = Corpus(cfg, tok).stories(20)
    eot = tok.eos_token_id
    assert (chunk.tokens[chunk.story_starts] == eot).all()
    firsts = set(chunk.tokens[chunk.story_starts + 1].tolist())  # first token of a story: a sentence start
    assert eot not in firsts and all(tok.decode([t]).startswith(" ") for t in firsts)
    for task in TASKS:
        for split in ("heldout", "heldout_names", "train"):
            ps = lm_task_prompts(task, tok, cfg, n=12, seed=3, split=split)
            assert (ps.tokens[:, 0] == eot).all(), (task, split)
            assert all(tok.decode([int(t)]).startswith(" ") for t in ps.tokens[:, 1]), (task, split)
            assert all(t.startswith("<|endoftext|> ") for t in ps.texts)
            # the special token appears only there: the rest is real text (then right padding)
            real = torch.arange(ps.tokens.shape[1])[None] <= ps.pos[:, None]
            assert int((ps.tokens[real] == eot).sum()) == ps.n_sequences
    with pytest.raises(ValueError, match=r"unknown language-model task 'recollection'; valid: ioi, factual, generic, "
                                         r"recall, binding"):
        lm_task_prompts("recollection", tok, cfg)


# ------------------------------------------------------------------ training
from mechtrunc.models.lm.train import LMConfig, checkpoint_steps, lm_preset, train_lm  # noqa: E402


def _nano(**kw):
    return lm_preset("nano", **kw)


def test_checkpoint_schedule_is_pythias():
    assert checkpoint_steps(200, 50) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 200]
    assert checkpoint_steps(1300, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 750, 1000, 1250, 1300]
    assert checkpoint_steps(3, 1) == [0, 1, 2, 3]


def test_nano_trains_and_its_checkpoints_load(nano_run):
    import mechtrunc as mt
    from transformers import AutoTokenizer
    from mechtrunc.models.lm.prompts import lm_fact_prompts, lm_ioi_prompts
    from mechtrunc.studies.checkpoints import CheckpointDirectory

    out, summary = nano_run
    assert CheckpointDirectory(out).steps() == checkpoint_steps(200, 50) == summary["checkpoints"]
    import csv

    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 200
    first, last = float(rows[0]["loss"]), summary["final_loss"]
    assert first > 6.5 and last < 3.0  # ln(1302) = 7.2 at initialisation; the corpus is learnable
    tok = AutoTokenizer.from_pretrained(out / "step200")
    model = mt.hf.load_model(out / "step200")
    assert type(model).__name__ == "TransformerBridge"
    assert model.cfg.n_layers == 2 and model.cfg.d_vocab == len(tok)
    ioi = mt.evaluate(model, lm_ioi_prompts(tok, n=32)).iloc[0]
    # after 200 steps a name or " the" follows "to": most of the mass on the two candidates' kinds
    assert ioi["p_the"] > 0.05 and 0.0 <= ioi["p_answer"] <= 1.0
    fact = mt.evaluate(model, lm_fact_prompts(tok, n=32)).iloc[0]
    assert fact["n_items"] == 32
    # the built-in IOI prompts work unchanged on the tokenizer too
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every built-in IOI name is a lexicon name
        assert len(mt.ioi_prompts(tok, n=8)) == 8


def test_checkpoint_study_reads_the_run_directory_as_it_is(nano_run):
    import mechtrunc as mt
    from mechtrunc.models.lm.prompts import lm_ioi_prompts

    out, _ = nano_run
    table = mt.studies.checkpoint_study(out, [0, 128], lambda tok: lm_ioi_prompts(tok, n=16),
                                        truncation=mt.Truncate("mlp.W_out", layer=1, keep=0.1), progress=False)
    full = table[table["variant"] == "full"].set_index("step")
    assert list(full.index) == [0, 128] and (table["n_items"] == 16).all()
    # " the" after "to" is learned within 128 steps of nano (at initialisation: about 1/1306)
    assert full.loc[0, "p_the"] < 0.01 < 0.1 < full.loc[128, "p_the"]


def test_resume_after_interrupt_gives_the_same_weights(nano_run, tmp_path):
    import torch

    out, _ = nano_run
    other = tmp_path / "resumed"

    def interrupt(step, loss):
        if step == 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lm(_nano(), other, progress=False, callback=interrupt)
    assert not (other / "step200").exists() and (other / "step64").is_dir()
    summary = train_lm(_nano(), other, progress=False)
    assert summary["resumed_from"] == 64
    a = torch.load(out / "state.pt", weights_only=False)["model"]
    b = torch.load(other / "state.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run reruns as a no-op that keeps the summary of the run that trained
    assert summary == json.loads((other / "summary.json").read_text()) and "already_finished" not in summary
    assert train_lm(_nano(), other, progress=False) == {**summary, "already_finished": True}
    assert summary["tokens_per_second"] > 0


def test_a_finished_run_is_never_changed(tmp_path):
    from helpers import dir_snapshot

    out = tmp_path / "run"
    first = train_lm(_nano(steps=4), out, progress=False)
    before = dir_snapshot(out)
    again = train_lm(_nano(steps=4), out, progress=False)
    assert again == {**first, "already_finished": True} and dir_snapshot(out) == before
    for kw, extend, named in ((dict(steps=3), False, r"steps: 4 there, 3 asked\); nothing was changed: use a new"),
                              (dict(steps=3), True, r"steps: 4 there, 3 asked\); .*--extend only lengthens a run"),
                              (dict(steps=8, seed=1), True, r"steps: 4 there, 8 asked; seed: 0 there, 1 asked\)"),
                              (dict(steps=4, corpus=CorpusConfig(seed=5)), False, r"corpus\.seed: 0 there, 5 asked\)")):
        with pytest.raises(ValueError, match=rf"{out} holds a different run \({named}"):
            train_lm(_nano(**kw), out, progress=False, extend=extend)
        assert dir_snapshot(out) == before
    # the presets' learning rate depends on steps (warm-up, cosine decay): an extension is refused, saying why
    for extend in (False, True):
        with pytest.raises(ValueError, match=r"steps: 4 there, 8 asked\); nothing was changed: it cannot be extended "
                                             r"to 8 steps, because its learning rate depends on steps .*: update 3 had lr "
                                             r"0\.002325 in this run and would have 0\.002866 in a 8-step run"):
            train_lm(_nano(steps=8), out, progress=False, extend=extend)
        assert dir_snapshot(out) == before


def test_extension_at_a_constant_learning_rate_equals_a_straight_run(tmp_path):
    import torch

    flat = dict(warmup=0.0, min_lr_ratio=1.0)  # a learning rate that does not depend on steps
    straight = train_lm(_nano(steps=8, **flat), tmp_path / "straight", progress=False)
    train_lm(_nano(steps=5, **flat), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"steps: 5 there, 8 asked\); nothing was changed: add --extend"):
        train_lm(_nano(steps=8, **flat), tmp_path / "run", progress=False)
    ext = train_lm(_nano(steps=8, **flat), tmp_path / "run", progress=False, extend=True)
    assert ext["resumed_from"] == 5 and ext["steps"] == 8 and ext["final_loss"] == straight["final_loss"]
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"] == b["history"]  # step, loss, lr, tokens of every update
    # the old final checkpoint stays, as one more step directory
    assert straight["checkpoints"] == [0, 1, 2, 4, 8] and ext["checkpoints"] == [0, 1, 2, 4, 5, 8]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["steps"] == 8


def test_a_directory_holding_another_run_is_refused(nano_run, tmp_path):
    out, _ = nano_run
    before = (out / "run.json").read_text()
    with pytest.raises(ValueError, match=r"holds a different run \(d_model: 64 there, 32 asked\); nothing was changed"):
        train_lm(_nano(d_model=32), out, progress=False)
    assert (out / "run.json").read_text() == before
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not a mechtrunc lm run directory"):
        train_lm(_nano(), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=30), r"d_model 30 is not divisible by n_heads 4"),
    (dict(steps=0), r"steps must be an integer >= 1, got 0"),
    (dict(lr=-1.0), r"lr must be a number in \(0, inf\], got -1\.0"),
    (dict(precision="fp8"), r"precision must be one of \('fp32', 'bf16'\), got 'fp8'"),
    (dict(threads=0), r"threads must be an integer >= 1, got 0"),
    (dict(processes=0), r"processes must be an integer >= 1, got 0"),
    (dict(processes=-2), r"processes must be an integer >= 1, got -2"),
    (dict(processes=1.5), r"processes must be an integer, got 1\.5"),
    (dict(processes="two"), r"processes must be an integer \(int, NumPy or 0-d torch integer\), got 'two'"),
    (dict(processes=9), r"processes must be an integer in 1\.\.8 \(each process trains on a share of the batch's 8 "
                        r"rows\), got 9"),
    (dict(processes=2, device="cuda"), r"processes=2 \(data parallelism over local processes\) trains on the cpu "
                                       r"only, got device 'cuda'"),
])
def test_bad_lm_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _nano(**kwargs)


def test_fast_preset_is_smalls_model_on_two_processes_with_four_times_the_tokens_per_step():
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.models.lm.train import build_model

    small, fast = lm_preset("small"), lm_preset("fast")
    differ = {k for k, v in small.to_dict().items() if fast.to_dict()[k] != v}
    assert differ == {"ctx", "batch_size", "steps", "processes"}
    assert (fast.processes, fast.threads, small.processes, small.threads) == (2, 1, 1, 1)
    assert fast.batch_size * fast.ctx == 4 * small.batch_size * small.ctx == 4096
    assert fast.steps * fast.batch_size * fast.ctx == 20_480_000  # 20.5M tokens
    n = len(lm_tokenizer())
    count = [sum(p.numel() for p in build_model(c, n).parameters()) for c in (small, fast)]
    assert count == [1_127_680, 1_127_680]  # rotary positions: the context adds no weights


def test_same_config_and_thread_count_give_bit_identical_weights(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    # two threads on nano's model, in a child process whose OpenMP threads
    # sleep while they wait (OMP_WAIT_POLICY=PASSIVE, read when torch loads; it changes no number):
    # with the default policy two threads take minutes when other processes hold the cores
    code = ("import sys, torch; from mechtrunc.models.lm.train import lm_preset, train_lm; "
            "before = torch.get_num_threads(); "
            "[train_lm(lm_preset('nano', steps=2, threads=2), sys.argv[1] + '/' + n, progress=False) for n in 'ab']; "
            "assert torch.get_num_threads() == before, 'train_lm did not restore the thread count'")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env, timeout=600)
    a, b = (torch.load(tmp_path / name / "state.pt", weights_only=False) for name in "ab")
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"] == b["history"] and len(a["history"]) == 2


def test_gradients_summed_over_ranks_equal_the_whole_batch():
    """One update of three ranks (threads of this process, a real gloo group) on unequal shares
    of nano's 8 rows (2, 3, 3) against the one-process update: the summed gradient is the
    whole batch's, up to float summation order (unclipped: clipping to norm 1 would hide a
    wrong scale, and AdamW's update nearly does)."""
    import threading
    from contextlib import nullcontext

    import torch.distributed as dist

    from mechtrunc.models.lm import train as lm_train
    from mechtrunc.models.lm.tokenizer import run_tokenizer

    cfg = _nano(grad_clip=0.0, processes=3)
    tok = run_tokenizer(cfg.corpus)
    batch = torch.from_numpy(Corpus(cfg.corpus, tok).batch(0, cfg.batch_size, cfg.ctx)).long()
    assert [(lm_train._rows(cfg, r).start, lm_train._rows(cfg, r).stop) for r in range(3)] == [(0, 2), (2, 5), (5, 8)]

    def update(config, rows, group=None, built=None):
        model, opt = built or lm_train._model_and_optimizer(config, len(tok))
        loss = lm_train._update(model, opt, config, batch[rows], 0, nullcontext(), group)
        return loss, [p.grad.clone() for p in model.parameters()], model.state_dict()

    store, ranks, errors = dist.HashStore(), {}, []
    built = [lm_train._model_and_optimizer(cfg, len(tok)) for _ in range(3)]  # seeding is global: not in threads

    def rank(r):
        try:
            ranks[r] = update(cfg, lm_train._rows(cfg, r), lm_train._gloo_group(store, r, 3), built[r])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(ranks) == 3
    loss, grads, state = update(dataclasses.replace(cfg, processes=1), slice(None))
    for r in (1, 2):  # every rank holds the same sum, and steps to the same weights
        assert ranks[r][0] == ranks[0][0]
        assert all(torch.equal(a, b) for a, b in zip(ranks[r][1], ranks[0][1]))
        assert all(torch.equal(ranks[r][2][k], ranks[0][2][k]) for k in state)
    assert abs(ranks[0][0] - loss) < 1e-6 * loss  # measured: equal to 6 digits
    worst = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ranks[0][1], grads))
    assert worst < 1e-5  # measured 6e-7 (float32 rounding); weighting the shares equally (1/3) fails this test


def test_two_processes_train_as_one_and_resume_bit_identically(tmp_path):
    """nano on 2 processes: twice the same numbers (one of the two runs interrupted at step 3 and
    resumed from its step-2 checkpoint, on new processes), and the numbers of one process on
    the same global batches within float summation order."""
    import time

    steps, runs = 5, {}
    for name, processes in (("one", 1), ("two", 2)):
        t0 = time.perf_counter()
        runs[name] = train_lm(_nano(steps=steps, processes=processes), tmp_path / name, progress=False)
        runs[name]["wall"] = time.perf_counter() - t0
    seen = []

    def interrupt(step, loss):
        seen.append((step, loss))
        if step == 3:
            raise KeyboardInterrupt

    other = tmp_path / "two_resumed"
    with pytest.raises(KeyboardInterrupt):
        train_lm(_nano(steps=steps, processes=2), other, progress=False, callback=interrupt)
    assert [s for s, _ in seen] == [1, 2, 3] and (other / "step2").is_dir() and not (other / "step4").exists()
    resumed = train_lm(_nano(steps=steps, processes=2), other, progress=False)
    assert resumed["resumed_from"] == 2 and resumed["checkpoints"] == runs["two"]["checkpoints"] == [0, 1, 2, 4, 5]
    one, two, again = (torch.load(tmp_path / n / "state.pt", weights_only=False) for n in ("one", "two", "two_resumed"))
    assert all(torch.equal(two["model"][k], again["model"][k]) for k in two["model"])
    assert two["optimizer"]["state"].keys() == again["optimizer"]["state"].keys()
    assert all(torch.equal(two["optimizer"]["state"][i]["exp_avg_sq"], again["optimizer"]["state"][i]["exp_avg_sq"])
               for i in two["optimizer"]["state"])
    assert two["history"] == again["history"] and len(two["history"]) == steps
    # the callback gets the whole batch's loss: the history's
    assert [round(v, 6) for _, v in seen] == [h[1] for h in two["history"][:3]]
    # against one process: the loss to float rounding; the weights to AdamW's amplification of
    # rounding in near-zero gradients (it steps g / (sqrt(v) + 1e-8)): measured max 7.5e-5 (lr 3e-3), mean 1e-8
    assert max(abs(a[1] - b[1]) for a, b in zip(one["history"], two["history"])) <= 2e-6
    assert [(h[0], h[2], h[3]) for h in one["history"]] == [(h[0], h[2], h[3]) for h in two["history"]]
    diff = torch.cat([(one["model"][k] - two["model"][k]).abs().flatten() for k in one["model"]])
    assert diff.max() < 5e-4 and diff.mean() < 1e-7
    assert runs["two"]["wall"] < 120  # spawning a rank costs seconds, not minutes


def test_unknown_model_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model preset 'medium'; valid presets: nano, small, fast, gpu"):
        lm_preset("medium")
    assert LMConfig.from_dict(_nano().to_dict()) == _nano()


# ------------------------------------------------------------------ command line
def _cli(argv, monkeypatch=None):
    """Run ``mechtrunc`` in-process; the exit status."""
    import mechtrunc.cli as cli

    return cli.main(argv)


def test_cli_module_imports_no_torch_or_numpy():
    import subprocess
    import sys

    code = ("import sys, mechtrunc.cli.lm; "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_prompt_file_loads_back_as_the_same_prompt_set(monkeypatch, tmp_path, tok):
    import mechtrunc as mt
    from mechtrunc.models.lm.prompts import lm_fact_prompts, lm_ioi_prompts

    for task, build in (("ioi", lm_ioi_prompts), ("factual", lm_fact_prompts)):
        path = tmp_path / f"{task}.jsonl"
        assert _cli(["lm", "prompts", "--task", task, "--n", "12", "--seed", "3", "--out", str(path)], monkeypatch) == 0
        back, want = mt.load_prompts(path, tok), build(tok, n=12, seed=3)
        assert back.texts == want.texts and back.tokens.equal(want.tokens)
        assert back.answer.equal(want.answer) and back.competitors.equal(want.competitors)
    assert _cli(["lm", "prompts", "--out", str(tmp_path / "ioi.jsonl")], monkeypatch) == 2  # exists


def test_cli_corpus_and_train(monkeypatch, tmp_path, capsys):
    import json

    assert _cli(["lm", "corpus", "--stories", "50", "--seed", "4", "--json"], monkeypatch) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["stories"] == 50 and stats["p_the_after_of"] == 1.0 and stats["config"]["seed"] == 4
    text = tmp_path / "stories.txt"
    assert _cli(["lm", "corpus", "--stories", "5", "--out", str(text), "--to-the-share", "0.2"], monkeypatch) == 0
    assert text.read_text().count("<|endoftext|>") == 5
    out = tmp_path / "run"
    argv = ["lm", "train", "--preset", "nano", "--out", str(out), "--steps", "4", "--json", "--no-progress"]
    assert _cli(argv, monkeypatch) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoints"] == [0, 1, 2, 4] and (out / "step4" / "tokenizer.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["lm", "train", "--preset", "medium", "--out", "x"], "unknown model preset 'medium'; valid model presets: nano, small, fast, gpu"),
    (["lm", "corpus", "--to-the-share", "1.5"], "expected a number in [0, 1], got '1.5'"),
    (["lm", "corpus", "--corpus", "nope"], "unknown corpus preset 'nope'; valid corpus presets: default, rare_the"),
    (["lm", "train", "--preset", "nano", "--out", "x", "--steps", "0"], "expected a positive integer, got '0'"),
])
def test_cli_bad_usage_exits_2_without_traceback(argv, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _cli(argv, monkeypatch)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_never_changes_a_finished_or_different_run(nano_run, monkeypatch, capsys):
    from helpers import dir_snapshot

    out, summary = nano_run
    before = dir_snapshot(out)
    train = ["lm", "train", "--preset", "nano", "--out", str(out), "--no-progress"]
    for extra, named in ((["--steps", "7"], "(steps: 200 there, 7 asked); nothing was changed: use a new --out directory"),
                         (["--seed", "1"], "(seed: 0 there, 1 asked); nothing was changed"),
                         (["--steps", "400", "--extend"], "(steps: 200 there, 400 asked); nothing was changed: it cannot "
                          "be extended to 400 steps, because its learning rate depends on steps")):
        assert _cli([*train, *extra], monkeypatch) == 2
        err = capsys.readouterr().err
        assert f"{out} holds a different run {named}" in err and "Traceback" not in err, err
        assert dir_snapshot(out) == before
    # the same command again: says so, exit 0, nothing trained or written
    assert _cli(train, monkeypatch) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"already finished: {out} holds the finished nano (2 layers, d 64, 267,264 parameters) run "
                           f"of 200 steps (its training took {summary['seconds']:.1f} s); nothing was trained or "
                           "written"), said
    assert dir_snapshot(out) == before


def test_studies_of_a_run_use_its_own_prompts(nano_run, tmp_path, monkeypatch):
    """`pythia truncate` on a checkpoint of a run and `pythia checkpoints` on the run evaluate the
    run's own held-out prompts (prompts_for_model -> run_prompts, those of lens, patch and lm
    study), not the Pythia IOI templates; a prompt file or another model still gets
    prompts_for_task."""
    import pandas as pd

    import mechtrunc as mt
    from mechtrunc.models.lm.prompts import prompts_for_model, run_prompts, uses_run_prompts
    from mechtrunc.models.hf import load_model
    from mechtrunc.tasks.registry import prompts_for_task

    run, _ = nano_run
    model = load_model(run / "step200", local_files_only=True)
    own = run_prompts(run, "ioi", n=16, seed=0)
    for where in (run, run / "step200", str(run)):
        assert uses_run_prompts(where, "ioi") and prompts_for_model(where, "ioi", model.tokenizer, n=16).texts == own.texts
    assert uses_run_prompts(run / "step200", "recall")  # the run's noisy-recall prompts
    assert not uses_run_prompts(run / "step200", "prompts.jsonl") and not uses_run_prompts(tmp_path, "ioi")
    pythia = prompts_for_task("ioi", model.tokenizer, n=16)
    assert prompts_for_model(tmp_path / "elsewhere", "ioi", model.tokenizer, n=16).texts == pythia.texts
    assert pythia.texts != own.texts
    want = mt.evaluate(model, own).iloc[0]
    out = tmp_path / "trunc"
    assert _cli(["pythia", "truncate", "--model", str(run / "step200"), "--task", "ioi", "--n", "16", "--layers", "1",
                 "--matrices", "mlp.W_in", "--keeps", "0.5", "--out", str(out), "--no-progress"], monkeypatch) == 0
    table = pd.read_csv(out / "truncation.csv")
    base = table[table["baseline"].astype(bool)].iloc[0]
    assert base["p_the"] == pytest.approx(want["p_the"], abs=1e-5)
    assert base["p_answer"] == pytest.approx(want["p_answer"], abs=1e-5)
    ck = tmp_path / "ck"
    assert _cli(["pythia", "checkpoints", "--model", str(run), "--steps", "200", "--task", "ioi", "--n", "16",
                 "--out", str(ck), "--no-progress"], monkeypatch) == 0
    got = pd.read_csv(ck / "checkpoints.csv")
    full = got[(got["step"] == 200) & (got["variant"] == "full")].iloc[0]
    assert full["p_the"] == pytest.approx(want["p_the"], abs=1e-5)


def test_pythia_truncate_takes_the_run_directory_with_step_and_checks_the_metric_first(nano_run, tmp_path, monkeypatch,
                                                                                       capsys):
    """`pythia truncate` reads a run directory as its siblings do (the shared resolver): its last
    checkpoint, or RUN/step{N} with --step, the same numbers as the step directory itself; and a
    metric the prompt file's competitors (c0, c1) cannot give is refused before the grid runs."""
    import pandas as pd

    run, _ = nano_run
    prompts = tmp_path / "ioi.jsonl"
    assert _cli(["lm", "prompts", "--out", str(prompts), "--n", "8"], monkeypatch) == 0
    common = ["pythia", "truncate", "--task", str(prompts), "--layers", "0", "--keeps", "1", "0.5", "--matrices",
              "mlp.W_out", "--batch-size", "8", "--no-progress"]

    def table(model, *extra):
        out = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        assert _cli([*common, "--model", model, *extra, "--out", str(out)], monkeypatch) == 0
        return pd.read_csv(out / "truncation.csv")[["p_answer", "loss"]].to_numpy()

    at_64 = table(str(run), "--step", "64")
    assert at_64 == pytest.approx(table(str(run / "step64")))
    assert at_64 == pytest.approx(table(str(run / "step64"), "--step", "64"))
    last = table(str(run))
    assert last == pytest.approx(table(str(run / "step200")))
    assert abs(last[0, 1] - at_64[0, 1]) > 0.05  # two different checkpoints were read (loss of the full model)
    out = tmp_path / "bad_metric"
    capsys.readouterr()
    assert _cli([*common, "--model", str(run), "--metric", "logit_diff_the", "--out", str(out)], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'logit_diff_the' for these prompts (competitors: c0, c1); valid: accuracy, p_answer" in err
    assert not (out / "rows.jsonl").exists() and not (out / "truncation.csv").exists()
