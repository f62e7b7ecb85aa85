"""Greedy composition search (mechtrunc.studies.compose) on the briefly trained toy
model: the first step is the grid's best configuration, later steps see the composition applied,
identities change nothing, the weights come back bit for bit, the collateral budget refuses a
step, a truncated matrix is never truncated again, bad input names the bad value."""

from __future__ import annotations

import math

import pytest
import torch

import mechtrunc as mt
from mechtrunc.studies import (
    as_interventions,
    best_configuration,
    compose_search,
    truncation_study,
)

pytestmark = pytest.mark.usefixtures("single_thread")

KEEPS = (0.5, 0.1, 0.01)
MATRICES = ("mlp.W_in", "mlp.W_out")
# the logit difference against the noise token: on this model every one of three greedy steps gains
METRIC = "logit_diff_noise"


@pytest.fixture(scope="module")
def toy(trained_toy):
    model, _, prompts = trained_toy
    half = prompts.n_sequences // 2
    return model, prompts.subset_sequences(slice(0, half)), prompts.subset_sequences(slice(half, None))


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(model, snap) -> bool:
    now = model.state_dict()
    return now.keys() == snap.keys() and all(torch.equal(now[k], snap[k]) for k in snap)


@pytest.fixture(scope="module")
def search(toy):
    """An unbudgeted three-step search (and whether the weights came back bit for bit)."""
    model, sel, ev = toy
    snap = _snapshot(model)
    df = compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=METRIC, max_steps=3)
    return df, _same_weights(model, snap)


def _accepted(df):
    return df[df["accepted"] & (df["step"] > 0)]


@pytest.mark.parametrize("metric", [METRIC, "loss"])
def test_first_step_is_the_grids_best_configuration(toy, metric):
    model, sel, ev = toy
    table = truncation_study(model, sel, matrices=MATRICES, keeps=KEEPS, progress=False)
    best = best_configuration(table, metric, higher_is_better=metric != "loss")
    assert best["improvement"] > 0  # so the search accepts a first step
    df = compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=metric, max_steps=1)
    step1 = df[df["step"] == 1].iloc[0]
    assert step1["accepted"] and step1["stop"] == "max_steps=1"
    assert (int(step1["layer"]), step1["matrix"], step1["keep"], int(step1["rank"])) == \
        (best["layer"], best["matrix"], best["keep"], best["rank"])
    assert step1["select_value"] == pytest.approx(best["value"], abs=1e-5)
    assert df.loc[df["step"] == 0, "select_value"].iloc[0] == pytest.approx(best["baseline_value"], abs=1e-5)


def test_steps_compose_and_report_on_the_eval_prompts(toy, search):
    model, sel, ev = toy
    df, _ = search
    steps = _accepted(df)
    assert list(steps["step"]) == [1, 2, 3] and df["stop"].iloc[-1] == "max_steps=3"
    assert (steps["select_gain"] > 0).all()
    ivs = as_interventions(df)
    assert len(ivs) == 3 and all(t.mode == "weight" for t in ivs)
    assert as_interventions(df.copy().rename_axis(None)) == ivs  # attrs survive a copy
    df.attrs.pop("interventions")
    try:
        assert as_interventions(df) == ivs  # rebuilt from the table's rows
    finally:
        df.attrs["interventions"] = ivs
    for k, row in enumerate(steps.itertuples(), start=1):
        # the engine saw the weight-mode composition: its row is evaluate() with all k applied
        on_sel = mt.evaluate(model, sel, *ivs[:k])[METRIC].iloc[0]
        on_ev = mt.evaluate(model, ev, *ivs[:k])[METRIC].iloc[0]
        assert row.select_value == pytest.approx(on_sel, abs=1e-4)
        assert row.eval_value == pytest.approx(on_ev, abs=1e-6)
        assert row.composed == mt.Compose(ivs[:k]).label
        assert row.candidates == len(MATRICES) * 2 * len(KEEPS) - (k - 1) * len(KEEPS)
        assert row.rows_evaluated == len(sel) * (row.candidates + 1) + len(ev)
        assert row.seconds > 0


def test_search_restores_the_weights_bit_for_bit(toy, search):
    model, sel, ev = toy
    df, same = search
    assert len(_accepted(df)) == 3 and same

    calls = []

    def failing(m):  # raises inside the composition of the second step
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("collateral failed")
        return 0.0

    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="collateral failed"):
        compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=METRIC, collateral=failing)
    assert len(calls) == 3 and _same_weights(model, snap)


