"""Training speed of the language model: ``small`` vs a faster configuration vs a plain Hugging Face loop.

Three rows, timed in rounds (each round runs each row once, in this order; the table gives the
median over rounds, the ratios the median over rounds of the ratio within a round):

- **reference** (``--reference``, default ``small``): ``mechtrunc.models.lm.train.train_lm`` on the preset,
  run for ``--warmup + --steps`` updates into a temporary directory;
- **new** (``--new``, default ``fast``): the same, for the proposed preset;
- **plain HF**: a training loop written here without mechtrunc: ``transformers.GPTNeoXForCausalLM``
  built from a ``GPTNeoXConfig`` of the new preset's shape (Pythia's architecture: rotary on 25% of
  each head, parallel attention and MLP, untied unembedding, GELU, ``d_mlp = 4 d``; vocabulary size
  that of the restricted tokenizer), ``torch.optim.AdamW`` (lr 1e-3, betas 0.9/0.95, weight decay
  0.01), gradient clipping at 1 (the Hugging Face ``Trainer`` default), ``model(input_ids,
  labels=input_ids).loss``, on uniformly random token batches generated before timing, on the new
  preset's thread count.

A step of the ``train_lm`` rows is the interval between two calls of its ``callback`` (batch
generation, learning-rate update, forward, loss, backward, clipping, optimiser step, history):
the first ``--warmup`` updates and the updates that end with a checkpoint save are not counted.
Per row: wall time per step, the process's CPU time per step (all threads), tokens per second of
wall time and tokens per CPU-second, and the FLOP rate: model FLOPs per token x tokens/s, with

    FLOPs/token = 6 N + 12 L ctx d

(N: the weights of all matrix products, the unembedding included, the input embedding, a lookup,
excluded; 6 = forward 2 + backward 4; 12 L ctx d: the attention scores and the weighted sum over
all ctx positions, forward and backward, without the causal half).  The arithmetic floor beside
it is a measured peak: the fastest repeat of fp32 ``torch.mm`` products of the model's shapes
(tokens of a step x d x 3d, 4d, vocabulary; d x tokens x 4d for the weight gradients) on each
row's thread count.  ``tokens/s at peak`` is that peak / FLOPs per token: no run of this model on
these threads can go faster without doing fewer FLOPs.

``--ablation`` times instead the candidate changes of a training step (one at a time against
the step of ``train_lm``, interleaved, same model and batches; column ``same weights`` says
whether the weights after the timed steps equal bit for bit those of ``train_lm``'s step).

    OMP_NUM_THREADS=1 python benchmarks/bench_lm_train.py                    # small vs fast vs plain HF
    OMP_NUM_THREADS=1 python benchmarks/bench_lm_train.py --threads 1        # every row on one thread
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


def matmul_peak(tokens: int, d: int, vocab: int, threads: int, repeats: int = 15) -> tuple[float, str]:
    """The best GFLOP/s over fp32 ``torch.mm`` products of the model's shapes (fastest repeat), and its shape."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, where = 0.0, ""
        for m, k, n in ((tokens, d, 3 * d), (tokens, d, 4 * d), (tokens, 4 * d, d), (tokens, d, vocab),
                        (d, tokens, 4 * d), (4 * d, tokens, d)):
            a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
            for _ in range(3):
                torch.mm(a, b, out=c)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.mm(a, b, out=c)
                ts.append(time.perf_counter() - t0)
            rate = 2 * m * k * n / min(ts) / 1e9  # the best repeat: a peak, robust to other processes
            if rate > best:
                best, where = rate, f"{m}x{k} @ {k}x{n}"
        return best, where
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ the rows
def time_train_lm(cfg, warmup: int, steps: int) -> dict:
    """Per-update wall and CPU seconds of ``train_lm(cfg)`` (checkpoint updates and warm-up left out)."""
    from dataclasses import replace

    from mechtrunc.models.lm.train import checkpoint_steps, train_lm

    cfg = replace(cfg, steps=warmup + steps)
    marks = {}

    def callback(done, loss):
        marks[done] = (time.perf_counter(), time.process_time())

    with tempfile.TemporaryDirectory() as d:
        summary = train_lm(cfg, Path(d) / "run", progress=False, callback=callback)
    saved = set(checkpoint_steps(cfg.steps, cfg.checkpoint_interval))
    wall, cpu = [], []
    for s in range(max(2, warmup + 1), cfg.steps + 1):
        if s not in saved:
            wall.append(marks[s][0] - marks[s - 1][0])
            cpu.append(marks[s][1] - marks[s - 1][1])
    return {"wall": wall, "cpu": cpu, "params": summary["parameters"], "vocab": summary["vocab_size"]}


