"""Training speed of the language model: ``small`` vs a faster configuration vs a plain Hugging Face loop.

Three rows, timed in rounds (each round runs each row once, in this order; the table gives the
median over rounds, the ratios the median over rounds of the ratio within a round):

- **reference** (``--reference``, default ``small``): ``mechtrunc.models.lm.train.train_lm`` on the preset,
  run for ``--warmup + --steps`` updates into a temporary directory;
- **new** (``--new``, default ``fast``): the same, for the proposed preset (``fast``: data parallel
  over 2 processes of one thread each);
- **plain HF**: a training loop written here without mechtrunc, using the cores as the new preset
  does: ``transformers.GPTNeoXForCausalLM`` built from a ``GPTNeoXConfig`` of the new preset's
  shape (Pythia's architecture: rotary on 25% of each head, parallel attention and MLP, untied
  unembedding, GELU, ``d_mlp = 4 d``; vocabulary size that of the restricted tokenizer),
  ``torch.optim.AdamW`` (lr 1e-3, betas 0.9/0.95, weight decay 0.01), gradient clipping at 1 (the
  Hugging Face ``Trainer`` default), ``model(input_ids, labels=input_ids).loss``, on uniformly
  random token batches generated before timing; with the new preset's ``processes`` P > 1, P
  processes (``torch.multiprocessing`` spawn) of the new preset's threads, each on batch / P rows,
  ``torch.distributed.init_process_group("gloo")`` on loopback and
  ``torch.nn.parallel.DistributedDataParallel`` (its bucketed gradient all-reduce overlaps the
  backward pass), the textbook data-parallel loop.

``--shapes 16x64 32x128 ...`` adds rows: ``train_lm`` on the new preset with another batch x
context (same processes and threads), to choose the preset's batch and context by measurement.

A step of the ``train_lm`` rows is the interval between two calls of its ``callback`` (batch
generation, learning-rate update, forward, loss, backward, gradient all-reduce, clipping,
optimiser step, history): the first ``--warmup`` updates and the updates that end with a
checkpoint save are not counted.  Per row: wall time per step, CPU time per step (all threads of
all the row's processes: this process's ``time.process_time`` plus the ranks' utime + stime from
``/proc``, 10 ms ticks, so per-step CPU times of a multi-process row are rounded), tokens per
second of wall time and per CPU-second, and the FLOP rate: model FLOPs per token x tokens/s, with

    FLOPs/token = 6 N + 12 L ctx d

(N: the weights of all matrix products, the unembedding included, the input embedding, a lookup,
excluded; 6 = forward 2 + backward 4; 12 L ctx d: the attention scores and the weighted sum over
all ctx positions, forward and backward, without the causal half).  The arithmetic ceiling beside
it is a measured peak: fp32 ``torch.mm`` products of the model's shapes (tokens of one process's
step x d x 3d, 4d, vocabulary; d x tokens x 4d for the weight gradients), the fastest of 15
repeats per shape, on the row's threads; for P processes the P processes run the same shape at
the same time (a barrier before each shape) and the peak is the sum of their rates, for the
shape where that sum is highest: measured concurrently, so it includes what the processes cost
each other.  ``tokens/s at peak`` is that peak / FLOPs per token: no run of this model on these
processes and threads can go faster without doing fewer FLOPs.

``--ablation`` times instead the candidate changes of a training step (one at a time against
the step of ``train_lm``, interleaved, same model and batches; column ``same weights`` says
whether the weights after the timed steps equal bit for bit those of ``train_lm``'s step).

    OMP_NUM_THREADS=1 python benchmarks/bench_lm_train.py                    # small vs fast vs plain HF
    OMP_NUM_THREADS=1 python benchmarks/bench_lm_train.py --shapes 16x64 32x64 64x64 64x128
    OMP_NUM_THREADS=1 python benchmarks/bench_lm_train.py --ablation --threads 1 --steps 20
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import base_parser, machine_line, print_table, result

TARGET = 2.0


# ------------------------------------------------------------------ arithmetic
def flops_per_token(n_layers: int, d: int, ctx: int, vocab: int) -> tuple[float, int]:
    """Training FLOPs per token (6 N + 12 L ctx d) and N, the weights of the matrix products."""
    n = n_layers * (d * 3 * d + d * d + 2 * d * 4 * d) + d * vocab
    return 6 * n + 12 * n_layers * ctx * d, n


def _mm_rates(tokens: int, d: int, vocab: int, threads: int, repeats: int = 15, barrier=None) -> dict[str, float]:
    """GFLOP/s of fp32 ``torch.mm`` per product shape of the model (fastest of ``repeats``);
    ``barrier.wait()`` before each shape (processes that measure together)."""
    torch.set_num_threads(threads)
    rates = {}
    for m, k, n in ((tokens, d, 3 * d), (tokens, d, 4 * d), (tokens, 4 * d, d), (tokens, d, vocab),
                    (d, tokens, 4 * d), (4 * d, tokens, d)):
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        for _ in range(3):
            torch.mm(a, b, out=c)
        if barrier is not None:
            barrier.wait()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            ts.append(time.perf_counter() - t0)
        rates[f"{m}x{k} @ {k}x{n}"] = 2 * m * k * n / min(ts) / 1e9  # the best repeat: robust to other processes
    return rates


def _mm_rank(index: int, tokens: int, d: int, vocab: int, threads: int, barrier, out: str) -> None:
    Path(out, f"{index}.json").write_text(json.dumps(_mm_rates(tokens, d, vocab, threads, barrier=barrier)))


def matmul_peak(tokens: int, d: int, vocab: int, threads: int, processes: int = 1) -> tuple[float, str]:
    """The matrix-product peak (GFLOP/s) of ``processes`` processes of ``threads`` threads, each with
    ``tokens`` per step, measured together; and its shape."""
    before = torch.get_num_threads()
    try:
        if processes == 1:
            rates = _mm_rates(tokens, d, vocab, threads)
        else:
            import multiprocessing

            import torch.multiprocessing as mp

            with tempfile.TemporaryDirectory() as out:
                barrier = multiprocessing.get_context("spawn").Barrier(processes)
                mp.start_processes(_mm_rank, args=(tokens, d, vocab, threads, barrier, out), nprocs=processes,
                                   start_method="spawn")
                each = [json.loads(Path(out, f"{i}.json").read_text()) for i in range(processes)]
            rates = {shape: sum(r[shape] for r in each) for shape in each[0]}
        where = max(rates, key=rates.get)
        return rates[where], where
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ CPU time of a process and its ranks
def _rank_pids() -> list[int]:
    """The processes this one spawned with multiprocessing (the ranks of a data-parallel run), from /proc."""
    me, pids = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == me and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of this process (all threads) and of the processes ``pids`` (utime + stime)."""
    total, tick = time.process_time(), os.sysconf("SC_CLK_TCK")
    for pid in pids:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(f[11]) + int(f[12])) / tick
    return total


