"""The paper's language-model findings measured on a run of :mod:`mechtrunc.models.lm`.

A run directory (``mechtrunc lm train --out OUT``) holds ``step{N}/`` checkpoints at Pythia's
schedule.  The pieces, each a tidy DataFrame:

- :func:`lm_study_prompts`: the evaluation prompt sets of a corpus: held-out IOI, factual recall
  and generic "to" prompts, each in a *select* draw (used to choose a truncation) and an *eval*
  draw (used to report it), never the same prompts;
- :func:`learning_curves`: every checkpoint on every prompt set (P(answer), P(" the"),
  P(subject), accuracies), the paper's Pythia training-dynamics figure;
- :func:`learning_steps`: from those curves, the step where " the" after " to" is learned and
  the step (if any) from which the answer beats " the" for good, per task;
- :func:`truncation_grid`: the LASER grid (layers x matrices x keeps) through the engine on every
  prompt set, with the loss on held-out corpus text of every configuration (the collateral cost);
- :func:`choose_truncation`: the best configuration on the *select* prompts within a loss budget,
  and its numbers on the *eval* prompts (:func:`mechtrunc.analysis.selection.choose_configuration`, the
  held-out selection every model shares);
- :func:`paired_change`: an intervention's change of each metric on the same prompts, with a
  bootstrap interval over the prompts (:func:`mechtrunc.analysis.selection.change_intervals`);
- :func:`study_run`: all of the above on one finished run, cached in ``OUT/study/`` (a rerun
  reads the tables; ``mechtrunc lm study OUT`` and ``mechtrunc report OUT`` use it; its files:
  :mod:`~mechtrunc.studies.lm_files`);
- :func:`where_the_lives`: per layer, what removing the MLP does to P(" the") after " to", the
  MLP's direct logit attribution to logit(IO) - logit(" the"), and its top " the"-writing
  singular component (:func:`mechtrunc.analysis.directions.rank_components`);
- :func:`margin_ledger` / :func:`checkpoint_ledger`: at one checkpoint / every checkpoint, the
  answer-vs-" the" logit margin split into each MLP's, attention layer's and head's direct
  contribution, and what removing each MLP does to P(" the") and P(answer).

The prompt sets of a run follow its corpus (:func:`study_tasks`): the default corpus is studied on
IOI, factual and generic prompts; a noisy-recall corpus on ``recall`` (one statement in context)
and ``binding`` (two), and on ``generic`` when it has generic "to" sentences.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mechtrunc.analysis.attribution import attribute
from mechtrunc.analysis.directions import rank_components
from mechtrunc.studies.dynamics.measures import first_for_good, first_step
from mechtrunc.analysis.evaluation import evaluate
from mechtrunc.core.interventions import Truncate, intervene
from mechtrunc.core.metrics import item_metrics
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.runner import item_logits
from mechtrunc.analysis.selection import DEFAULT_BUDGET, change_intervals, choose_configuration
from mechtrunc.studies.grid import as_truncate, truncation_study
from mechtrunc.models.lm_run import LMRunDirectory
from mechtrunc.studies.lm_files import LMStudyDirectory, cached_table
from mechtrunc.studies.store import metric_values

__all__ = [
    "STUDY_TASKS", "study_tasks", "answer_tasks", "the_threshold", "margin_ledger", "checkpoint_ledger", "cached_table",
    "keep_checkpoints",
    "lm_study_prompts", "run_steps", "learning_curves", "learning_steps", "corpus_tokens",
    "CORPUS_TEXT", "corpus_loss", "truncation_grid", "choose_truncation", "paired_change", "where_the_lives", "study_run",
    "STUDY_KEEPS",
]

#: prompt sets of the study of the default corpus
STUDY_TASKS = ("ioi", "factual", "generic")


def study_tasks(corpus=None) -> tuple[str, ...]:
    """The prompt sets a run of ``corpus`` (a :class:`~mechtrunc.models.lm.corpus.CorpusConfig`; None: the
    default) is studied on: :data:`STUDY_TASKS` unless the corpus has the noisy-recall family and
    no IOI, then ``recall`` and ``binding``, with ``generic`` when it has generic "to" sentences."""
    if corpus is None or corpus.recall == 0 or corpus.ioi > 0:
        return STUDY_TASKS
    return ("recall", "binding") + (("generic",) if corpus.generic_to > 0 else ())


def answer_tasks(tasks) -> tuple[str, ...]:
    """The tasks of ``tasks`` with an in-context answer (all but ``generic``): the ones whose best
    truncation the study chooses; the first is the run's main task."""
    return tuple(t for t in tasks if t != "generic")


