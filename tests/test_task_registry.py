"""The task registry: one entry per task, from which every ``--task`` choice, the prompt sets by
name, the corrupted twins of the patch command and the language-model variants follow.

The proof that adding a task is one module and one entry: a tiny task defined in this file
(its builders below stand for the new module; :func:`register_task` is the entry) is a choice of
the command line, builds its prompts through ``pythia truncate``, its corrupted twin through
``patch scan`` and its language-model variant through ``lm prompts``, with no other file
touched."""

from __future__ import annotations

import json
import random

import pytest
import torch

import mechtrunc as mt
from mechtrunc.cli import build_parser, main
from mechtrunc.models.lm import lexicon
from mechtrunc.tasks.registry import (
    TaskSpec, prompts_for_task, register_task, task_builder, task_names, task_spec, unregister_task,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------- the new task's module
def _words(tokenizer) -> list[str]:
    """The cities of the language model's lexicon that are one token under ``tokenizer``."""
    return [" " + c for c in lexicon.CITIES if len(tokenizer.encode(" " + c, add_special_tokens=False)) == 1]


def copy_prompts(tokenizer, n: int = 200, seed: int = 0, prefix: str = "") -> mt.PromptSet:
    """" A B C D A" -> " B" (copy what followed the first A); competitor " C"."""
    rng = random.Random(seed)
    words = _words(tokenizer)
    seqs = [rng.sample(words, 4) for _ in range(n)]
    texts = [prefix + "".join([*s, s[0]]) for s in seqs]
    tokens = torch.tensor([tokenizer.encode(t, add_special_tokens=False) for t in texts])
    ids = lambda j: torch.tensor([tokenizer.encode(s[j], add_special_tokens=False)[0] for s in seqs])  # noqa: E731
    return mt.PromptSet(tokens, torch.arange(n), torch.full((n,), tokens.shape[1] - 1), ids(1), ids(2)[:, None],
                        ("third",), texts, {"task": "copy", "seed": seed})


def copy_corrupt(prompts: mt.PromptSet, tokenizer, seed: int = 0):
    """The first A replaced by a word absent from the prompt: nothing to copy from."""
    rng = random.Random(seed)
    words = _words(tokenizer)
    ids = {w: tokenizer.encode(w, add_special_tokens=False)[0] for w in words}
    corrupted = prompts.tokens.clone()
    first = corrupted.shape[1] - 5  # after a prefix (the language-model variant's eos)
    for i, row in enumerate(corrupted.tolist()):
        corrupted[i, first] = ids[rng.choice([w for w in words if ids[w] not in row])]
    meta = {"roles": ("a1", "end"), "role_pos": [(first, int(p)) for p in prompts.pos]}
    pair = [mt.PromptSet(t, prompts.rows, prompts.pos, prompts.answer, prompts.competitors, prompts.competitor_names,
                         None, {**prompts.meta, **meta}) for t in (prompts.tokens, corrupted)]
    return pair[0], pair[1]


def copy_lm(tokenizer, config=None, n: int = 200, seed: int = 0, split: str = "heldout") -> mt.PromptSet:
    """The language-model variant: the same prompts, opening with the eos token as the corpus' stories do."""
    ps = copy_prompts(tokenizer, n=n, seed=seed, prefix=tokenizer.eos_token)
    ps.meta["split"] = split
    return ps


@pytest.fixture()
def copy_task():
    """The new task's one entry, removed again after the test."""
    spec = register_task(TaskSpec("copy", prompts=copy_prompts, corrupt=copy_corrupt, lm=copy_lm,
                                  dropped="never"))
    yield spec
    unregister_task("copy")


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    from mechtrunc.models.testing import build_random_pythia

    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4}, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("tiny_pythia"), n_layers=2, seed=0)


@pytest.fixture(scope="module")
def pythia_tok(pythia_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(pythia_tokenizer_dir))


