"""Tasks build prompt sets: the toy noisy in-context recall, IOI, factual recall, user files."""

from mechtrunc.tasks.recall import RecallBatch, RecallConfig, RecallTask, char_stats, random_markov_stats

__all__ = ["RecallBatch", "RecallConfig", "RecallTask", "char_stats", "random_markov_stats"]