# ------------------------------------------------------------------ the rows
def time_train_lm(cfg, warmup: int, steps: int) -> dict:
    """Per-update wall and CPU seconds of ``train_lm(cfg)`` (checkpoint updates and warm-up left out)."""
    from dataclasses import replace

    from mechtrunc.models.lm.train import checkpoint_steps, train_lm

    cfg = replace(cfg, steps=warmup + steps)
    marks, ranks = {}, []

    def callback(done, loss):
        if done == 1 and cfg.processes > 1:
            ranks.extend(_rank_pids())
        marks[done] = (time.perf_counter(), _cpu_seconds(ranks))

    with tempfile.TemporaryDirectory() as d:
        summary = train_lm(cfg, Path(d) / "run", progress=False, callback=callback)
    assert len(ranks) == cfg.processes - 1, f"found {len(ranks)} ranks of {cfg.processes - 1}"
    saved = set(checkpoint_steps(cfg.steps, cfg.checkpoint_interval))
    wall, cpu = [], []
    for s in range(max(2, warmup + 1), cfg.steps + 1):
        if s not in saved:
            wall.append(marks[s][0] - marks[s - 1][0])
            cpu.append(marks[s][1] - marks[s - 1][1])
    return {"wall": wall, "cpu": cpu, "params": summary["parameters"], "vocab": summary["vocab_size"]}


