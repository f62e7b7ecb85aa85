"""Prompt sets by task name: the built-in language-model tasks and user prompt files."""

from __future__ import annotations

import os
from pathlib import Path

from mechtrunc._choices import TASKS
from mechtrunc.prompts import PromptSet

__all__ = ["prompts_for_task"]


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