def test_an_identity_truncation_changes_nothing(toy, search):
    model, sel, ev = toy
    df, _ = search
    with_identity = compose_search(model, sel, ev, matrices=MATRICES, keeps=(*KEEPS, 1.0), metric=METRIC,
                                   max_steps=3)
    cols = ["step", "layer", "matrix", "keep", "rank", "select_value", "eval_value"]
    assert with_identity[cols].equals(df[cols])
    assert not (with_identity["keep"] == 1.0).any()
    ivs = as_interventions(df)
    free = next((l, m) for l in range(2) for m in MATRICES if (l, m) not in {(t.layer, t.matrix) for t in ivs})
    identity = mt.Truncate(free[1], layer=free[0], keep=1.0)
    a = mt.evaluate(model, ev, *ivs)
    b = mt.evaluate(model, ev, *ivs, identity)
    assert a.drop(columns="variant").equals(b.drop(columns="variant"))


def _weight_change(snap):
    def weight_change(m):  # squared distance of the weights from the full model's
        return float(sum(((v.float() - snap[k].float()) ** 2).sum() for k, v in m.state_dict().items()))
    return weight_change


def test_collateral_budget_refuses_the_step_that_breaks_it(toy, search):
    model, sel, ev = toy
    snap = _snapshot(model)
    weight_change = _weight_change(snap)
    free = compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=METRIC, max_steps=3,
                          collateral=weight_change)
    inc = list(_accepted(free)["collateral_increase"])
    assert len(inc) == 3 and 0 < inc[0] < inc[1]
    budget = (inc[0] + inc[1]) / 2
    df = compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=METRIC, max_steps=3,
                        collateral=weight_change, budget=budget)
    # step 2's best candidate of the free search is refused; the search goes on within the budget
    first = free[free["step"] == 2].iloc[0]
    step2 = df[df["step"] == 2]
    refused = step2[~step2["accepted"].astype(bool)]
    assert len(refused) >= 1
    top = refused.iloc[0]
    assert (top["layer"], top["matrix"], top["keep"]) == (first["layer"], first["matrix"], first["keep"])
    assert (refused["collateral_increase"] > budget).all() and refused["stop"].str.startswith("collateral budget").all()
    assert refused["eval_value"].isna().all()
    assert (_accepted(df)["collateral_increase"] <= budget).all()
    assert _same_weights(model, snap)
    # a PromptSet collateral is its loss
    with_ps = compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=METRIC, max_steps=1,
                             collateral=ev)
    assert with_ps["collateral"].iloc[0] == pytest.approx(mt.evaluate(model, ev)["loss"].iloc[0], abs=1e-6)
    assert with_ps["collateral"].iloc[1] == pytest.approx(
        mt.evaluate(model, ev, *as_interventions(with_ps))["loss"].iloc[0], abs=1e-6)


def test_budget_takes_the_best_candidate_within_it_as_held_out_selection_does(toy):
    """A step whose best candidate is over the budget takes the best one within it: the choice of
    mechtrunc.analysis.selection.choose_configuration on the step's grid with every collateral known."""
    from mechtrunc.analysis.selection import choose_configuration

    model, sel, ev = toy
    snap = _snapshot(model)
    weight_change = _weight_change(snap)
    table = truncation_study(model, sel, matrices=MATRICES, keeps=KEEPS, progress=False)
    coll = []
    for r in table.to_dict("records"):
        if r["baseline"]:
            coll.append(0.0)
            continue
        with mt.intervene(model, mt.Truncate(r["matrix"], layer=int(r["layer"]), keep=float(r["keep"]), svd="exact",
                                             mode="weight")):
            coll.append(weight_change(model))
    table["collateral"] = coll
    base = float(table.loc[table["baseline"].astype(bool), METRIC].iloc[0])
    gainers = table[~table["baseline"].astype(bool) & (table[METRIC] > base + 1e-5)].sort_values(METRIC, ascending=False)
    best_coll = float(gainers["collateral"].iloc[0])
    cheaper = gainers[gainers["collateral"] < best_coll]
    assert len(cheaper), "the test needs a gaining candidate cheaper than the best one"
    budget = (best_coll + float(cheaper["collateral"].max())) / 2
    want = choose_configuration(table, METRIC, collateral="collateral", budget=budget)
    assert not want["baseline"]
    df = compose_search(model, sel, ev, matrices=MATRICES, keeps=KEEPS, metric=METRIC, max_steps=1,
                        collateral=weight_change, budget=budget)
    step1 = df[df["step"] == 1]
    took = step1[step1["accepted"].astype(bool)]
    assert len(took) == 1, "the search stopped although a candidate within the budget gains"
    took = took.iloc[0]
    assert (int(took["layer"]), took["matrix"], took["keep"]) == (int(want["layer"]), want["matrix"], want["keep"])
    assert took["collateral_increase"] == pytest.approx(want["collateral_increase"], rel=1e-5)
    assert took["select_value"] == pytest.approx(want[METRIC], abs=1e-5)
    refused = step1[~step1["accepted"].astype(bool)]
    assert len(refused) >= 1 and (refused["select_value"] > took["select_value"]).all()
    assert (refused["collateral_increase"] > budget).all()
    assert took["stop"] == "max_steps=1" and _same_weights(model, snap)