def _plain_hf_rank(rank: int, size: int, shape: dict, threads: int, warmup: int, steps: int, seed: int,
                   store_file: str | None, out: str | None) -> dict:
    """One process of the plain Hugging Face loop (all of it when ``size`` is 1): per-step wall and CPU seconds."""
    import torch.distributed as dist
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    if size > 1:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=size)
    try:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        config = GPTNeoXConfig(vocab_size=shape["vocab"], hidden_size=shape["d"], num_hidden_layers=shape["layers"],
                               num_attention_heads=shape["heads"], intermediate_size=4 * shape["d"], rotary_pct=0.25,
                               max_position_embeddings=shape["ctx"], use_parallel_residual=True,
                               tie_word_embeddings=False, hidden_act="gelu", attention_dropout=0.0, hidden_dropout=0.0)
        model = GPTNeoXForCausalLM(config).train()
        params = sum(p.numel() for p in model.parameters())
        if size > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
        rows = shape["batch"] // size
        batches = torch.randint(0, shape["vocab"], (warmup + steps, shape["batch"], shape["ctx"]), generator=g)
        batches = batches[:, rank * rows:(rank + 1) * rows].contiguous()
        wall, cpu = [], []
        for i in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = model(input_ids=batches[i], labels=batches[i]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        timing = {"wall": wall, "cpu": cpu, "params": params}
        if out is not None:
            Path(out, f"{rank}.json").write_text(json.dumps(timing))
        return timing
    finally:
        if size > 1:
            dist.destroy_process_group()


def time_plain_hf(cfg, vocab: int, warmup: int, steps: int, seed: int) -> dict:
    """The plain Hugging Face loop on ``cfg``'s shape, processes and threads: per-step wall seconds
    (rank 0's) and CPU seconds (summed over the processes)."""
    shape = {"layers": cfg.n_layers, "d": cfg.d_model, "heads": cfg.n_heads, "ctx": cfg.ctx, "batch": cfg.batch_size,
             "vocab": vocab}
    threads = cfg.threads or (1 if cfg.processes > 1 else os.cpu_count() or 1)
    if cfg.processes == 1:
        before = torch.get_num_threads()
        try:
            return _plain_hf_rank(0, 1, shape, threads, warmup, steps, seed, None, None)
        finally:
            torch.set_num_threads(before)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_plain_hf_rank, args=(cfg.processes, shape, threads, warmup, steps, seed,
                                                 str(Path(out) / "store"), out),
                           nprocs=cfg.processes, start_method="spawn")
        each = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(cfg.processes)]
    return {"wall": each[0]["wall"], "cpu": [sum(c) for c in zip(*(e["cpu"] for e in each))],
            "params": each[0]["params"]}


