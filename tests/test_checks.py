"""The one style of configuration checks (mechtrunc._checks): plain values back, errors that
name the field, the value and the valid range."""

import numpy as np
import pytest
import torch

from mechtrunc._checks import check_choice, check_fraction, check_int, check_real


def test_values_come_back_as_plain_python():
    assert check_int("steps", np.int64(3), 1) == 3 and type(check_int("steps", torch.tensor(3), 1)) is int
    assert check_int("steps", 4.0, 1) == 4
    assert check_real("lr", np.float32(0.5), 0, above=True) == 0.5 and type(check_real("lr", 1, 0)) is float
    assert check_fraction("alpha", 1) == 1.0 and check_choice("method", "gd", ("gd", "sgd")) == "gd"


@pytest.mark.parametrize("call, message", [
    (lambda: check_int("steps", 0, 1), "steps must be an integer >= 1, got 0"),
    (lambda: check_int("noise_token", 9, 0, 7), "noise_token must be an integer in 0..7, got 9"),
    (lambda: check_int("top", 9, high=8), "top must be an integer <= 8, got 9"),
    (lambda: check_int("steps", 2.5), "steps must be an integer, got 2.5"),
    (lambda: check_int("steps", True), "steps must be an integer, got the boolean True"),
    (lambda: check_real("lr", 0, 0, above=True), "lr must be a number > 0, got 0"),
    (lambda: check_real("scale", -1, 0), "scale must be a number >= 0, got -1"),
    (lambda: check_real("scale", float("inf"), 0), "scale must be a number >= 0, got inf"),
    (lambda: check_real("x", float("inf")), "x must be a finite number, got inf"),
    (lambda: check_real("lr", float("nan"), 0), "lr must be a number, got NaN"),
    (lambda: check_fraction("alpha", 1.5), "alpha must be a number in [0, 1], got 1.5"),
    (lambda: check_choice("method", "adam", ("gd", "sgd")), "unknown method 'adam'; valid: gd, sgd"),
    (lambda: check_choice("method", 3, ("gd", "sgd")), "unknown method 3; valid: gd, sgd"),
    (lambda: check_choice("site", "z", ("mlp_out", "attn_out"), label="valid sites"),
     "unknown site 'z'; valid sites: mlp_out, attn_out"),
    (lambda: check_choice("svd method", "full", ("exact", "laser"), quote=True),
     "unknown svd method 'full'; valid: 'exact', 'laser'"),
    (lambda: check_choice("matrix", "W_gate", ("W_in",), label="valid matrices", extra=" (and W on a memory)"),
     "unknown matrix 'W_gate'; valid matrices: W_in (and W on a memory)"),
])
def test_errors_name_field_value_and_range(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(message), str(info.value)


def test_config_changes_names_every_differing_field_nested_fields_by_dotted_name():
    from mechtrunc._checks import config_changes

    stored = {"steps": 10, "lr": 0.1, "keeps": [1, 2], "corpus": {"seed": 0, "share": 0.7}, "threads": 1}
    asked = {"steps": 20, "lr": 0.1, "keeps": (1, 2), "corpus": {"seed": 3, "share": 0.7}, "threads": 2, "new": 1}
    assert config_changes(stored, asked, ignore=("threads",)) == {
        "steps": (10, 20), "corpus.seed": (0, 3), "new": ("<absent>", 1)}  # a tuple equals its JSON list
    assert config_changes(stored, stored) == {}


@pytest.mark.parametrize("asked, extend, why, message", [
    (dict(steps=5), False, None, "run holds a different run (steps: 10 there, 5 asked); nothing was changed: use a new "
                                 "--out directory"),
    (dict(steps=20), False, None, "(steps: 10 there, 20 asked); nothing was changed: add --extend (extend=True) to "
                                  "train this run on from step 10 to 20, or use a new --out directory"),
    (dict(steps=5), True, None, "(steps: 10 there, 5 asked); nothing was changed: --extend only lengthens a run"),
    (dict(steps=20, seed=1, opt="sgd"), True, None, "(steps: 10 there, 20 asked; seed: 0 there, 1 asked; opt: 'adam' "
                                                    "there, 'sgd' asked); nothing was changed: use a new --out directory"),
    (dict(steps=20), True, "the schedule moves", "(steps: 10 there, 20 asked); nothing was changed: it cannot be "
                                                 "extended to 20 steps, because the schedule moves; train 20 steps in a new"),
])
def test_check_resume_refuses_naming_each_field(asked, extend, why, message):
    from mechtrunc._checks import check_resume

    stored = {"steps": 10, "seed": 0, "opt": "adam"}
    with pytest.raises(ValueError) as e:
        check_resume("run", stored, {**stored, **asked}, extend=extend, extension_refused=lambda old, new: why)
    assert message in str(e.value)


def test_check_resume_allows_the_same_run_and_an_asked_extension():
    from mechtrunc._checks import check_resume

    stored = {"steps": 10, "seed": 0, "threads": 1}
    assert check_resume("run", stored, dict(stored)) is None
    assert check_resume("run", stored, {**stored, "threads": 4}, ignore=("threads",)) is None
    assert check_resume("run", stored, {**stored, "steps": 30}, extend=True) == 10
    assert check_resume("run", stored, dict(stored), extend=True) is None  # nothing to extend