def test_a_truncated_matrix_is_never_truncated_again(toy, search):
    model, sel, ev = toy
    df, _ = search
    pairs = [(int(r.layer), r.matrix) for r in _accepted(df).itertuples()]
    assert len(pairs) == 3 and len(set(pairs)) == 3
    # one pair to truncate: the second step has nothing left
    one = compose_search(model, sel, ev, layers=[1], matrices="mlp.W_in", keeps=KEEPS, metric=METRIC, max_steps=3)
    assert len(_accepted(one)) == 1 and one["stop"].iloc[-1] == "every matrix truncated"
    # attn.OV and attn.W_O of one layer both rewrite W_O: one of them at most
    ov = compose_search(model, sel, ev, layers=[1], matrices=("attn.OV", "attn.W_O"), keeps=KEEPS,
                        metric=METRIC, max_steps=3)
    assert len(_accepted(ov)) == 1 and ov["stop"].iloc[-1] == "every matrix truncated"


@pytest.mark.parametrize("kwargs, match", [
    ({"keeps": ()}, "keeps is empty"),
    ({"matrices": ("mlp.W_gate",)}, "'mlp.W_gate'"),
    ({"max_steps": 0}, "max_steps must be at least 1, got 0"),
    ({"min_gain": -0.1}, "min_gain .* got -0.1"),
    ({"tol": float("nan")}, "(?i)tol must be .* got nan"),
    ({"layers": [7]}, "7"),
    ({"metric": "p_banana"}, "'p_banana'"),
    ({"budget": 0.1}, "budget=0.1 needs a collateral"),
    ({"keeps": (0.5, 1.5)}, "1.5"),
])
def test_bad_input_names_the_value(toy, kwargs, match):
    model, sel, ev = toy
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        compose_search(model, sel, ev, **kwargs)
    assert _same_weights(model, snap)


def test_request_checks_its_inputs_once_without_a_model(toy):
    """ComposeRequest (compose_search's inputs) checks every value it can without a model and
    holds them normalised; a layer the model lacks is left to ``grid.resolve(model)``."""
    from mechtrunc.studies.compose import ComposeRequest

    model, sel, ev = toy
    req = ComposeRequest(sel, ev, layers=[7], keeps=0.5, metric="loss", min_gain=0, tol=0.25, budget=1,
                         collateral=sel, batch_size=8.0)
    assert (req.min_gain, req.tol, req.budget, req.batch_size) == (0.0, 0.25, 1.0, 8)
    assert isinstance(req.budget, float) and isinstance(req.batch_size, int)
    assert req.threshold == 0.25 and req.sign == -1.0
    assert req.grid.layers == (7,) and req.grid.keeps == (0.5,) and req.grid.mode == "engine"
    assert ComposeRequest(sel, ev).sign == 1.0 and ComposeRequest(sel, ev).collateral_of is None
    with pytest.raises(ValueError, match="layer 7"):
        req.grid.resolve(model)
    with pytest.raises(ValueError, match="max_steps must be at least 1, got 0"):
        ComposeRequest(sel, ev, max_steps=0)
    with pytest.raises(TypeError, match="collateral must be None, a callable"):
        ComposeRequest(sel, ev, collateral=3)
