"""Vectorised noisy in-context recall generator vs a per-token Python loop.

Compares ``mechtrunc.tasks.recall.RecallTask.sample`` (all sequences in parallel, one batched
step per position) with a straightforward per-token loop written here the way the authors'
released generator works: one ``numpy`` ``rng.choice`` per token with the bigram row of the
previous token, a trigger followed by the fixed noise token with probability ``alpha`` and by
the sequence's output token otherwise, a unigram first token, ``k`` fixed triggers (the ``k``
most frequent characters).  Both use ``mechtrunc.tasks.recall.char_stats()``.  Two loops are
timed: "lean" (integer population, dict lookup; the RESULT reference by default, the stricter
one) and "released-style" (the population passed as a Python list, ``random.uniform`` and
``list.index`` as in the released code; slower).

Measured: sequences per second on one core (``--threads 1``), median of ``--repeats`` timed
calls after warm-up, vectorised and loop calls interleaved.  Target: vectorised >= 100x the
loop.  Before the ratio is trusted the script checks that the generators produce the same
distribution (fraction of trigger positions, noise rate after triggers, rate of the output token
after triggers, positions with count >= 2, token histogram); a mismatch is a FAIL whatever the
speed.  ``--sweep`` prints the vectorised rate at other batch sizes; ``--diagnose`` times a
flattened-CDF rewrite of the sampler (checked bit-identical to ``RecallTask.sample``).

    python benchmarks/bench_generator.py                  # CPU, one core
    python benchmarks/bench_generator.py --device cuda    # vectorised on GPU, loop on CPU
    python benchmarks/bench_generator.py --device cuda --sweep 512,4096,8192 --diagnose
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch

from _common import base_parser, machine_line, median, print_table, result, setup, spread, timed

TARGET = 100.0


class LoopGenerator:
    """The per-token reference: the same distribution as ``RecallTask``, one token at a time.

    ``style="lean"``: ``rng.choice(V, p=row)`` with an integer population and a dict lookup of
    the trigger's output token -- the straightforward loop a careful engineer would write.
    ``style="released"``: what the authors' released generator does per token -- the population
    passed as a Python list (``rng.choice(tok_range, p=row)``, which converts the list to an
    array at every call), Python's ``random.uniform`` for the noise draw, ``list.index`` to find
    the trigger, and the occurrence counter built inside the loop.  Same distribution, slower.
    """

    def __init__(self, alpha: float, k: int, noise_id: int, style: str = "lean", seed: int = 0):
        from mechtrunc.tasks.recall import char_stats

        stats = char_stats()
        uni = stats.unigram.numpy().astype(np.float64)
        big = stats.bigram.numpy().astype(np.float64)
        self.V = stats.vocab_size
        self.unigram = uni / uni.sum()
        self.bigram = big / big.sum(1, keepdims=True)
        self.bigram_rows = [row for row in self.bigram]
        # fixed triggers: the k most frequent characters (stable order, as RecallTask)
        self.triggers = [int(t) for t in np.argsort(-uni, kind="stable")[:k]]
        self.alpha, self.k, self.noise, self.style = alpha, k, noise_id, style
        self.py_random = random.Random(seed)

    def sample(self, n: int, seq_len: int, rng: np.random.Generator):
        return (self._lean if self.style == "lean" else self._released)(n, seq_len, rng)

    def _lean(self, n, T, rng):
        V = self.V
        seqs = np.empty((n, T + 1), dtype=np.int64)
        outputs = np.empty((n, self.k), dtype=np.int64)
        for i in range(n):
            # each trigger gets one output token, uniform over the whole vocabulary
            out = rng.choice(V, size=self.k)
            outputs[i] = out
            trig_out = {t: int(o) for t, o in zip(self.triggers, out)}
            x = [int(rng.choice(V, p=self.unigram))]
            for _ in range(T):
                prev = x[-1]
                if prev in trig_out:
                    x.append(self.noise if rng.random() < self.alpha else trig_out[prev])
                else:
                    x.append(int(rng.choice(V, p=self.bigram_rows[prev])))
            seqs[i] = x
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        is_trig = inputs[:, :, None] == np.asarray(self.triggers)[None, None, :]
        counts = (np.cumsum(is_trig, 1) * is_trig).sum(-1)
        return inputs, targets, counts, outputs

    def _released(self, n, T, rng):
        tok_range = list(range(self.V))
        idxs = list(self.triggers)
        seqs, cnt_rows, outputs = [], [], []
        for _ in range(n):
            outs = [rng.choice(tok_range) for _ in idxs]
            outputs.append(outs)
            cnts, counts = {}, []
            seq = [rng.choice(tok_range, p=self.unigram)]
            while len(seq) < T + 1:
                last = seq[-1]
                if last in idxs:
                    if self.py_random.uniform(0, 1) >= self.alpha:
                        seq.append(outs[idxs.index(last)])
                    else:
                        seq.append(self.noise)
                    cnts[last] = cnts.get(last, 0) + 1
                    counts.append(cnts[last])
                else:
                    counts.append(0)
                    seq.append(rng.choice(tok_range, p=self.bigram_rows[last]))
            seqs.append(seq)
            cnt_rows.append(counts)
        x = np.array(seqs, dtype=np.int64)
        return x[:, :-1], x[:, 1:], np.array(cnt_rows, dtype=np.int64), np.array(outputs, dtype=np.int64)


def flat_cdf_sample(task, batch_size: int, generator: torch.Generator, alpha: float | None = None):
    """Diagnosis only: ``RecallTask.sample`` rewritten with a flattened CDF.

    Same random draws in the same order and the same maths, so the output is bit-identical:
    row ``r`` of the bigram CDF becomes the values ``r + min(cdf[r], 1)`` of one sorted 1-D table
    (float64, exact), so ``searchsorted(flat, prev + u, right=True) - prev * V`` is the bigram draw.
    That removes the per-step gather of ``[batch, V]`` CDF rows and the batched row-wise search;
    the noise decisions are also taken for every position before the loop.  Returns ``seq``
    ``[batch, T + 1]``.
    """
    cfg, dev, B, T = task.config, task.device, batch_size, task.config.seq_len
    alpha = cfg.alpha if alpha is None else alpha
    g = generator
    triggers = task._triggers(B, g)
    outputs = torch.randint(0, task.base_vocab, (B, cfg.k), generator=g, device=dev)
    u_chain = torch.rand(B, T + 1, generator=g, device=dev)
    u_noise = torch.rand(B, T, generator=g, device=dev)
    trig_out = torch.full((B, task.base_vocab + 1), -1, dtype=torch.long, device=dev)
    trig_out.scatter_(1, triggers, outputs)
    # (these three would be computed once, in RecallTask.__init__)
    V1, V = task.bigram_cdf.shape
    flat = (torch.arange(V1, dtype=torch.float64, device=dev)[:, None]
            + task.bigram_cdf.double().clamp(max=1.0)).reshape(-1)
    row_start = torch.arange(V1, device=dev) * V
    W = trig_out.shape[1]
    to_flat = trig_out.reshape(-1)
    row_off = torch.arange(B, device=dev) * W
    u = u_chain.T.double()  # [T + 1, B]
    noisy = (u_noise.T < alpha).contiguous()  # [T, B], every noise decision at once
    noise = torch.full((B,), cfg.noise_id, dtype=torch.long, device=dev)
    seq = torch.empty(T + 1, B, dtype=torch.long, device=dev)
    seq[0] = torch.searchsorted(task.unigram_cdf, u_chain[:, 0].contiguous(), right=True)
    for t in range(T):
        prev = seq[t]
        markov = torch.searchsorted(flat, prev + u[t + 1], right=True) - row_start[prev]
        out = to_flat[row_off + prev]
        torch.where(out >= 0, torch.where(noisy[t], noise, out), markov, out=seq[t + 1])
    return seq.T


def statistics_of(inputs, targets, counts, outputs, triggers, noise_id, V) -> dict:
    inputs, targets, counts, outputs = (np.asarray(a) for a in (inputs, targets, counts, outputs))
    is_trig = np.isin(inputs, triggers)
    # output token of the trigger at each position (k = 1 in the default run; general k below)
    out_at = np.full(inputs.shape, -1)
    for j, t in enumerate(triggers):
        out_at = np.where(inputs == t, outputs[:, j : j + 1], out_at)
    return {
        "trigger fraction": is_trig.mean(),
        "noise rate after trigger": (targets[is_trig] == noise_id).mean(),
        "output rate after trigger": (targets[is_trig] == out_at[is_trig]).mean(),
        "count>=2 per sequence": (counts >= 2).sum(1).mean(),
        "_hist": np.bincount(inputs.ravel(), minlength=V) / inputs.size,
    }


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0], default_threads=1, repeats=5, warmup=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4096, help="sequences per vectorised call")
    p.add_argument("--loop-seqs", type=int, default=64, help="sequences per loop call")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--sweep", default="", help="also print vectorised seqs/s for these batch sizes, e.g. 512,2048,8192")
    p.add_argument("--diagnose", action="store_true",
                   help="also time a flattened-CDF rewrite of RecallTask.sample (checked bit-identical)")
    p.add_argument("--reference", choices=("lean", "released"), default="lean",
                   help="which per-token loop the RESULT ratio is taken against (both are measured)")
    args = p.parse_args()
    device = setup(args)

    from mechtrunc.tasks.recall import RecallConfig, RecallTask

    task = RecallTask(RecallConfig(alpha=args.alpha, k=args.k, seq_len=args.seq_len), device=device)
    loops = {style: LoopGenerator(args.alpha, args.k, task.config.noise_id, style, args.seed)
             for style in ("lean", "released")}
    triggers = loops["lean"].triggers
    assert triggers == task.fixed_triggers.tolist(), (triggers, task.fixed_triggers)

    g = torch.Generator(device=device).manual_seed(args.seed)
    rngs = {style: np.random.default_rng(args.seed + i) for i, style in enumerate(loops)}
    for _ in range(args.warmup):
        task.sample(args.batch, generator=g)
        for style, loop in loops.items():
            loop.sample(2, args.seq_len, rngs[style])

    # interleaved repeats: vectorised, lean loop, released-style loop, vectorised, ...
    times = {"vectorised": [], "lean": [], "released": []}
    outs = {"vectorised": [], "lean": [], "released": []}
    for _ in range(args.repeats):
        holder = {}
        times["vectorised"].append(timed(lambda: holder.setdefault("b", task.sample(args.batch, generator=g)), device))
        b = holder["b"]
        outs["vectorised"].append(tuple(t.cpu().numpy() for t in (b.inputs, b.targets, b.counts, b.outputs)))
        for style, loop in loops.items():
            t0 = time.perf_counter()
            outs[style].append(loop.sample(args.loop_seqs, args.seq_len, rngs[style]))
            times[style].append(time.perf_counter() - t0)
    n_per_call = {"vectorised": args.batch, "lean": args.loop_seqs, "released": args.loop_seqs}
    rate = {k: n_per_call[k] / median(v) for k, v in times.items()}

    # --- same distribution? ------------------------------------------------------------------
    cat = lambda name: [np.concatenate([o[i] for o in outs[name]], 0) for i in range(4)]
    noise_id, V = task.config.noise_id, loops["lean"].V
    st = {name: statistics_of(*cat(name), triggers, noise_id, V) for name in outs}
    tol = {"trigger fraction": 0.02, "noise rate after trigger": 0.04, "output rate after trigger": 0.04,
           "count>=2 per sequence": 0.1}  # relative for the count, absolute for rates
    stat_rows, fair = [], True
    for key, t in tol.items():
        ref = st["vectorised"][key]
        diffs = [abs(st[s][key] - ref) / (abs(ref) if key.startswith("count") else 1.0) for s in ("lean", "released")]
        ok = max(diffs) <= t
        fair &= ok
        stat_rows.append([key, f"{ref:.4f}", f"{st['lean'][key]:.4f}", f"{st['released'][key]:.4f}",
                          f"{max(diffs):.4f} (<= {t})", "ok" if ok else "MISMATCH"])
    tvs = [0.5 * np.abs(st[s]["_hist"] - st["vectorised"]["_hist"]).sum() for s in ("lean", "released")]
    fair &= max(tvs) <= 0.05
    stat_rows.append(["token histogram TV distance", "", f"{tvs[0]:.4f}", f"{tvs[1]:.4f}", f"{max(tvs):.4f} (<= 0.05)",
                      "ok" if max(tvs) <= 0.05 else "MISMATCH"])

    print(machine_line(device))
    print(f"seq_len {args.seq_len}, alpha {args.alpha}, k {args.k}, triggers {triggers}, noise {noise_id}; "
          f"repeats interleaved, median reported")
    print()
    labels = {"vectorised": "vectorised RecallTask.sample", "lean": "per-token loop, lean",
              "released": "per-token loop, released-style"}
    rows = []
    for k in times:
        rows.append([labels[k], str(device) if k == "vectorised" else "cpu", n_per_call[k], len(times[k]),
                     f"{median(times[k]) * 1e3:.2f}", spread(times[k]), f"{rate[k]:,.0f}",
                     "1.0" if k == "vectorised" else f"{rate['vectorised'] / rate[k]:.1f}x"])
    print_table(["generator", "device", "seqs/call", "calls", "median ms/call", "min..max ms", "seqs/s",
                 "vectorised speed-up"], rows)
    print()
    print(f"distribution check ({len(cat('vectorised')[0])} vectorised, {len(cat('lean')[0])} + "
          f"{len(cat('released')[0])} loop sequences):")
    print_table(["statistic", "vectorised", "lean loop", "released loop", "max difference", ""], stat_rows)
    print()
    if args.sweep:
        sweep_rows = []
        for bs in (int(x) for x in args.sweep.split(",") if x.strip()):
            task.sample(bs, generator=g)
            ts = [timed(lambda: task.sample(bs, generator=g), device) for _ in range(3)]
            r_bs = bs / median(ts)
            sweep_rows.append([bs, f"{median(ts) * 1e3:.2f}", f"{r_bs:,.0f}", f"{r_bs / rate[args.reference]:.1f}x"])
        print(f"vectorised batch-size sweep ({device}, median of 3):")
        print_table(["batch", "ms/call", "seqs/s", f"vs {args.reference} loop"], sweep_rows)
        print()
    if args.diagnose:
        ref_b = task.sample(args.batch, seed=123)
        alt = flat_cdf_sample(task, args.batch, torch.Generator(device=device).manual_seed(123))
        same = torch.equal(alt[:, :-1], ref_b.inputs) and torch.equal(alt[:, 1:], ref_b.targets)
        t_cur, t_alt = [], []
        for _ in range(args.repeats):
            t_cur.append(timed(lambda: task.sample(args.batch, generator=g), device))
            t_alt.append(timed(lambda: flat_cdf_sample(task, args.batch, g), device))
        print(f"diagnosis ({device}, batch {args.batch}, interleaved, median of {args.repeats}):")
        print_table(["generator", "ms/call", "seqs/s", "identical output"],
                    [["RecallTask.sample (current)", f"{median(t_cur) * 1e3:.2f}", f"{args.batch / median(t_cur):,.0f}", ""],
                     ["flattened-CDF rewrite", f"{median(t_alt) * 1e3:.2f}", f"{args.batch / median(t_alt):,.0f}",
                      "yes" if same else "NO (recall.py changed?)"]])
        print()
    ratio = rate["vectorised"] / rate[args.reference]
    print(f"speed-up over the {args.reference} loop: {ratio:.1f}x (target >= {TARGET:g}x)"
          + ("" if fair else "  -- distributions differ: FAIL"))
    result("generator", ratio, f">={TARGET:g}", fair and ratio >= TARGET, args.check)


if __name__ == "__main__":
    main()