# ------------------------------------------------------------------ ablation of a step
def ablation(args) -> None:
    """Candidate changes of ``train_lm``'s step, each against the step itself, interleaved."""
    import torch.nn.functional as F

    from mechtrunc.models.lm.corpus import Corpus
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.models.lm.train import build_model, lm_preset

    tok = lm_tokenizer()
    base = lm_preset(args.reference)
    b, c, one = base.batch_size, base.ctx, args.threads or 1
    variants = {  # name: (batch, ctx, attention, AdamW options, clip foreach, loss outside HF, compile, threads)
        "train_lm's step (reference)": (b, c, "sdpa", {}, None, False, False, one),
        "AdamW foreach + clip foreach": (b, c, "sdpa", {"foreach": True}, True, False, False, one),
        "AdamW fused": (b, c, "sdpa", {"fused": True}, None, False, False, one),
        "loss outside HF (logits, F.cross_entropy)": (b, c, "sdpa", {}, None, True, False, one),
        "eager attention": (b, c, "eager", {}, None, False, False, one),
        f"{2 * one} threads": (b, c, "sdpa", {}, None, False, False, 2 * one),
        "batch 32 x ctx 128": (32, 128, "sdpa", {}, None, False, False, one),
        "batch 64 x ctx 64": (64, 64, "sdpa", {}, None, False, False, one),
    }
    if args.compile:
        variants["torch.compile(model)"] = (b, c, "sdpa", {}, None, False, True, one)

    def make(batch, ctx, attn, opt_kw, clip_foreach, own_loss, compile_, threads):
        cfg = lm_preset(args.reference, batch_size=batch, ctx=ctx)
        corpus = Corpus(cfg.corpus, tok)
        model = build_model(cfg, len(tok)).train()
        model.config._attn_implementation = attn
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
                                **opt_kw)
        fwd = torch.compile(model) if compile_ else model

        def step(s):  # train.py's update, with the one change
            torch.set_num_threads(threads)
            x = torch.from_numpy(corpus.batch(s, batch, ctx)).long()
            for g in opt.param_groups:
                g["lr"] = cfg.lr_at(s)
            if own_loss:
                logits = fwd(input_ids=x).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            else:
                loss = fwd(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=clip_foreach)
            opt.step()
            return loss.item()

        return step, model, batch * ctx

    made = {k: make(*v) for k, v in variants.items()}
    times = {k: [] for k in made}
    for s in range(args.warmup):
        for step, _, _ in made.values():
            step(s)
    for s in range(args.warmup, args.warmup + args.steps):
        for k, (step, _, _) in made.items():
            c0 = time.process_time()
            step(s)
            times[k].append(time.process_time() - c0)
    ref_name = next(iter(made))
    ref_state = made[ref_name][1].state_dict()
    ref_rate = made[ref_name][2] / statistics.median(times[ref_name])
    rows = []
    for k, (_, model, tokens) in made.items():
        v = variants[k]
        same_shape = v[:2] == variants[ref_name][:2]
        same = all(torch.equal(a, b) for a, b in zip(ref_state.values(), model.state_dict().values()))
        rate = tokens / statistics.median(times[k])
        rows.append([k, f"{tokens}", f"{statistics.median(times[k]) * 1e3:.1f}", f"{min(times[k]) * 1e3:.1f}",
                     f"{rate:,.0f}", f"{rate / ref_rate:.2f}", ("yes" if same else "no") if same_shape else "-"])
    # where the reference step's time goes (self CPU time of the operators, grouped)
    from torch.profiler import ProfilerActivity, profile

    step = made[ref_name][0]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(args.warmup + args.steps, args.warmup + args.steps + 10):
            step(s)
    groups = {"matrix products (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention kernel (sdpa, forward + backward)": ("scaled_dot_product",),
              "softmax cross-entropy (log_softmax, nll_loss)": ("log_softmax", "nll_loss"),
              "GELU": ("gelu",), "LayerNorm": ("layer_norm",)}
    spent = {g: 0.0 for g in [*groups, "everything else (elementwise, copies, AdamW, autograd)"]}
    for e in prof.key_averages():
        g = next((g for g, keys in groups.items() if any(k in e.key for k in keys)), None)
        spent[g or next(reversed(spent))] += e.self_cpu_time_total / 1e6
    total = sum(spent.values())
    _, _, ref_tokens = made[ref_name]
    mm_flops = 6 * (base.n_layers * 12 * base.d_model ** 2 + base.d_model * len(tok)) * ref_tokens
    mm_cpu_s = spent["matrix products (mm, addmm, bmm)"] / total * statistics.median(times[ref_name])
    print(f"where train_lm's step goes ({args.reference}, 10 steps under torch.profiler, self time of the operators):")
    print_table(["operators", "share"], [[g, f"{t / total:.0%}"] for g, t in spent.items()])
    print(f"matrix products: {mm_flops / 1e9:.2f} GFLOP per step (6 N per token) in {mm_cpu_s * 1e3:.0f} ms of CPU "
          f"(their share of the median step below): {mm_flops / mm_cpu_s / 1e9:.0f} GFLOP per CPU-second")
    print(f"ablation: {args.steps} timed steps each after {args.warmup} warm-up, interleaved, {one} thread(s) unless "
          "named; CPU time of the process (all its threads)")
    print_table(["step", "tokens/step", "median cpu ms", "min cpu ms", "tokens/cpu-s", "vs reference",
                 "same weights"], rows)




