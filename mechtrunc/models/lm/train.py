"""Train a small GPT-NeoX (Pythia's architecture) on the generated corpus, with Pythia's
checkpoint schedule.

- Model: ``transformers.GPTNeoXForCausalLM`` from :func:`mechtrunc.models.hf.pythia_config`
  (rotary on 25% of each head, parallel attention and MLP, untied unembedding, GELU,
  ``d_mlp = 4 d``), with the vocabulary of :func:`mechtrunc.models.lm.tokenizer.run_tokenizer` (the
  restricted tokenizer; extended for the English text of a config with ``english > 0``).
- Optimiser as Pythia: AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.01 on matrices only),
  linear warm-up over ``warmup`` of the steps, cosine decay to ``min_lr_ratio * lr``, gradient
  clipping at 1.
- Data: step ``s`` trains on :meth:`Corpus.batch(s) <mechtrunc.models.lm.corpus.Corpus.batch>`, a
  function of (corpus config, step) only; with the seeded initialisation and no dropout, a run is
  a function of its :class:`LMConfig`.
- Output directory ``OUT``: ``run.json`` (the config), ``step{N}/`` at every step of
  :func:`checkpoint_steps` (``save_pretrained`` model + tokenizer: ``mt.hf.load_model``,
  ``CheckpointDirectory`` and ``mechtrunc pythia checkpoints --model OUT`` read them as they
  are), ``state.pt`` (weights, optimiser, history at the last checkpoint: rerunning resumes
  there and ends with the same weights as one uninterrupted run), ``history.csv`` and
  ``summary.json``, each written through :class:`mechtrunc.models.lm_run.LMRunDirectory`.  A directory holding another run (every differing field is named), or other
  files, is refused; a finished run is returned as it is (``already_finished``), nothing written.
- Extension (``extend=True``): a run whose configuration differs only by a smaller ``steps`` is
  trained on to ``steps`` only when the learning rates of the updates it has done are the same
  under the new ``steps`` (``lr_at``); the warm-up (``warmup x steps``) and the cosine decay (to
  ``min_lr_ratio x lr`` at the last step) depend on ``steps``, so with the presets an extension
  is refused with the first update whose learning rate would differ.  An allowed extension (e.g.
  ``warmup=0, min_lr_ratio=1``: a constant rate) ends with the weights of a run trained straight
  to the new ``steps``, and keeps the old final checkpoint as one more ``step{N}/``.
- Data parallelism (``processes=P > 1``, CPU only): rank 0 is the calling process, ranks 1..P-1
  are spawned (``torch.multiprocessing``, start method ``spawn``: a script that calls
  :func:`train_lm` needs the ``if __name__ == "__main__":`` guard), joined by a gloo process
  group over a file store and loopback sockets.  Every rank builds the same model from the seed
  (or restores the same ``state.pt``) and trains on its contiguous share of the rows of the same
  global batch ``Corpus.batch(s)``; the gradients, each weighted by its share of the rows, are
  summed over the ranks, so every rank clips and steps AdamW on the full batch's gradient (up to
  the order of the float sums) and keeps the same weights.  Rank 0 alone writes the directory,
  shows progress and calls ``callback``.  Each rank runs ``threads`` torch threads (1 when
  ``threads`` is None).
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import torch

from mechtrunc._checks import check_int, check_preset, check_resume, config_from_dict
from mechtrunc._progress import progress_bar, third_party_bars_off
from mechtrunc.models.lm.corpus import Corpus, CorpusConfig
from mechtrunc._choices import LM_PRECISIONS, LM_PRESETS
from mechtrunc.models.lm_run import RUN_FILE, LMRunDirectory, checkpoint_dirs

__all__ = ["LMConfig", "lm_preset", "checkpoint_steps", "build_model", "train_lm"]

#: fields a resumed run may change: the thread count changes how much wall time a step takes and
#: the last bits of the numbers (a sum split over two threads is added in another order), so a
#: run is bit-identical only for the same config *and* thread count; the English text's directory
#: is where to find it, its checksum (corpus.english_sha256) is what it is
#: the process count likewise (each process sums its share of the batch, the shares are added)
_NOT_IDENTITY = ("threads", "processes", "corpus.english_dir")


@dataclass(frozen=True)
class LMConfig:
    """Model, optimiser and corpus of one training run (validated here)."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    ctx: int = 64
    batch_size: int = 32
    steps: int = 3000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: float = 0.01
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_interval: int = 250
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    processes: int = 1
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "ctx", "batch_size", "steps", "checkpoint_interval"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 4:
            raise ValueError(f"d_model / n_heads = {self.d_model // self.n_heads} must be a multiple of 4 "
                             "(rotary embeddings cover 25% of each head)")
        for name, lo, hi in (("lr", 0, math.inf), ("min_lr_ratio", 0, 1), ("warmup", 0, 1),
                             ("weight_decay", 0, math.inf), ("grad_clip", 0, math.inf)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi or (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a number in {'(' if name == 'lr' else '['}{lo}, {hi}], got {v!r}")
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        if self.precision not in LM_PRECISIONS:
            raise ValueError(f"precision must be one of {LM_PRECISIONS}, got {self.precision!r}")
        if self.threads is not None:
            object.__setattr__(self, "threads", check_int("threads", self.threads, 1))
        object.__setattr__(self, "processes", check_int("processes", self.processes, 1))
        if self.processes > self.batch_size:
            raise ValueError(f"processes must be an integer in 1..{self.batch_size} (each process trains on a share "
                             f"of the batch's {self.batch_size} rows), got {self.processes!r}")
        if self.processes > 1 and self.device != "cpu":
            raise ValueError(f"processes={self.processes} (data parallelism over local processes) trains on the cpu "
                             f"only, got device {self.device!r}; use processes=1 on {self.device!r}")
        if isinstance(self.corpus, dict):
            object.__setattr__(self, "corpus", CorpusConfig.from_dict(self.corpus))
        if not isinstance(self.corpus, CorpusConfig):
            raise ValueError(f"corpus must be a CorpusConfig, got {type(self.corpus).__name__}")

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup * self.steps))

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step + 1`` (``step`` updates done): linear warm-up, then
        cosine decay to ``min_lr_ratio * lr`` at the last step."""
        w = self.warmup_steps
        if step < w:
            return self.lr * (step + 1) / w
        t = (step - w) / max(1, self.steps - w)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["corpus"] = self.corpus.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        return config_from_dict(cls, d)


def lm_preset(name: str, **overrides) -> LMConfig:
    """The preset ``name`` (``nano``, ``small``, ``fast``, ``gpu``; see
    :data:`~mechtrunc._choices.LM_PRESETS`) with ``LMConfig`` overrides."""
    return LMConfig(**{**check_preset(name, LM_PRESETS, "model"), **overrides})


def checkpoint_steps(steps: int, interval: int) -> list[int]:
    """Pythia's schedule scaled down: 0, 1, 2, 4, ..., 512 (those <= ``steps``), then every
    ``interval`` steps after 512, and always the final step."""
    steps, interval = check_int("steps", steps, 1), check_int("interval", interval, 1)
    out = {0, steps, *(2**i for i in range(10) if 2**i <= steps)}
    out |= {s for s in range(interval, steps + 1, interval) if s > 512}
    return sorted(out)


def build_model(config: LMConfig, vocab_size: int):
    """A freshly initialised ``GPTNeoXForCausalLM`` for ``config`` (seeded by ``config.seed``)."""
    from transformers import GPTNeoXForCausalLM

    from mechtrunc.models.hf import pythia_config

    hf = pythia_config(
        "70m", vocab_size=int(vocab_size), hidden_size=config.d_model, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, max_position_embeddings=config.ctx, pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return GPTNeoXForCausalLM(hf)


def _extension_refused(config: LMConfig):
    """``why(old_steps, new_steps)`` for :func:`~mechtrunc._checks.check_resume`: the first update
    of a run of ``old_steps`` whose learning rate would differ in one of ``new_steps``, or None."""
    def why(old_steps: int, new_steps: int) -> str | None:
        old, new = replace(config, steps=old_steps), replace(config, steps=new_steps)
        for s in range(old_steps):
            if old.lr_at(s) != new.lr_at(s):
                return (f"its learning rate depends on steps (a warm-up over warmup x steps updates, a cosine "
                        f"decay to min_lr_ratio x lr at the last step): update {s + 1} had lr "
                        f"{old.lr_at(s):.4g} in this run and would have {new.lr_at(s):.4g} in a {new_steps}-step run")
        return None
    return why


def _claim(out: Path, config: LMConfig, extend: bool = False) -> bool:
    """Make ``out`` this run's directory; True when it already was (resume).  Refuses a
    directory that holds another run or other files, touching nothing; with ``extend``, a run
    that differs only by fewer ``steps`` becomes this run (``run.json`` rewritten) when
    :func:`_extension_refused` allows it."""
    run = LMRunDirectory(out)
    if run.is_run():
        try:
            have = run.read_run()
        except ValueError as e:
            raise ValueError(f"{e}; choose another output directory or delete it (nothing was changed)") from None
        extended = check_resume(out, have["config"], config.to_dict(), ignore=_NOT_IDENTITY, extend=extend,
                                extension_refused=_extension_refused(config))
        if extended is not None:
            run.write_run(config.to_dict())
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a mechtrunc lm run directory (no {RUN_FILE}); choose an empty or "
                         "new output directory (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    run.write_run(config.to_dict())
    return False


def train_lm(config: LMConfig, out, progress: bool = True, callback=None, extend: bool = False) -> dict:
    """Train (or resume) the run ``config`` into directory ``out``; returns the summary (also
    written to ``out/summary.json``; ``seconds_this_run`` is the time of the updates this call
    made, ``cpu_seconds_this_run`` the CPU time of this process, rank 0 of a data-parallel run).
    A finished run returns its stored summary with ``already_finished: True`` and writes
    nothing.  ``extend=True`` trains a run of fewer ``steps`` on (see the module docstring).
    ``callback(step, loss)`` is called after each update (``step`` updates done; ``loss`` that of
    the whole batch)."""
    out = Path(out).expanduser()
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for but no CUDA device is available (use device='cpu')")
    if config.corpus.english:  # the English text is there and verified before anything is written
        from mechtrunc.models.lm.tokenizer import run_tokenizer

        run_tokenizer(config.corpus)
    _claim(out, config, extend)
    run = LMRunDirectory(out)
    if run.finished(config.steps):
        summary = run.read_summary()
        if summary.get("steps") == config.steps:  # finished: nothing to train, keep its numbers
            return {**summary, "already_finished": True}
    threads_before = torch.get_num_threads()
    if _threads(config) is not None:
        torch.set_num_threads(_threads(config))
    try:
        if config.processes == 1:
            return _train(config, out, progress, callback)
        return _train_parallel(config, out, progress, callback)
    finally:  # the caller's thread count is not ours to keep
        torch.set_num_threads(threads_before)


def _threads(config: LMConfig) -> int | None:
    """The torch threads of each process: ``threads``; one per process of a data-parallel run by default."""
    return config.threads if config.threads is not None or config.processes == 1 else 1


# ------------------------------------------------------------------ data parallelism
#: how long a rank waits for the others (to start, at an update) before giving up
_RANK_TIMEOUT = timedelta(minutes=10)


def _store(store_file: str, size: int):
    """The rendezvous of a data-parallel run's ``size`` ranks: a file store (no network)."""
    import torch.distributed as dist

    store = dist.FileStore(store_file, size)
    store.set_timeout(_RANK_TIMEOUT)
    return store