# --------------------------------------------------------------- the built-in entries
def test_the_built_in_tasks_and_what_each_builds():
    built = {n: tuple(f for f in ("prompts", "corrupt", "lm", "toy") if getattr(task_spec(n), f) is not None)
             for n in task_names()}
    assert built == {"ioi": ("prompts", "corrupt", "lm"), "factual": ("prompts", "corrupt", "lm"),
                     "generic": ("lm",), "recall": ("lm", "toy"), "binding": ("lm",)}
    assert task_names("prompts") == ("ioi", "factual") and task_names("corrupt", "toy") == ("ioi", "factual", "recall")
    assert task_spec("ioi").seeded and not task_spec("factual").seeded  # the built-in facts are one fixed set
    from mechtrunc.models.lm.prompts import TASKS

    assert TASKS == ("ioi", "factual", "generic", "recall", "binding")


def test_built_in_builders_resolve_in_the_layer_allowed_to_call_them():
    """An entry names its builders as strings (the command line lists tasks without torch): each
    resolves to a function of mechtrunc.tasks (prompts, corrupt, toy: called from the tasks
    layer) or of mechtrunc.models.lm (lm: called from mechtrunc.models.lm.prompts), never a layer above."""
    from mechtrunc.models.lm.prompts import lm_binding_prompts, lm_ioi_prompts
    from mechtrunc.tasks.corrupt import ioi_abc, recall_pair

    for name in task_names():
        for what in ("prompts", "corrupt", "lm", "toy"):
            target = getattr(task_spec(name), what)
            if target is None:
                continue
            assert isinstance(target, str), (name, what)
            home = "mechtrunc.models.lm." if what == "lm" else "mechtrunc.tasks."
            assert target.startswith(home), (name, what, target)
            assert task_builder(name, what).__module__ + ":" + task_builder(name, what).__name__ == target
    assert task_builder("ioi", "corrupt") is ioi_abc and task_builder("recall", "toy") is recall_pair
    assert task_builder("ioi", "lm") is lm_ioi_prompts and task_builder("binding", "lm") is lm_binding_prompts


@pytest.mark.parametrize("make, message", [
    (lambda: TaskSpec("Bad Name", prompts=copy_prompts), "task name 'Bad Name' must be lower case"),
    (lambda: TaskSpec("nobuild"), "task 'nobuild' has no builder: give one of prompts, corrupt, lm, toy"),
    (lambda: TaskSpec("x", prompts="mechtrunc.tasks.ioi.ioi_prompts"),
     "task 'x': prompts must be a callable or 'module:function', got 'mechtrunc.tasks.ioi.ioi_prompts'"),
    (lambda: register_task(TaskSpec("ioi", prompts=copy_prompts)), "task 'ioi' is already registered"),
    (lambda: task_names("prompt"), "unknown task builder 'prompt'; valid: prompts, corrupt, lm, toy"),
    (lambda: task_builder("generic", "corrupt"), "task 'generic' has no corrupt builder; tasks with one: ioi, factual"),
    (lambda: task_spec("nope"), "unknown task 'nope'; valid tasks: ioi, factual, generic, recall, binding"),
    (lambda: unregister_task("nope"), "unknown task 'nope'"),
])
def test_bad_entries_and_names_are_refused_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()
    assert task_names() == ("ioi", "factual", "generic", "recall", "binding")  # nothing half-registered


def test_a_task_without_prompts_for_any_model_says_what_it_builds(pythia_tok):
    with pytest.raises(ValueError, match="task 'generic' builds prompts for language-model runs of `mechtrunc lm "
                                         "train` only: give 'ioi', 'factual' or the path of a CSV/JSONL prompt file"):
        prompts_for_task("generic", pythia_tok)
    with pytest.raises(ValueError, match="unknown task 'nope': give 'ioi', 'factual' or the path"):
        prompts_for_task("nope", pythia_tok)


# --------------------------------------------------------------- adding a task: one module, one entry
def test_a_registered_task_is_a_choice_of_every_command_that_can_build_it(copy_task, pythia_tok, capsys):
    assert task_names("prompts") == ("ioi", "factual", "copy")
    assert task_names("corrupt", "toy") == ("ioi", "factual", "recall", "copy")
    parser = build_parser()
    assert parser.parse_args(["patch", "scan", "m", "--task", "copy"]).task == "copy"
    assert parser.parse_args(["patch", "path", "m", "--task", "copy"]).task == "copy"
    assert parser.parse_args(["lm", "prompts", "--task", "copy", "--out", "x.jsonl"]).task == "copy"
    # and its name is in the messages that list the tasks
    with pytest.raises(ValueError, match="unknown task 'nope': give 'ioi', 'factual', 'copy' or the path"):
        prompts_for_task("nope", pythia_tok)
    # by name, seeded as the builder is
    want = copy_prompts(pythia_tok, n=7, seed=3)
    got = prompts_for_task("copy", pythia_tok, n=7, seed=3)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.answer, want.answer) and got.texts == want.texts