def the_threshold(corpus) -> float:
    """Half the corpus' share of " the" after the studied " to" (the toy's ``alpha / 2`` rule):
    ``to_the_share / 2`` when the study has generic prompts, else ``recall_noise / 2``."""
    return (corpus.to_the_share if "generic" in study_tasks(corpus) else corpus.recall_noise) / 2
_DRAWS = {"select": 0, "eval": 1}
#: the format of the study's prompts, recorded with a cached study: a story of the corpus
#: (``<|endoftext|>`` first, :mod:`mechtrunc.models.lm.prompts`)
PROMPT_FORMAT = "story"
#: keep fractions of the study's truncation grid (layers x {W_in, W_out})
STUDY_KEEPS = (0.0, 0.05, 0.1, 0.2, 0.5)


def lm_study_prompts(tokenizer, corpus=None, n: int = 200, seed: int = 0, tasks=None) -> dict[str, PromptSet]:
    """``{"ioi/select", "ioi/eval", "factual/select", ..., "generic/eval"}`` (``tasks``, default
    :func:`study_tasks` of ``corpus``), all of the
    ``heldout`` split (held-out IOI templates, training names in new combinations, see
    :mod:`mechtrunc.models.lm.prompts`); the select and eval draws use prompt seeds ``2 seed`` and
    ``2 seed + 1``: the select draw is :func:`mechtrunc.models.lm.prompts.run_prompts` at seed ``2 seed``,
    what ``mechtrunc lens`` and ``mechtrunc patch`` use on the run by default."""
    from mechtrunc.models.lm.prompts import lm_task_prompts

    tasks = study_tasks(corpus) if tasks is None else tuple(tasks)
    return {f"{task}/{draw}": lm_task_prompts(task, tokenizer, corpus, n=n, seed=2 * seed + k)
            for task in tasks for draw, k in _DRAWS.items()}


def run_steps(run) -> list[int]:
    """The checkpoint steps a run directory holds (``step{N}/`` with a model), ascending."""
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"{run} is not a directory of checkpoints (mechtrunc lm train --out DIR)")
    steps = LMRunDirectory(run).steps()
    if not steps:
        raise ValueError(f"{run} holds no step{{N}}/ checkpoint")
    return steps


#: checkpoints loaded during :func:`study_run` (a model is read once for its curves, grid and
#: ledger instead of once per table; loading is most of the cost of a small model's study)
_KEPT: dict | None = None


def _load(run, step):
    from mechtrunc.models.hf import load_model

    key = (str(Path(run).resolve()), int(step))
    if _KEPT is not None and key in _KEPT:
        return _KEPT[key]
    model = load_model(LMRunDirectory(run).step_path(step), local_files_only=True)
    if _KEPT is not None:
        _KEPT[key] = model
    return model


@contextmanager
def keep_checkpoints():
    """Inside the block, every checkpoint the study's functions load stays loaded (a second
    table of the same checkpoint reuses it): ``with keep_checkpoints(): learning_curves(...);
    checkpoint_ledger(...)`` reads each checkpoint once."""
    global _KEPT
    outer, _KEPT = _KEPT, ({} if _KEPT is None else _KEPT)
    try:
        yield
    finally:
        _KEPT = outer