def _gloo_group(store, rank: int, size: int):
    """Rank ``rank`` of a gloo process group of ``size`` processes on loopback sockets; no global
    state (torch.distributed's default group stays untouched)."""
    import torch.distributed as dist

    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = _RANK_TIMEOUT
    return dist.ProcessGroupGloo(store, rank, size, options)


class _RankLost(RuntimeError):
    """An update of a data-parallel run failed in the gloo group: another rank stopped."""


def _wait(work) -> None:
    """Wait for a collective operation of the group."""
    try:
        work.wait()
    except RuntimeError as e:
        raise _RankLost(f"another rank of the data-parallel run stopped ({e})") from e


def _rank_main(index: int, config: dict, out: str, store_file: str) -> None:
    """A spawned rank (``index + 1``) of :func:`_train_parallel`: trains; writes nothing."""
    config = LMConfig.from_dict(config)
    torch.set_num_threads(_threads(config))
    rank, store = index + 1, _store(store_file, config.processes)
    store.set(f"rank{rank}", "up")
    _train(config, Path(out), progress=False, callback=None, group=_gloo_group(store, rank, config.processes))


def _train_parallel(config: LMConfig, out: Path, progress: bool, callback) -> dict:
    """:func:`_train` on ``config.processes`` ranks: this process is rank 0, the others are spawned.
    A rank's failure stops them all and is raised here with its traceback."""
    import tempfile

    import torch.multiprocessing as mp

    from mechtrunc.models.lm.tokenizer import run_tokenizer

    run_tokenizer(config.corpus)  # cached once here, before the ranks read it
    with tempfile.TemporaryDirectory(prefix="mechtrunc-lm-ranks-") as tmp:
        store_file = str(Path(tmp) / "store")
        ranks = mp.start_processes(_rank_main, args=(config.to_dict(), str(out), store_file),
                                   nprocs=config.processes - 1, join=False, start_method="spawn")
        try:
            store = _store(store_file, config.processes)
            while True:  # the ranks start (imports: seconds); one that fails before it is up is raised here
                try:
                    store.wait([f"rank{r}" for r in range(1, config.processes)], timedelta(seconds=1))
                    break
                except RuntimeError:
                    ranks.join(timeout=0)
            group = _gloo_group(store, 0, config.processes)
            summary = _train(config, out, progress, callback, group=group)
            while not ranks.join():
                pass
            return summary
        except BaseException as e:
            try:
                if isinstance(e, _RankLost):  # another rank failed first: raise its error once it has exited
                    ranks.join(timeout=60)
            finally:  # the others wait for this one at the next update (it holds the group): stop them
                for p in ranks.processes:
                    if p.is_alive():
                        p.terminate()
                    p.join()
            raise