def test_once_removed_a_task_is_no_choice(pythia_tok, capsys):
    register_task(TaskSpec("copy", prompts=copy_prompts, corrupt=copy_corrupt))
    assert build_parser().parse_args(["patch", "scan", "m", "--task", "copy"]).task == "copy"
    unregister_task("copy")
    with pytest.raises(SystemExit) as e:
        main(["patch", "scan", "m", "--task", "copy"])
    assert e.value.code == 2
    assert "unknown task 'copy'; valid tasks: ioi, factual, recall" in capsys.readouterr().err


def test_an_unseeded_task_builds_its_fixed_set(pythia_tok):
    """``seeded=False``: the builder takes the tokenizer alone (n and seed do not apply)."""
    fixed = copy_prompts(pythia_tok, n=3, seed=0)
    register_task(TaskSpec("fixed", prompts=lambda tok: fixed, seeded=False))
    try:
        assert prompts_for_task("fixed", pythia_tok, n=50, seed=9) is fixed
    finally:
        unregister_task("fixed")


def test_the_new_task_runs_through_the_truncation_study_and_the_patch_command(copy_task, tiny_pythia, tmp_path,
                                                                             capsys):
    import pandas as pd

    from mechtrunc.models.hf import load_model

    out = tmp_path / "study"
    assert main(["pythia", "truncate", "--model", str(tiny_pythia), "--task", "copy", "--n", "6", "--keeps", "1",
                 "0.5", "--batch-size", "6", "--no-progress", "--out", str(out)]) == 0
    table = pd.read_csv(out / "truncation.csv")
    assert len(table) == 1 + 2 * 2 * 2  # baseline + layers x matrices x keeps
    model = load_model(str(tiny_pythia))
    prompts = copy_prompts(model.tokenizer, n=6, seed=0)
    base = mt.evaluate(model, prompts).iloc[0]
    assert table.loc[table["baseline"], "p_answer"].iloc[0] == pytest.approx(base["p_answer"], abs=1e-6)
    capsys.readouterr()

    assert main(["patch", "scan", str(tiny_pythia), "--task", "copy", "--n", "8", "--sites", "z", "--json",
                 "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    clean, corrupted = copy_corrupt(copy_prompts(model.tokenizer, n=8, seed=0), model.tokenizer, seed=0)
    want = mt.patching_scan(model, clean, corrupted, sites=("z",))
    assert len(rep["rows"]) == 2 * 4 * 3  # layers x heads x position groups (all, a1, end)
    assert [r["value"] for r in rep["rows"]] == pytest.approx(want["value"].tolist(), abs=1e-6)
    assert rep["corrupted"] == pytest.approx(want.attrs["corrupted"], abs=1e-6)


def test_the_new_task_has_its_language_model_variant(copy_task, tmp_path, capsys):
    from mechtrunc.models.lm.corpus import CorpusConfig
    from mechtrunc.models.lm.prompts import TASKS, lm_task_prompts
    from mechtrunc.models.lm.tokenizer import run_tokenizer

    assert TASKS[-1] == "copy"
    tok = run_tokenizer(CorpusConfig())
    ps = lm_task_prompts("copy", tok, n=5, seed=2, split="train")
    assert ps.texts == copy_lm(tok, n=5, seed=2).texts and ps.meta["split"] == "train"
    assert all(t.startswith("<|endoftext|> ") for t in ps.texts)
    out = tmp_path / "copy.jsonl"
    assert main(["lm", "prompts", "--task", "copy", "--n", "5", "--seed", "2", "--out", str(out)]) == 0
    back = mt.load_prompts(out, tok)
    assert torch.equal(back.tokens, ps.tokens) and torch.equal(back.answer, ps.answer)