def learning_curves(run, prompts: dict[str, PromptSet], steps=None, batch_size: int = 200) -> pd.DataFrame:
    """Every checkpoint of ``run`` (or ``steps``) on every prompt set: columns ``step, prompts``
    then the metrics of :func:`mechtrunc.evaluate`."""
    rows = []
    for step in (run_steps(run) if steps is None else list(steps)):
        model = _load(run, step)
        for name, ps in prompts.items():
            rows.append({"step": step, "prompts": name,
                         **metric_values(evaluate(model, ps, batch_size=batch_size))})
        del model
    return pd.DataFrame(rows)


def learning_steps(curves: pd.DataFrame, the_threshold: float, draw: str = "eval") -> dict:
    """The order of learning in a run's :func:`learning_curves`:

    - ``step_the``: first checkpoint where P(" the") after " to" reaches ``the_threshold`` (half
      the corpus' share, the toy's ``alpha / 2`` rule of
      :func:`mechtrunc.studies.dynamics.order_of_learning`): on the generic prompts, or on the recall
      prompts when the curves have no generic ones;
    - ``step_ioi_beats_the`` / ``step_fact_beats_the`` / ``step_recall_beats_the``: first
      checkpoint from which mean P(answer) > mean P(" the") at every later checkpoint (NaN: not
      by the end, or the task is not in the curves);
    - ``step_io_beats_s``: the same for IO-vs-S accuracy >= 0.75; ``step_binding``: for the
      binding prompts' accuracy against the other stated city >= 0.75;
    - ``step_competition``: the checkpoint (at or after ``step_the``) maximising
      min(P(answer), P(" the")) on the main task (IOI, else recall): where the two predictions
      compete most evenly;
    - ``the_first``: " the" was learned before the main task's answer beat it (or it never did).
    """
    have = set(curves["prompts"].unique())

    def task(name):
        sub = curves[curves["prompts"] == f"{name}/{draw}"].sort_values("step")
        return None if sub.empty else sub

    def for_good(name, ok):
        sub = task(name)
        return float("nan") if sub is None else first_for_good(sub["step"].to_numpy(), ok(sub).to_numpy())

    main = "ioi" if task("ioi") is not None else "recall"
    if task(main) is None:
        raise ValueError(f"curves hold no rows for prompts ioi/{draw} or recall/{draw}; have {sorted(have)}")
    gen = task("generic")
    if gen is not None:
        step_the = first_step(gen, "p_answer", the_threshold)
    else:  # no generic prompts: P(" the") after "went to" on the recall prompts (none when alpha is 0)
        step_the = first_step(task("recall"), "p_the", the_threshold) if the_threshold > 0 else float("nan")
    beats = lambda d: d["p_answer"] > d["p_the"]  # noqa: E731
    out = {
        "step_the": step_the,
        "step_ioi_beats_the": for_good("ioi", beats),
        "step_io_beats_s": for_good("ioi", lambda d: d["acc_vs_subject"] >= 0.75),
        "step_fact_beats_the": for_good("factual", beats),
    }
    if main == "recall":
        out["step_recall_beats_the"] = for_good("recall", beats)
        out["step_binding"] = for_good("binding", lambda d: d["acc_vs_other"] >= 0.75)
    sub = task(main)
    after = sub[sub["step"] >= (step_the if not math.isnan(step_the) else 0)]
    contest = np.minimum(after["p_answer"], after["p_the"])
    out["step_competition"] = float(after["step"].iloc[int(np.argmax(contest.to_numpy()))])
    out["the_first"] = bool(not math.isnan(step_the) and not step_the >= out[f"step_{main}_beats_the"])
    return out


#: what :func:`corpus_tokens` returns: the config's mix, only stories, only held-out English
CORPUS_TEXT = ("mixed", "stories", "english")