def _rows(config: LMConfig, rank: int) -> slice:
    """The rows of a step's batch that rank ``rank`` of ``config.processes`` trains on (contiguous)."""
    b, p = config.batch_size, config.processes
    return slice(rank * b // p, (rank + 1) * b // p)


def _sum_over_ranks(model, loss: torch.Tensor, group) -> float:
    """Sum every gradient and the (share-weighted) loss over the ranks of ``group`` in one
    all-reduce; the summed loss, the whole batch's."""
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).float()])
    _wait(group.allreduce([flat]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].item()


# ------------------------------------------------------------------ training
def _model_and_optimizer(config: LMConfig, vocab_size: int):
    """The seeded model on ``config.device`` and its AdamW (weight decay on matrices only)."""
    model = build_model(config, vocab_size).to(torch.device(config.device))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    return model, opt


def _update(model, opt, config: LMConfig, batch: torch.Tensor, step: int, autocast, group=None) -> float:
    """Update ``step + 1`` on ``batch`` (this rank's rows of the step's batch): learning rate,
    forward, backward, the gradients summed over the ranks of ``group`` (when given), clipping,
    AdamW.  The loss of the whole batch."""
    lr = config.lr_at(step)
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast:
        loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad(set_to_none=True)
    if group is None:
        loss.backward()
        value = loss.item()
    else:  # the mean over this rank's rows, weighted by their share: the sum over ranks is the batch's mean
        loss = loss * (batch.shape[0] / config.batch_size)
        loss.backward()
        value = _sum_over_ranks(model, loss, group)
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    return value


def _train(config: LMConfig, out: Path, progress: bool, callback, group=None) -> dict | None:
    """The training loop of every rank (``group``: the ranks of a data-parallel run, None for
    one process); rank 0 writes the directory and returns the summary, the others None."""
    from mechtrunc.models.lm.tokenizer import run_tokenizer

    rank = 0 if group is None else group.rank()
    lead = rank == 0
    tok = run_tokenizer(config.corpus)
    corpus = Corpus(config.corpus, tok)
    device = torch.device(config.device)
    model, opt = _model_and_optimizer(config, len(tok))
    schedule = checkpoint_steps(config.steps, config.checkpoint_interval)
    start, history, seconds = 0, [], 0.0
    run = LMRunDirectory(out)
    if run.state_path.is_file():  # every rank of a data-parallel run restores it
        state = torch.load(run.state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, seconds = state["step"], state["history"], state["seconds"]

    def save(step: int) -> None:
        model.eval()

        def write(d: Path) -> None:
            with third_party_bars_off():  # transformers' "Writing model shards" bar, at every checkpoint
                model.save_pretrained(d)
                tok.save_pretrained(d)

        run.write_checkpoint(step, write)
        run.write_state(lambda path: torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                 "step": step, "history": history,
                                                 "seconds": seconds + time.perf_counter() - t0}, path))
        run.write_history(history)
        model.train()

    t0, cpu0 = time.perf_counter(), time.process_time()
    if group is not None:  # every rank has read state.pt (or found none) before rank 0 writes one
        _wait(group.barrier())
    if start == 0 and lead:
        save(0)
    model.train()
    tokens_per_step = config.batch_size * config.ctx
    rows = _rows(config, rank)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    bar = progress_bar(config.steps, "lm train", "step", enabled=progress and lead, initial=start)
    run_start = start
    try:
        for step in range(start, config.steps):
            batch = torch.from_numpy(corpus.batch(step, config.batch_size, config.ctx)[rows]).long().to(device)
            value = _update(model, opt, config, batch, step, autocast, group)
            done = step + 1
            history.append((done, round(value, 6), config.lr_at(step), done * tokens_per_step))
            if not lead:
                continue
            bar.update(1)
            if done % 10 == 0 or done == config.steps:
                bar.set_postfix(loss=f"{value:.3f}")
            if done in schedule:
                save(done)
            if callback is not None:
                callback(done, value)
    finally:
        bar.close()
    if not lead:
        return None
    wall = time.perf_counter() - t0
    trained = config.steps - run_start
    summary = {
        "out": str(out), "steps": config.steps, "resumed_from": run_start,
        "seconds": round(seconds + wall, 3), "seconds_this_run": round(wall, 3),
        "cpu_seconds_this_run": round(time.process_time() - cpu0, 3),
        "tokens_per_second": round(trained * tokens_per_step / wall, 1) if trained else None,
        "final_loss": history[-1][1] if history else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok), "checkpoints": sorted(set(schedule) | set(checkpoint_dirs(out))),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    run.write_summary(summary)
    return summary
