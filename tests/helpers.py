"""Helpers only this repository's tests use (user-facing model builders are in
:mod:`mechtrunc.models.testing`).

- :func:`save_training_checkpoints`: train the recall NeoX and save it at several steps as
  ``DIR/step{N}/`` (a local checkpoint directory for ``checkpoint_study``).
- :class:`SlowLoader`: a picklable loader wrapper that sleeps (to kill a worker mid-task).
- :func:`dir_snapshot`: every file of a directory with its bytes and modification time (to
  assert that a command wrote nothing).

Ray and submitit workers unpickle :class:`SlowLoader` by reference, so they need this folder
on their ``PYTHONPATH`` (:data:`WORKER_PYTHONPATH`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

TESTS = Path(__file__).resolve().parent
#: what workers (Ray, submitit) put on PYTHONPATH: this checkout's package and this folder
WORKER_PYTHONPATH = os.pathsep.join([str(TESTS.parent), str(TESTS)])


def save_training_checkpoints(
    out_dir: str | os.PathLike, steps: Sequence[int], *, seed: int = 0, **train_kwargs,
) -> dict[int, Path]:
    """Train :func:`mechtrunc.models.testing.train_neox_recall` for ``max(steps)`` steps and save the
    model at each of ``steps`` as ``out_dir/step{N}/`` (model and tokenizer, ``save_pretrained``;
    step 0 is the initialisation).  Returns ``{step: directory}``.  A tiny recipe
    (``d_model=32``, one layer) takes well under a second per saved step on a CPU."""
    from mechtrunc.tasks.recall import RecallConfig, RecallTask
    from mechtrunc.models.testing import recall_tokenizer_dir, train_neox_recall

    out = Path(out_dir)
    want = sorted({int(s) for s in steps})
    itos = RecallTask(train_kwargs.get("task_config") or RecallConfig(alpha=0.5, seq_len=64)).itos
    saved: dict[int, Path] = {}

    def save(step, model):
        d = out / f"step{step}"
        model.save_pretrained(d)
        recall_tokenizer_dir(d, itos)
        saved[step] = d

    if 0 in want:
        save(0, train_neox_recall(None, steps=0, seed=seed, **train_kwargs)[0])
    if want and want[-1] > 0:
        train_neox_recall(None, steps=want[-1], seed=seed,
                          callback=lambda step, model: save(step, model) if step in want else None, **train_kwargs)
    return dict(sorted(saved.items()))


class SlowLoader:
    """``step -> model`` that calls ``inner(step)`` and then sleeps ``seconds`` (picklable, so it
    runs in Ray and submitit workers); used to kill a worker while it holds a unit."""

    def __init__(self, inner: Callable[[int], object], seconds: float):
        self.inner, self.seconds = inner, float(seconds)

    def __call__(self, step: int):
        model = self.inner(step)
        time.sleep(self.seconds)
        return model


def tiny_minimal_config(**kw):
    """A minimal-model config small enough for a test (random 8-token chain, d 16, float64)."""
    from mechtrunc.studies.dynamics import MinimalConfig

    args = dict(bigrams="random", vocab_size=8, d_model=16, seq_len=24, batch_size=8, dtype="float64",
                test_size=16, steps=10, eval_every=5)
    args.update(kw)
    return MinimalConfig(**args)


def dir_snapshot(directory: str | os.PathLike) -> dict[str, tuple[bytes, int]]:
    """``{relative path: (bytes, mtime_ns)}`` of every file under ``directory``: equal snapshots
    before and after a call mean it wrote, replaced and deleted nothing there."""
    root = Path(directory)
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def random_prompts(vocab: int, n: int = 5, T: int = 9, seed: int = 0, names=("the", "x")):
    """Random prompts for equality tests across architectures: read positions anywhere, two items
    on some sequences, two competitors named ``names``."""
    import torch

    import mechtrunc as mt

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, T), generator=g)
    rows = torch.cat([torch.arange(n), torch.tensor([0, n - 1])])
    pos = torch.cat([torch.randint(2, T, (n,), generator=g), torch.tensor([1, T - 3])])
    k = len(rows)
    return mt.PromptSet(tokens=tokens, rows=rows, pos=pos, answer=torch.randint(0, vocab, (k,), generator=g),
                        competitors=torch.randint(0, vocab, (k, 2), generator=g), competitor_names=tuple(names))
