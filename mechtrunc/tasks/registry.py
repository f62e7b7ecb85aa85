"""Prompt sets by task name, from the task registry: the built-in language-model tasks, tasks
registered with :func:`register_task`, and user prompt files.

The registry itself (:class:`TaskSpec`, one entry per task) is a light module at the bottom of
the package (:mod:`mechtrunc._choices`), so the command line lists the task names without
importing torch; an entry names its builders as ``"module:function"`` (or holds callables), and
:func:`task_builder` imports one when a task is built.  Adding a task is a module with its
builders and one :func:`register_task` entry: every ``--task`` choice, :func:`prompts_for_task`,
the patch command's corrupted twin and :func:`mechtrunc.models.lm.prompts.lm_task_prompts` follow.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from mechtrunc._choices import (
    TASK_BUILDERS, TaskSpec, register_task, task_names, task_spec, task_words, unregister_task,
)
from mechtrunc.core.prompts import PromptSet

__all__ = ["TaskSpec", "register_task", "unregister_task", "task_names", "task_spec", "task_builder",
           "prompts_for_task"]


def task_builder(task: str, what: str) -> Callable:
    """The ``what`` builder (``"prompts"``, ``"corrupt"``, ``"lm"`` or ``"toy"``, see
    :class:`TaskSpec`) of the registered task ``task``, imported if the entry names it as
    ``"module:function"``.  A task without that builder is a ValueError naming the tasks that
    have one."""
    if what not in TASK_BUILDERS:
        raise ValueError(f"unknown task builder {what!r}; valid: {', '.join(TASK_BUILDERS)}")
    spec = task_spec(task)
    builder = getattr(spec, what)
    if builder is None:
        raise ValueError(f"task {spec.name!r} has no {what} builder; tasks with one: {', '.join(task_names(what))}")
    if callable(builder):
        return builder
    module, _, name = builder.partition(":")
    return getattr(importlib.import_module(module), name)


def prompts_for_task(task: str | os.PathLike, tokenizer, n: int = 200, seed: int = 0) -> PromptSet:
    """The prompts of a registered task (``"ioi"``: ``n`` prompts from ``seed``; ``"factual"``:
    the built-in facts, a fixed set) or of the CSV/JSONL prompt file at ``task`` (see
    :mod:`mechtrunc.tasks.files`)."""
    name = str(task)
    if name in task_names("prompts"):
        build = task_builder(name, "prompts")
        return build(tokenizer, n=n, seed=seed) if task_spec(name).seeded else build(tokenizer)
    if not Path(task).is_file():
        what = (f"task {name!r} builds prompts for {' and '.join(_builds(name))} only" if name in task_names()
                else f"unknown task {name!r}")
        raise ValueError(f"{what}: give {task_words('prompts')} or the path of a CSV/JSONL prompt file")
    from mechtrunc.tasks.files import load_prompts

    return load_prompts(task, tokenizer)


def _builds(name: str) -> list[str]:
    """What the registered task ``name`` builds, in words."""
    words = {"lm": "language-model runs of `mechtrunc lm train`", "toy": "the toy model"}
    return [w for f, w in words.items() if getattr(task_spec(name), f) is not None]