def corpus_tokens(corpus_config=None, n_windows: int = 64, ctx: int = 64, part: int = 7,
                  text: str = "mixed") -> torch.Tensor:
    """``[n_windows, ctx]`` token ids of held-out corpus text (under the run's tokenizer): stories of
    part ``part`` of the generator's evaluation stream (training batches come from another
    stream) and, for a config with English text (``english > 0``), ``round(english x
    n_windows)`` windows of the held-out English text
    (:meth:`~mechtrunc.models.lm.corpus.Corpus.english_windows`, never trained on) after them, the mix
    of the training stream.  ``text`` (:data:`CORPUS_TEXT`): ``"mixed"`` (that), ``"stories"``
    or ``"english"`` (all windows of one kind)."""
    from mechtrunc.models.lm.corpus import Corpus

    if text not in CORPUS_TEXT:
        raise ValueError(f"text must be one of {CORPUS_TEXT}, got {text!r}")
    corpus = Corpus(corpus_config)
    share = corpus.config.english
    if text == "english" and share == 0:
        raise ValueError("text='english' needs a corpus config with english > 0 (this one has no English text)")
    n_english = {"mixed": round(share * n_windows), "stories": 0, "english": n_windows}[text]
    n_stories = n_windows - n_english
    parts = []
    if n_stories:
        need = n_stories * ctx
        n = max(1, math.ceil(need / corpus.tokens_per_story * 1.2))
        while len(chunk := corpus.stories(n, part=part)) < need:
            n *= 2
        parts.append(np.asarray(chunk.tokens[:need]).reshape(n_stories, ctx))
    if n_english:
        parts.append(corpus.english_windows(n_english, ctx))
    return torch.from_numpy(np.concatenate(parts)).long()


