"""Prompt sets by task name: the built-in language-model tasks and user prompt files."""

from __future__ import annotations

import os
from pathlib import Path

from mechtrunc._choices import TASKS
from mechtrunc.prompts import PromptSet

__all__ = ["prompts_for_task", "prompts_for_model", "uses_run_prompts"]


def prompts_for_task(task: str | os.PathLike, tokenizer, n: int = 200, seed: int = 0) -> PromptSet:
    """``"ioi"`` (``n`` prompts from ``seed``), ``"factual"`` (the built-in facts) or the path
    of a CSV/JSONL prompt file (see :mod:`mechtrunc.tasks.files`)."""
    if str(task) == "ioi":
        from mechtrunc.tasks.ioi import ioi_prompts

        return ioi_prompts(tokenizer, n=n, seed=seed)
    if str(task) == "factual":
        from mechtrunc.tasks.factual import factual_prompts

        return factual_prompts(tokenizer)
    if not Path(task).is_file():
        raise ValueError(f"unknown task {str(task)!r}: give {' or '.join(map(repr, TASKS))} or the path of a "
                         "CSV/JSONL prompt file")
    from mechtrunc.tasks.files import load_prompts

    return load_prompts(task, tokenizer)


def prompts_for_model(model, task: str | os.PathLike, tokenizer=None, n: int = 200, seed: int = 0) -> PromptSet:
    """The default prompts of ``task`` for the model at ``model`` (a path or hub id): a
    language-model run of ``mechtrunc lm train`` (the run directory or one of its ``step{N}``
    checkpoints) is evaluated on its own corpus' held-out prompts of ``ioi``, ``factual`` or
    ``generic`` (:func:`mechtrunc.lm.prompts.run_prompts`, in the format it was trained on);
    anything else, or a prompt file as ``task``, on :func:`prompts_for_task` with ``tokenizer``.
    What the lenses, patching and the truncation and checkpoint studies of the command line use."""
    if uses_run_prompts(model, task):
        from mechtrunc.lm.prompts import run_dir, run_prompts

        return run_prompts(run_dir(model), str(task), n=n, seed=seed, tokenizer=tokenizer)
    if tokenizer is None:
        raise ValueError(f"the prompts of task {str(task)!r} for {model!r} need its tokenizer (tokenizer=None)")
    return prompts_for_task(task, tokenizer, n=n, seed=seed)


def uses_run_prompts(model, task: str | os.PathLike) -> bool:
    """Whether :func:`prompts_for_model` gives ``model`` its run's own prompts: ``model`` is a
    language-model run (or one of its checkpoints) and ``task`` one of its tasks."""
    from mechtrunc.lm.prompts import TASKS as LM_TASKS, run_dir

    return isinstance(model, (str, os.PathLike)) and str(task) in LM_TASKS and run_dir(model) is not None