def time_plain_hf(n_layers: int, d: int, n_heads: int, ctx: int, batch: int, vocab: int, threads: int,
                  warmup: int, steps: int, seed: int) -> dict:
    """A plain Hugging Face training loop (no mechtrunc) of the same shape; per-step wall and CPU seconds."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        config = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                               intermediate_size=4 * d, rotary_pct=0.25, max_position_embeddings=ctx,
                               use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu",
                               attention_dropout=0.0, hidden_dropout=0.0)
        model = GPTNeoXForCausalLM(config).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
        batches = torch.randint(0, vocab, (warmup + steps, batch, ctx), generator=g)
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
        return {"wall": wall, "cpu": cpu, "params": sum(p.numel() for p in model.parameters())}
    finally:
        torch.set_num_threads(before)


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
def main() -> None:
    p = base_parser(__doc__.splitlines()[0], default_threads=None, repeats=3, warmup=3)
    p.add_argument("--steps", type=int, default=20, help="timed updates per row and round")
    p.add_argument("--reference", default="small", help="reference preset")
    p.add_argument("--new", default="fast", help="proposed preset")
    p.add_argument("--ablation", action="store_true", help="time candidate changes of a step instead")
    p.add_argument("--compile", action="store_true", help="with --ablation: add torch.compile(model)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("--steps, --repeats and --warmup must be >= 1")
    if args.device != "cpu":
        p.error(f"--device {args.device!r}: this benchmark times CPU training only (cpu)")
    from mechtrunc._choices import LM_PRESETS

    for name in (args.reference, args.new):
        if name not in LM_PRESETS or LM_PRESETS[name].get("device", "cpu") != "cpu":
            p.error(f"unknown CPU preset {name!r}; valid: "
                    + ", ".join(k for k, v in LM_PRESETS.items() if v.get("device", "cpu") == "cpu"))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    print(machine_line(torch.device("cpu")).rsplit(", threads", 1)[0] + f", load average {os.getloadavg()[0]:.1f}")
    if args.ablation:
        ablation(args)
        return

    from mechtrunc.models.lm.train import lm_preset

    over = {} if args.threads is None else {"threads": args.threads}
    ref, new = lm_preset(args.reference, **over), lm_preset(args.new, **over)
    ref_threads, new_threads = ref.threads or os.cpu_count() or 1, new.threads or os.cpu_count() or 1
    rows_spec = [(f"{args.reference} (train_lm)", ref, ref_threads), (f"{args.new} (train_lm)", new, new_threads),
                 ("plain HF loop, no mechtrunc", new, new_threads)]
    runs = {name: [] for name, _, _ in rows_spec}
    vocab = None
    for r in range(args.repeats):
        for name, cfg, threads in rows_spec:
            if name.startswith("plain"):
                t = time_plain_hf(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.ctx, cfg.batch_size, vocab, threads,
                                  args.warmup, args.steps, args.seed + r)
            else:
                t = time_train_lm(cfg, args.warmup, args.steps)
                vocab = t["vocab"]
            runs[name].append(t)
    peaks = {(th, cfg.batch_size * cfg.ctx): matmul_peak(cfg.batch_size * cfg.ctx, cfg.d_model, vocab, th)
             for _, cfg, th in rows_spec}

    figures, rows = {}, []
    for name, cfg, threads in rows_spec:
        fpt, n_mm = flops_per_token(cfg.n_layers, cfg.d_model, cfg.ctx, vocab)
        tokens = cfg.batch_size * cfg.ctx
        per_round = [(tokens / statistics.median(t["wall"]), tokens / statistics.median(t["cpu"])) for t in runs[name]]
        wall_rate = statistics.median(w for w, _ in per_round)
        cpu_rate = statistics.median(c for _, c in per_round)
        peak, _ = peaks[threads, tokens]
        figures[name] = {"threads": threads, "batch": cfg.batch_size, "ctx": cfg.ctx, "tokens_per_step": tokens,
                         "params": runs[name][0]["params"], "matmul_weights": n_mm, "flops_per_token": fpt,
                         "wall_ms_per_step": 1e3 * statistics.median(statistics.median(t["wall"]) for t in runs[name]),
                         "cpu_ms_per_step": 1e3 * statistics.median(statistics.median(t["cpu"]) for t in runs[name]),
                         "tokens_per_s": wall_rate, "tokens_per_cpu_s": cpu_rate, "per_round": per_round,
                         "gflops_wall": fpt * wall_rate / 1e9, "gflops_per_cpu_s": fpt * cpu_rate / 1e9,
                         "peak_gflops": peak, "tokens_per_s_at_peak": peak * 1e9 / fpt}
        f = figures[name]
        rows.append([name, threads, f"{cfg.batch_size} x {cfg.ctx}", f"{f['params']:,}", f"{fpt / 1e6:.2f}",
                     f"{f['wall_ms_per_step']:.1f}", f"{f['cpu_ms_per_step']:.1f}", f"{wall_rate:,.0f}",
                     f"{cpu_rate:,.0f}", f"{f['gflops_wall']:.1f}", f"{peak:.1f}", f"{f['tokens_per_s_at_peak']:,.0f}",
                     f"{f['gflops_wall'] / peak:.0%}"])
    print(f"{args.repeats} rounds x {args.steps} timed updates per row (after {args.warmup} warm-up; checkpoint "
          "updates left out); median over rounds")
    print_table(["run", "threads", "batch x ctx", "params", "MFLOP/token", "wall ms/step", "cpu ms/step", "tokens/s",
                 "tokens/cpu-s", "GFLOP/s", "peak GFLOP/s", "tokens/s at peak", "of peak"], rows)
    print("FLOPs/token = 6 N + 12 L ctx d (N: weights of the matrix products, unembedding included); peak: the "
          "fastest fp32 torch.mm of the model's shapes (best of 15 repeats) on the row's threads ("
          + "; ".join(f"{th} thread{'s' * (th > 1)}: {g:.1f} GFLOP/s at {w}" for (th, _), (g, w) in sorted(peaks.items()))
          + ")")
    a, b, c = (runs[name] for name, _, _ in rows_spec)

    def ratio(x, tx, y, ty, key):
        return statistics.median((tx / statistics.median(u[key])) / (ty / statistics.median(v[key]))
                                 for u, v in zip(x, y))

    tokens = [ref.batch_size * ref.ctx, new.batch_size * new.ctx, new.batch_size * new.ctx]
    ratios = {"new/ref tokens/s": ratio(b, tokens[1], a, tokens[0], "wall"),
              "new/ref tokens/cpu-s": ratio(b, tokens[1], a, tokens[0], "cpu"),
              "new/plain tokens/s": ratio(b, tokens[1], c, tokens[2], "wall"),
              "new/plain tokens/cpu-s": ratio(b, tokens[1], c, tokens[2], "cpu")}
    ref_fig = figures[rows_spec[0][0]]
    floor_core = ref_fig["peak_gflops"] * 1e9 / ref_fig["flops_per_token"] / ref_threads
    ratios["per-core bound/ref tokens/cpu-s"] = floor_core / ref_fig["tokens_per_cpu_s"]
    figures["ratios"] = ratios
    figures["load_average_end"] = os.getloadavg()[0]
    print(f"ratio {args.new}/{args.reference}: tokens/s (wall) {ratios['new/ref tokens/s']:.2f}x, tokens per "
          f"CPU-second {ratios['new/ref tokens/cpu-s']:.2f}x; {args.new}/plain HF: tokens/s "
          f"{ratios['new/plain tokens/s']:.2f}x, tokens per CPU-second {ratios['new/plain tokens/cpu-s']:.2f}x")
    print(f"per core, the matrix-product peak bounds {args.reference}'s model at {floor_core:,.0f} tokens per "
          f"CPU-second, {ratios['per-core bound/ref tokens/cpu-s']:.2f}x its measured rate: 2x per core needs the "
          f"whole step, every operator, at {2 / ratios['per-core bound/ref tokens/cpu-s']:.0%} of that peak")
    print(f"load average at the end {figures['load_average_end']:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    r = ratios["new/ref tokens/s"]
    result("lm_train_speed", r, f">={TARGET} (tokens/s, {args.new} over {args.reference})", r >= TARGET, args.check)


if __name__ == "__main__":
    main()