@torch.no_grad()
def corpus_loss(model, tokens: torch.Tensor, *interventions) -> float:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` with the interventions active."""
    with intervene(model, *interventions):
        logits = model(tokens)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten()).item()


def truncation_grid(model, prompts: dict[str, PromptSet], tokens: torch.Tensor | None = None,
                    matrices=("mlp.W_in", "mlp.W_out"), keeps=(0.0, 0.05, 0.1, 0.2, 0.5),
                    layers=None, svd_cache: str | os.PathLike | None = None) -> pd.DataFrame:
    """The truncation grid on every prompt set (rows of :func:`truncation_study` with a
    ``prompts`` column) and, with ``tokens``, ``corpus_loss`` of every configuration (the
    baseline's on its rows)."""
    frames = []
    for name, ps in prompts.items():
        df = truncation_study(model, ps, layers=layers, matrices=matrices, keeps=keeps, progress=False,
                              svd_cache=svd_cache)
        frames.append(df.assign(prompts=name))
    df = pd.concat(frames, ignore_index=True)
    if tokens is not None:
        losses = {}
        for _, row in df.drop_duplicates(["baseline", "layer", "matrix", "keep"]).iterrows():
            key = _key(row)
            if row["baseline"] or row["identity"]:
                losses[key] = None
            else:
                losses[key] = corpus_loss(model, tokens, as_truncate(row.to_dict()))
        base = corpus_loss(model, tokens)
        df["corpus_loss"] = [base if losses[_key(r)] is None else losses[_key(r)] for _, r in df.iterrows()]
    return df


def _key(row) -> tuple:
    return ("baseline",) if row["baseline"] else (int(row["layer"]), row["matrix"], round(float(row["keep"]), 6))


def choose_truncation(grid: pd.DataFrame, task: str = "ioi", metric: str = "p_answer",
                      max_loss_increase: float | None = DEFAULT_BUDGET) -> dict:
    """The grid row (a dict) with the highest ``metric`` on the ``task/select`` prompts among the
    configurations whose corpus loss rises by at most ``max_loss_increase`` nats (None: no
    budget); the baseline row when none beats the full model.  Added: ``select_gain`` (its
    ``metric`` minus the baseline's) and ``loss_increase``.  Report it on the ``task/eval``
    prompts (:func:`paired_change`): the select prompts chose it."""
    sel = grid[grid["prompts"] == f"{task}/select"]
    if sel.empty:
        raise ValueError(f"the grid holds no {task}/select rows; prompts: {sorted(grid['prompts'].unique())}")
    has_loss = "corpus_loss" in grid
    row = choose_configuration(sel, metric, collateral="corpus_loss" if has_loss else None,
                               budget=max_loss_increase if has_loss else None)
    gain, increase = row.pop("gain"), row.pop("collateral_increase")
    return row | {"select_gain": gain, "loss_increase": increase}


def paired_change(model, prompts: PromptSet, intervention, metrics=("p_answer", "p_the", "logit_diff_the", "accuracy"),
                  n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per metric: the mean over ``prompts`` of the full model (``full``) and with
    ``intervention`` (``intervened``), the ``change`` and its 95% bootstrap interval over the
    prompts (``ci_low``, ``ci_high``; the same items resampled for both runs:
    :func:`mechtrunc.analysis.selection.change_intervals`)."""
    before = item_metrics(item_logits(model, prompts), prompts)
    after = item_metrics(item_logits(model, prompts, intervention), prompts)
    return change_intervals(before, after, metrics, n_boot=n_boot, seed=seed).assign(
        intervention=intervention.label)


def _p_the(prompts: PromptSet) -> str:
    """The metric that is P(" the") on ``prompts``: ``p_the`` where " the" is a competitor, else
    ``p_answer`` (the generic prompts, whose answer is " the")."""
    return "p_the" if "the" in prompts.competitor_names else "p_answer"


def where_the_lives(model, generic: PromptSet, ioi: PromptSet, tokens=(" the",)) -> pd.DataFrame:
    """Per layer: P(" the") on ``generic`` (after " to": the generic prompts, or a task's prompts
    with " the" as a competitor) with that layer's MLP output removed (``mlp.W_out`` keep 0) and
    its drop from the full model; the MLP's mean direct logit attribution to logit(answer) -
    logit(" the") on ``ioi`` (an answer task's prompts; negative: it pushes " the"); and the top
    " the"-promoting singular component of its ``W_out`` on ``generic``."""
    from mechtrunc.core.adapters import adapt

    metric = _p_the(generic)
    full = evaluate(model, generic).iloc[0]
    dla = attribute(model, ioi)
    dla = dla[(dla["kind"] == "mlp") & (dla["competitor"] == "the")].set_index("layer")["attribution"]
    rows = []
    for layer in range(adapt(model).n_layers):
        removed = evaluate(model, generic, Truncate("mlp.W_out", layer=layer, keep=0.0)).iloc[0]
        comps = rank_components(model, layer, list(tokens), "mlp.W_out", prompts=generic)
        top = comps.iloc[0]
        rows.append({"layer": layer, "p_the_full": full[metric], "p_the_mlp_removed": removed[metric],
                     "p_the_drop": full[metric] - removed[metric],
                     "mlp_dla_io_minus_the": float(dla.get(layer, float("nan"))),
                     "top_component": int(top["component"]), "top_component_push": float(top["activation_score"])})
    return pd.DataFrame(rows)


def margin_ledger(model, prompts: PromptSet) -> pd.DataFrame:
    """Where the answer-vs-" the" margin of ``prompts`` (a task with " the" among its
    competitors) comes from, at one checkpoint.  Rows ``component, kind, layer, head, value``:

    - ``kind`` ``mlp``, ``head``, ``attn`` (a layer's heads and output bias together), ``embed``,
      ``bias`` (the final layer norm's and unembedding's biases), ``other``, ``total``: the mean
      direct contribution to logit(answer) - logit(" the")
      (:func:`mechtrunc.analysis.attribution.attribute`; ``total`` is the model's mean margin);
    - ``kind`` ``mlp_removed_p_the`` / ``mlp_removed_p_answer``: the change of mean P(" the") /
      P(answer) when that layer's MLP output is removed (``mlp.W_out`` keep 0; the rows of
      ``full_p_the`` / ``full_p_answer`` hold the full model's values)."""
    if "the" not in prompts.competitor_names:
        raise ValueError(f"the ledger splits logit(answer) - logit(' the'); these prompts' competitors are "
                         f"{prompts.competitor_names} (use a task with ' the' as a competitor: ioi, factual, recall, binding)")
    from mechtrunc.core.adapters import adapt

    dla = attribute(model, prompts)
    dla = dla[dla["competitor"] == "the"]
    rows = [{"component": r.component, "kind": r.kind, "layer": r.layer, "head": r.head, "value": float(r.attribution)}
            for r in dla.itertuples() if r.kind != "attn_bias"]
    attn = dla[dla["kind"].isin(["head", "attn_bias"])].groupby("layer")["attribution"].sum()
    rows += [{"component": f"L{int(layer)}.attn", "kind": "attn", "layer": int(layer), "head": None, "value": float(v)}
             for layer, v in attn.items()]
    full = evaluate(model, prompts).iloc[0]
    rows += [{"component": "full", "kind": f"full_{m}", "layer": None, "head": None, "value": float(full[m])}
             for m in ("p_the", "p_answer")]
    for layer in range(adapt(model).n_layers):
        removed = evaluate(model, prompts, Truncate("mlp.W_out", layer=layer, keep=0.0)).iloc[0]
        rows += [{"component": f"L{layer}.mlp", "kind": f"mlp_removed_{m}", "layer": layer, "head": None,
                  "value": float(removed[m] - full[m])} for m in ("p_the", "p_answer")]
    return pd.DataFrame(rows)


def checkpoint_ledger(run, prompts: PromptSet, steps=None) -> pd.DataFrame:
    """:func:`margin_ledger` at every checkpoint of ``run`` (or ``steps``), with a ``step`` column."""
    frames = []
    for step in (run_steps(run) if steps is None else list(steps)):
        model = _load(run, step)
        frames.append(margin_ledger(model, prompts).assign(step=step))
        del model
    return pd.concat(frames, ignore_index=True)


def _change_metrics(prompts: PromptSet) -> tuple[str, ...]:
    """The metrics the study reports a chosen truncation's change of: P(answer), P(" the"), the
    answer-vs-" the" logit difference, accuracy, and for every other competitor its probability
    and the accuracy against it (P(S) on IOI prompts, P(other city) on recall prompts)."""
    extra = tuple(m for c in prompts.competitor_names if c != "the" for m in (f"p_{c}", f"acc_vs_{c}"))
    return ("p_answer", "p_the", "logit_diff_the", "accuracy", *extra)


def study_run(run, n_prompts: int = 200, keeps=STUDY_KEEPS, loss_budget: float = DEFAULT_BUDGET,
              competition: bool = True) -> dict[str, pd.DataFrame]:
    """The study of one finished run directory (``mechtrunc lm train --out RUN``), every table
    cached in ``RUN/study/`` as it is finished (a rerun, or a rerun after an interruption, reads
    what is there; other settings than the cached ones raise ValueError).

    Returns ``curves`` (:func:`learning_curves` at every checkpoint), ``summary`` (one row:
    :func:`learning_steps`, training time and loss), ``grid`` (:func:`truncation_grid` at the final
    checkpoint and, when it differs and ``competition`` is true, at ``step_competition``; column
    ``checkpoint``), ``best``
    (per checkpoint and task, :func:`choose_truncation` on the select prompts within
    ``loss_budget`` nats and its :func:`paired_change` on the eval prompts), ``where``
    (:func:`where_the_lives`, final checkpoint), ``attribution`` (``attribute_change`` of the
    main task's choice at the final checkpoint; empty when no truncation beats the full model) and
    ``ledger`` (:func:`checkpoint_ledger` of the main task's eval prompts).  The tasks are the
    run's :func:`study_tasks`; the main task is the first of :func:`answer_tasks`."""
    with keep_checkpoints():
        return _study_run(Path(run), int(n_prompts), keeps, float(loss_budget), bool(competition))


def _study_run(run: Path, n_prompts: int, keeps, loss_budget: float, competition: bool) -> dict[str, pd.DataFrame]:
    from mechtrunc.analysis.attribution import attribute_change
    from mechtrunc.models.lm.tokenizer import run_tokenizer
    from mechtrunc.models.lm.train import LMConfig

    run = Path(run)
    files = LMRunDirectory(run)
    cfg = LMConfig.from_dict(files.read_config())
    files.check_finished(cfg.steps)
    out = LMStudyDirectory(run)
    # prompt_format: the prompts open with <|endoftext|> as the training stories do (a study cached
    # with prompts of another format is refused, not mixed in)
    settings = {"n_prompts": int(n_prompts), "keeps": [float(k) for k in keeps], "loss_budget": float(loss_budget),
                "prompt_format": PROMPT_FORMAT}
    out.check_settings(settings, format_key="prompt_format")
    tasks = study_tasks(cfg.corpus)
    main = answer_tasks(tasks)[0]
    prompts = lm_study_prompts(run_tokenizer(cfg.corpus), cfg.corpus, n=n_prompts, seed=0)
    curves = out.table("curves", lambda: learning_curves(run, prompts))
    steps = learning_steps(curves, the_threshold=the_threshold(cfg.corpus))
    tokens = corpus_tokens(cfg.corpus, ctx=cfg.ctx)
    tables = {"curves": curves}
    best_rows, grids = [], []
    checkpoints = {"final": cfg.steps}
    if competition and int(steps["step_competition"]) != cfg.steps:  # else the final checkpoint is the competition's
        checkpoints["competition"] = int(steps["step_competition"])
    for when, step in checkpoints.items():
        model = _load(run, step)
        grid = out.table(f"grid_{when}", lambda: truncation_grid(model, prompts, tokens, keeps=keeps))
        grids.append(grid.assign(checkpoint=when, step=step))
        for task in answer_tasks(tasks):
            row = choose_truncation(grid, task, max_loss_increase=loss_budget)
            chosen = {k: row[k] for k in ("baseline", "layer", "matrix", "keep", "select_gain", "loss_increase")}
            iv = None if row["baseline"] else as_truncate(row)
            change = out.table(f"best_{when}_{task}",
                             lambda: pd.DataFrame() if iv is None else paired_change(
                                 model, prompts[f"{task}/eval"], iv, metrics=_change_metrics(prompts[f"{task}/eval"])))
            best_rows.append(change.assign(checkpoint=when, step=step, task=task, **chosen))
            if when == "final" and task == main:
                tables["attribution"] = out.table("attribution", lambda: pd.DataFrame() if iv is None
                                                else attribute_change(model, prompts[f"{main}/eval"], iv))
        if when == "final":
            the_prompts = prompts["generic/eval" if "generic" in tasks else f"{main}/eval"]
            tables["where"] = out.table("where",
                                      lambda: where_the_lives(model, the_prompts, prompts[f"{main}/eval"]))
    tables["ledger"] = out.table("ledger", lambda: checkpoint_ledger(run, prompts[f"{main}/eval"]))
    tables["grid"] = pd.concat(grids, ignore_index=True)
    tables["best"] = pd.concat(best_rows, ignore_index=True)
    trained = files.read_summary()
    summary = {"run": run.name, "layers": cfg.n_layers, "d_model": cfg.d_model, "seed": cfg.seed, "steps": cfg.steps,
               "to_the_share": cfg.corpus.to_the_share, "ioi_the_share": cfg.corpus.ioi_the_share,
               "recall_noise": cfg.corpus.recall_noise, **steps,
               **{k: trained.get(k) for k in ("seconds", "cpu_seconds_this_run", "resumed_from", "tokens_per_second",
                                              "peak_rss_mb", "final_loss", "parameters")}}
    tables["summary"] = pd.DataFrame([summary])
    return tables
