"""Tasks build prompt sets: the toy noisy in-context recall, IOI, factual recall, user files;
the task registry (:mod:`mechtrunc.tasks.registry`) finds them by name."""

from mechtrunc.tasks.corrupt import factual_swap, ioi_abc, recall_pair
from mechtrunc.tasks.factual import factual_prompts
from mechtrunc.tasks.files import load_prompts
from mechtrunc.tasks.ioi import ioi_prompts
from mechtrunc.tasks.recall import RecallBatch, RecallConfig, RecallTask, char_stats, random_markov_stats
from mechtrunc.tasks.registry import TaskSpec, prompts_for_task, register_task, task_builder, task_names, unregister_task

__all__ = ["RecallBatch", "RecallConfig", "RecallTask", "char_stats", "random_markov_stats",
           "ioi_prompts", "factual_prompts", "load_prompts", "prompts_for_task", "ioi_abc", "factual_swap",
           "recall_pair", "TaskSpec", "register_task", "unregister_task", "task_names", "task_builder"]
