"""The language model of ``mechtrunc.models.lm``: corpus speed, training speed, unembedding share, memory.

Corpus: tokens per second on one core of ``Corpus.stories`` (the numpy generator that emits token
ids of the restricted Pythia tokenizer directly) and of ``Corpus.batch`` (the training path),
against a baseline written here without mechtrunc: a per-sentence Python generator with the same
kind of grammar (``random.choice`` per slot, ``str.format``) whose text is then encoded by the
fast (Rust) ``tokenizers`` BPE of Pythia in one batch.  Target: >= 1M tokens/s/core for
generator + tokenizer.

Training, per preset (``nano``, ``small``; ``gpu`` with ``--device cuda``): median seconds per
optimiser step over ``--steps`` timed steps after warm-up (batch generation included), tokens per
second, and the share of a step spent in the unembedding (the ``embed_out`` matmul, the
softmax cross-entropy over the vocabulary and their backward, timed alone on the same shapes); ``unembed@50k`` is the share the unembedding would take with
Pythia's whole vocabulary (50,304 rows) instead of the restricted one.
The full run is projected as steps x seconds/step + checkpoints x seconds/checkpoint, from the
wall time and from the process's CPU time per step (with one thread, the wall time of a step on a
core of its own; on a shared machine the wall time is inflated by the other processes).  ``nano`` is
also trained end to end with ``train_lm`` (target <= 60 s); ``small``'s projection is compared with
its 10-minute target.  Peak memory: the process's maximum resident set (``ru_maxrss``).

    python benchmarks/bench_lm.py                       # CPU, one thread, nano and small
    python benchmarks/bench_lm.py --presets gpu --device cuda --steps 50
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import base_parser, machine_line, print_table, result, setup

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_JSON = ROOT / "mechtrunc" / "data" / "gpt_neox_20b_tokenizer.json"


# ------------------------------------------------------------------ baseline (no mechtrunc)
NAMES = "Mary John Anna Tom Sarah James Emma David Lucy Paul Kate Mark Alice Peter Rose Jack".split()
PLACES = "store park school office beach library garden kitchen market station".split()
OBJECTS = "drink book ball pen letter cup bag key box hat".split()
CITIES = "Paris London Rome Berlin Madrid Tokyo Vienna Boston".split()
TEMPLATES = [
    "{A} walked to the {P}.", "{A} walked to {B}.", "{A} sat in the {P}.", "{A} took a picture of the {P}.",
    "When {A} and {B} went to the {P}, {B} gave a {O} to {A}.", "{A} lives in {T}.", "{A} smiled.",
    "The {P} was quiet.", "{A} had a {O}.",
]


def baseline_stories(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        sents = []
        for _ in range(8):
            a, b = rng.sample(NAMES, 2)
            sents.append(rng.choice(TEMPLATES).format(A=a, B=b, P=rng.choice(PLACES), O=rng.choice(OBJECTS),
                                                      T=rng.choice(CITIES)))
        out.append("<|endoftext|> " + " ".join(sents))
    return out


def bench_corpus(args) -> dict:
    from tokenizers import Tokenizer

    from mechtrunc.models.lm.corpus import Corpus

    corpus = Corpus()
    n = args.stories
    rows = []
    times = {"stories": [], "batch": [], "text": [], "baseline": []}
    tokens = {}
    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    rng = random.Random(0)
    for r in range(args.repeats + 1):
        t0 = time.perf_counter()
        chunk = corpus.stories(n, part=r)
        t1 = time.perf_counter()
        b = corpus.batch(r, 1024, 256)
        t2 = time.perf_counter()
        text = corpus.text(chunk)
        t3 = time.perf_counter()
        stories = baseline_stories(n, rng)
        enc = tok.encode_batch(stories)
        t4 = time.perf_counter()
        if r == 0:
            continue  # warm-up
        times["stories"].append(t1 - t0)
        times["batch"].append(t2 - t1)
        times["text"].append(t3 - t2)
        times["baseline"].append(t4 - t3)
        tokens = {"stories": len(chunk), "batch": b.size, "text": len(chunk), "baseline": sum(len(e.ids) for e in enc)}
    rates = {k: tokens[k] / statistics.median(v) for k, v in times.items()}
    labels = {"stories": "mechtrunc Corpus.stories (token ids)", "batch": "mechtrunc Corpus.batch (1024 x 256)",
              "text": "decode the ids to text (tokenizer)", "baseline": "baseline: Python strings + Rust BPE encode"}
    for k in times:
        rows.append([labels[k], f"{tokens[k]:,}", f"{statistics.median(times[k]) * 1e3:.1f}", f"{rates[k] / 1e6:.2f}"])
    print_table(["path", "tokens", "median ms", "M tokens/s"], rows)
    return {k: round(v) for k, v in rates.items()}


# ------------------------------------------------------------------ training
def unembed_seconds(cfg, vocab: int, device, repeats: int) -> float:
    head = torch.nn.Linear(cfg.d_model, vocab, bias=False).to(device)
    h = torch.randn(cfg.batch_size, cfg.ctx, cfg.d_model, device=device, requires_grad=True)
    y = torch.randint(0, vocab, (cfg.batch_size, cfg.ctx), device=device)
    ts = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(h).view(-1, vocab), y.view(-1))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_train(preset: str, args, device) -> dict:
    from mechtrunc.models.lm.corpus import Corpus
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.models.lm.train import build_model, checkpoint_steps, lm_preset

    cfg = lm_preset(preset, device=str(device), threads=args.threads)
    tok = lm_tokenizer()
    corpus = Corpus(cfg.corpus, tok)
    model = build_model(cfg, len(tok)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    steps = args.steps if preset != "nano" else min(args.steps, 100)
    ts, cpu = [], []
    for s in range(steps + 5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        batch = torch.from_numpy(corpus.batch(s, cfg.batch_size, cfg.ctx)).long().to(device)
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        if s >= 5:
            ts.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    step_s = statistics.median(ts)
    cpu_s = statistics.median(cpu)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        model.save_pretrained(d)
        tok.save_pretrained(d)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(d) / "state.pt")
        save_s = time.perf_counter() - t0
    n_ckpt = len(checkpoint_steps(cfg.steps, cfg.checkpoint_interval))
    unemb = unembed_seconds(cfg, len(tok), device, 20)
    unemb_full = unembed_seconds(cfg, 50304, device, 5)  # Pythia's padded 50,277-token vocabulary
    out = {
        "preset": preset, "params": sum(p.numel() for p in model.parameters()), "steps": cfg.steps,
        "tokens_per_step": cfg.batch_size * cfg.ctx, "step_s": step_s, "tokens_per_s": cfg.batch_size * cfg.ctx / step_s,
        "unembed_share": unemb / step_s,
        "unembed_share_full_vocab": unemb_full / (step_s - unemb + unemb_full), "checkpoints": n_ckpt, "save_s": save_s,
        "projected_s": cfg.steps * step_s + n_ckpt * save_s, "timed_steps": steps,
        "cpu_step_s": cpu_s, "projected_cpu_s": cfg.steps * cpu_s + n_ckpt * save_s,
        "spread_s": (min(ts), max(ts)),
    }
    return out


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], default_threads=1, repeats=5, warmup=1)
    p.add_argument("--presets", default="nano,small", help="comma-separated training presets to time")
    p.add_argument("--steps", type=int, default=200, help="timed training steps per preset (nano: at most 100)")
    p.add_argument("--stories", type=int, default=20000, help="stories per corpus call")
    p.add_argument("--skip-corpus", action="store_true")
    p.add_argument("--skip-nano-run", action="store_true", help="skip the end-to-end nano train_lm run")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    device = setup(args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(machine_line(device))
    figures: dict = {}
    ok = True
    if not args.skip_corpus:
        rates = bench_corpus(args)
        figures["corpus_tokens_per_s"] = rates
        gen_ok = min(rates["stories"], rates["batch"]) >= 1e6
        ok &= gen_ok
        print(f"generator: {rates['stories'] / 1e6:.1f}M tokens/s/core (ids), {rates['batch'] / 1e6:.1f}M (training "
              f"batches); baseline {rates['baseline'] / 1e6:.2f}M; "
              f"ratio {rates['stories'] / rates['baseline']:.0f}x; target >= 1M: {'PASS' if gen_ok else 'FAIL'}")
    rows = []
    for preset in [x for x in args.presets.split(",") if x]:
        r = bench_train(preset, args, device)
        figures[preset] = r
        target = {"nano": 60, "small": 600}.get(preset)
        if target:
            ok &= r["projected_cpu_s"] <= target
        rows.append([preset, f"{r['params']:,}", r["steps"], f"{r['step_s'] * 1e3:.1f}", f"{r['cpu_step_s'] * 1e3:.1f}",
                     f"{r['tokens_per_s']:,.0f}", f"{r['unembed_share']:.0%}",
                     f"{r['unembed_share_full_vocab']:.0%}", f"{r['checkpoints']} x {r['save_s']:.2f}",
                     f"{r['projected_s']:.0f}", f"{r['projected_cpu_s']:.0f}", target or "-"])
    if rows:
        print_table(["preset", "params", "steps", "wall ms/step", "cpu ms/step", "tokens/s", "unembed", "unembed@50k", "ckpt x s",
                     "projected wall s", "projected cpu s", "target s"], rows)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: with one thread, cpu ms/step is "
              "what a step costs on a core of its own (the target is checked on the cpu projection)")
    if "nano" in args.presets.split(",") and not args.skip_nano_run:
        from mechtrunc.models.lm.train import lm_preset, train_lm

        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = train_lm(lm_preset("nano", threads=args.threads), Path(d) / "nano", progress=False)
            wall = time.perf_counter() - t0
        figures["nano_run"] = {"wall_s": wall, **{k: s[k] for k in ("seconds", "tokens_per_second", "final_loss")}}
        ok &= wall <= 60
        print(f"nano end to end (train_lm, {s['steps']} steps, {len(s['checkpoints'])} checkpoints): {wall:.1f} s "
              f"wall, final loss {s['final_loss']:.3f}; target <= 60 s: {'PASS' if wall <= 60 else 'FAIL'}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["peak_rss_mb"] = peak
    if device.type == "cuda":
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"peak CUDA memory allocated: {figures['peak_cuda_mb']:.0f} MiB")
    print(f"peak resident memory of this process (all of the above): {peak:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    result("lm", 1.0, "corpus>=1M tok/s/core, nano<=60s, small projected<=600s", ok, args.check)


if __name__ == "__main__":
    main()