# ------------------------------------------------------------------ main
def _layout(cfg) -> tuple[int, int]:
    """(processes, torch threads per process) of a config, as train_lm runs it."""
    threads = cfg.threads if cfg.threads is not None else (1 if cfg.processes > 1 else os.cpu_count() or 1)
    return cfg.processes, threads


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], default_threads=None, repeats=3, warmup=3)
    p.add_argument("--steps", type=int, default=20, help="timed updates per row and round")
    p.add_argument("--reference", default="small", help="reference preset")
    p.add_argument("--new", default="fast", help="proposed preset")
    p.add_argument("--shapes", nargs="*", default=[], metavar="BATCHxCTX",
                   help="more train_lm rows: the new preset with these batch x context (e.g. 16x64 64x128)")
    p.add_argument("--ablation", action="store_true", help="time candidate changes of a step instead")
    p.add_argument("--compile", action="store_true", help="with --ablation: add torch.compile(model)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("--steps, --repeats and --warmup must be >= 1")
    if args.device != "cpu":
        p.error(f"--device {args.device!r}: this benchmark times CPU training only (cpu)")
    shapes = []
    for s in args.shapes:
        try:
            b, c = (int(x) for x in s.lower().split("x"))
            if b < 1 or c < 2:
                raise ValueError
        except ValueError:
            p.error(f"--shapes {s!r}: expected BATCHxCTX, two positive integers such as 32x128 (context >= 2)")
        shapes.append((b, c))
    from mechtrunc._choices import LM_PRESETS

    if args.new == args.reference:
        p.error(f"--new and --reference are both {args.new!r}; name two presets")
    for name in (args.reference, args.new):
        if name not in LM_PRESETS or LM_PRESETS[name].get("device", "cpu") != "cpu":
            p.error(f"unknown CPU preset {name!r}; valid: "
                    + ", ".join(k for k, v in LM_PRESETS.items() if v.get("device", "cpu") == "cpu"))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()[0]
    print(machine_line(torch.device("cpu")).rsplit(", threads", 1)[0] + f", load average {load_start:.1f}")
    if args.ablation:
        ablation(args)
        return

    from mechtrunc.models.lm.train import lm_preset

    over = {} if args.threads is None else {"threads": args.threads}
    ref, new = lm_preset(args.reference, **over), lm_preset(args.new, **over)
    plain = f"plain HF loop, no mechtrunc{' (DDP)' if new.processes > 1 else ''}"
    rows_spec = [(f"{args.reference} (train_lm)", ref), (f"{args.new} (train_lm)", new), (plain, new)]
    for b, c in shapes:
        try:
            rows_spec.append((f"{args.new}, batch {b} x ctx {c} (train_lm)", lm_preset(args.new, batch_size=b, ctx=c, **over)))
        except ValueError as e:
            p.error(f"--shapes {b}x{c}: {e}")
    runs = {name: [] for name, _ in rows_spec}
    vocab = None
    for r in range(args.repeats):
        for name, cfg in rows_spec:
            if name == plain:
                t = time_plain_hf(cfg, vocab, args.warmup, args.steps, args.seed + r)
            else:
                t = time_train_lm(cfg, args.warmup, args.steps)
                vocab = t["vocab"]
            runs[name].append(t)
    peaks = {}
    for _, cfg in rows_spec:
        key = (*_layout(cfg), cfg.batch_size * cfg.ctx // cfg.processes)
        if key not in peaks:
            peaks[key] = matmul_peak(key[2], cfg.d_model, vocab, key[1], key[0])

    figures, rows = {}, []
    for name, cfg in rows_spec:
        processes, threads = _layout(cfg)
        fpt, n_mm = flops_per_token(cfg.n_layers, cfg.d_model, cfg.ctx, vocab)
        tokens = cfg.batch_size * cfg.ctx
        per_round = [(tokens / statistics.median(t["wall"]), tokens / statistics.median(t["cpu"])) for t in runs[name]]
        wall_rate = statistics.median(w for w, _ in per_round)
        cpu_rate = statistics.median(c for _, c in per_round)
        peak, _ = peaks[processes, threads, tokens // processes]
        figures[name] = {"processes": processes, "threads": threads, "batch": cfg.batch_size, "ctx": cfg.ctx,
                         "tokens_per_step": tokens, "params": runs[name][0]["params"], "matmul_weights": n_mm,
                         "flops_per_token": fpt,
                         "wall_ms_per_step": 1e3 * statistics.median(statistics.median(t["wall"]) for t in runs[name]),
                         "cpu_ms_per_step": 1e3 * statistics.median(statistics.median(t["cpu"]) for t in runs[name]),
                         "tokens_per_s": wall_rate, "tokens_per_cpu_s": cpu_rate, "per_round": per_round,
                         "gflops_wall": fpt * wall_rate / 1e9, "gflops_per_cpu_s": fpt * cpu_rate / 1e9,
                         "peak_gflops": peak, "tokens_per_s_at_peak": peak * 1e9 / fpt}
        f = figures[name]
        rows.append([name, f"{processes} x {threads}", f"{cfg.batch_size} x {cfg.ctx}", f"{f['params']:,}",
                     f"{fpt / 1e6:.2f}", f"{f['wall_ms_per_step']:.1f}", f"{f['cpu_ms_per_step']:.1f}",
                     f"{wall_rate:,.0f}", f"{cpu_rate:,.0f}", f"{f['gflops_wall']:.1f}", f"{peak:.1f}",
                     f"{f['tokens_per_s_at_peak']:,.0f}", f"{f['gflops_wall'] / peak:.0%}"])
    print(f"{args.repeats} rounds x {args.steps} timed updates per row (after {args.warmup} warm-up; checkpoint "
          "updates left out); median over rounds")
    print_table(["run", "processes x threads", "batch x ctx", "params", "MFLOP/token", "wall ms/step", "cpu ms/step",
                 "tokens/s", "tokens/cpu-s", "GFLOP/s", "peak GFLOP/s", "tokens/s at peak", "of peak"], rows)
    print("FLOPs/token = 6 N + 12 L ctx d (N: weights of the matrix products, unembedding included); peak: the "
          "fastest fp32 torch.mm of the model's shapes (best of 15 repeats) on the row's processes x threads, "
          "the processes measuring together (" + "; ".join(
              f"{pr} x {th}, {tk} tokens each: {g:.1f} GFLOP/s at {w}" for (pr, th, tk), (g, w) in sorted(peaks.items()))
          + ")")
    a, b, c = (runs[name] for name, _ in rows_spec[:3])

    def ratio(x, tx, y, ty, key):
        return statistics.median((tx / statistics.median(u[key])) / (ty / statistics.median(v[key]))
                                 for u, v in zip(x, y))

    tokens = [ref.batch_size * ref.ctx, new.batch_size * new.ctx, new.batch_size * new.ctx]
    ratios = {"new/ref tokens/s": ratio(b, tokens[1], a, tokens[0], "wall"),
              "new/ref tokens/cpu-s": ratio(b, tokens[1], a, tokens[0], "cpu"),
              "new/plain tokens/s": ratio(b, tokens[1], c, tokens[2], "wall"),
              "new/plain tokens/cpu-s": ratio(b, tokens[1], c, tokens[2], "cpu")}
    figures["ratios"] = ratios
    figures["load_average_start_end"] = [load_start, os.getloadavg()[0]]
    print(f"ratio {args.new}/{args.reference}: tokens/s (wall) {ratios['new/ref tokens/s']:.2f}x, tokens per "
          f"CPU-second {ratios['new/ref tokens/cpu-s']:.2f}x; {args.new}/{plain}: tokens/s "
          f"{ratios['new/plain tokens/s']:.2f}x, tokens per CPU-second {ratios['new/plain tokens/cpu-s']:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    r = ratios["new/ref tokens/s"]
    result("lm_train_speed", r, f">={TARGET} (tokens/s, {args.new} over {args.reference})", r >= TARGET, args.check)


if __name__ == "__main__":
    main()
