"""The LASER grid engine (``mechtrunc.core.engine.run_grid``) against the naive loop, measured in the
same run, on a random Pythia-shaped GPT-NeoX.

The naive loop is what LASER's scripts do, written here without mechtrunc (plain PyTorch and
Hugging Face ``GPTNeoXForCausalLM``): for each (layer, matrix, keep) a fresh SVD of the weight,
a dense write-back of the rank-k product into the model, its ordinary forward pass (logits at
every position), then the metrics at the read positions; the weight is restored afterwards.
The engine evaluates the same grid on the same model object (a fresh, in-memory decomposition
cache each repeat).  Both tables are compared (max abs difference of every metric).

Printed: both times and their ratio per repeat (min/median over repeats), the grid's
multiply-add counts for both methods and their ratio (the arithmetic bound on the speed-up),
the measured matmul rate and the floor it implies for the engine, where the engine's time goes
(decompositions, forward passes, disk cache, host-device copies), the decomposition methods'
times and errors on one matrix, and on CUDA the peak memory of the engine vs one clean forward.

    python benchmarks/bench_sweep_engine.py --shape 160m --threads 1      # CPU: not slower than before (>= 3.7x)
    python benchmarks/bench_sweep_engine.py --shape 70m --threads 1       # CPU target (>= 4x)
    python benchmarks/bench_sweep_engine.py --shape 1.4b --device cuda    # GPU target (>= 10x)
    python benchmarks/bench_sweep_engine.py --shape tiny                  # smoke run (seconds)

Needs torch and transformers; transformer-lens is *not* needed (the engine runs on the Hugging
Face model directly through :class:`mechtrunc.core.adapters.HFNeoXAdapter`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import math
import os
import sys
import tempfile
import time
import types

import torch
import torch.nn.functional as F

from _common import _ROOT, base_parser, machine_line, median, result, setup, sync

#: CPU targets: the 70m shape >= 4x; the 160m shape not slower than the earlier engine
#: (3.7x median, docs/benchmarks.md)
CPU_TARGETS = {"70m": 4.0, "160m": 3.7}
SHAPES = {  # layers, d_model, heads, vocab
    "tiny": (4, 128, 4, 4096),
    "70m": (6, 512, 8, 50304),
    "160m": (12, 768, 12, 50304),
    "1.4b": (24, 2048, 16, 50304),
}


def import_engine():
    """``mechtrunc.core.engine``; a missing jaxtyping (annotations only) is stubbed: the engine runs
    without it (and without transformer-lens, on a bare Hugging Face model)."""
    try:
        import jaxtyping  # noqa: F401
    except ImportError:
        class _Ann:
            def __class_getitem__(cls, item):
                return torch.Tensor

        jt = types.ModuleType("jaxtyping")
        jt.__spec__ = importlib.machinery.ModuleSpec("jaxtyping", None)
        jt.Float = jt.Int = jt.Bool = _Ann
        sys.modules["jaxtyping"] = jt
    return importlib.import_module("mechtrunc.core.engine")


def build(shape: str, device: str, dtype: torch.dtype, seed: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    n_layers, d, heads, vocab = SHAPES[shape]
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=heads,
                        intermediate_size=4 * d, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False,
                        attention_dropout=0.0, hidden_dropout=0.0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPTNeoXForCausalLM(cfg).to(dtype).eval()
    return model


# ----------------------------------------------------------------------------------------
# the naive loop, without mechtrunc
# ----------------------------------------------------------------------------------------
def naive_metrics(logits: torch.Tensor, answer, comp) -> dict:
    logits = logits.float()
    logp = logits.log_softmax(-1)
    la = logits.gather(1, answer[:, None]).squeeze(1)
    lc = logits.gather(1, comp[:, None]).squeeze(1)
    return {"accuracy": (logits.argmax(-1) == answer).float().mean().item(),
            "p_answer": logp.gather(1, answer[:, None]).exp().mean().item(),
            "loss": -logp.gather(1, answer[:, None]).mean().item(),
            "p_the": logp.gather(1, comp[:, None]).exp().mean().item(),
            "acc_vs_the": (la > lc).float().mean().item(),
            "logit_diff_the": (la - lc).mean().item()}


@torch.no_grad()
def naive_loop(model, tokens, pos, answer, comp, configs, batch_size, device):
    """The metrics per configuration and the seconds spent in SVDs."""
    rows = {}
    t_svd = 0.0
    for layer, matrix, keep in configs:
        mlp = model.gpt_neox.layers[layer].mlp
        lin = mlp.dense_h_to_4h if matrix == "mlp.W_in" else mlp.dense_4h_to_h
        saved = lin.weight.detach().clone()
        sync(device)
        t0 = time.perf_counter()
        U, S, Vh = torch.linalg.svd(lin.weight.float(), full_matrices=False)
        sync(device)
        t_svd += time.perf_counter() - t0
        r = S.shape[0]
        k = max(math.floor(keep * r + 0.5), 1) if keep > 0 else 0
        lin.weight.copy_(((U[:, :k] * S[:k]) @ Vh[:k]).to(lin.weight.dtype))
        logits = []
        for s in range(0, tokens.shape[0], batch_size):
            out = model(input_ids=tokens[s:s + batch_size]).logits  # every position
            logits.append(out[torch.arange(out.shape[0], device=device), pos[s:s + batch_size]].float())
        rows[(layer, matrix, keep)] = naive_metrics(torch.cat(logits), answer, comp)
        lin.weight.copy_(saved)
    sync(device)
    return rows, t_svd


@torch.no_grad()
def clean_forward(model, tokens, batch_size):
    for s in range(0, tokens.shape[0], batch_size):
        model(input_ids=tokens[s:s + batch_size]).logits


# ----------------------------------------------------------------------------------------
# multiply-add counts
# ----------------------------------------------------------------------------------------
def mac_counts(L, d, d_mlp, V, n, T, n_items, configs, ranks):
    """Multiply-adds of the grid: (naive, engine, details).  Attention scores count the causal
    half; decompositions are counted as a LAPACK thin SVD (~ 2 m n^2 + 4 n^3... see below)."""
    tok = n * T
    attn_mix = 2 * d * (T + 1) / 2  # q.k and p.v per token, causal average
    layer = 4 * d * d + 2 * d * d_mlp + attn_mix  # per token
    unembed = d * V
    m_, n_ = d_mlp, d  # the MLP matrices are d x 4d
    svd = 2 * m_ * n_ ** 2 + 2 * n_ ** 3  # Golub-Kahan bidiagonalisation + divide and conquer, ~
    naive = 0.0
    for (l, mat, keep), r in zip(configs, ranks):
        naive += tok * (L * layer + unembed) + svd + d * d_mlp * r
    eng = 0.0
    gram = d * d * d_mlp + 10 * d ** 3 / 3  # float64 Gram matrix + eigh (tridiagonal + vectors)
    eng += tok * (L - 1) * layer + n_items * (layer + unembed) + tok * 3 * d * d  # baseline pass
    layers_done = set()
    max_l = max(l for l, _, _ in configs)
    eng += tok * max_l * layer  # the clean walk to the deepest truncated layer
    for (l, mat, keep), r in zip(configs, ranks):
        if r == min(d, d_mlp):
            continue  # identity: the baseline's row
        if (l, mat) not in layers_done:
            layers_done.add((l, mat))
            rmax = max(rr for (ll, mm, _), rr in zip(configs, ranks) if (ll, mm) == (l, mat) and rr < min(d, d_mlp))
            eng += gram
            if mat == "mlp.W_in":
                eng += tok * d * rmax + d * d_mlp * rmax  # x Q, and W Q
            else:
                eng += tok * (2 * d * d_mlp + d * rmax)  # post, clean out, coef
        if (l,) not in layers_done:
            layers_done.add((l,))
            eng += tok * (4 * d * d + attn_mix)  # the layer's attention, once
        eng += tok * (r * d_mlp + d_mlp * d) if mat == "mlp.W_in" else tok * r * d
        rest = max(0, L - 2 - l)
        eng += tok * rest * layer
        if l < L - 1:
            eng += tok * 3 * d * d + n_items * (2 * d * d + 2 * d * d_mlp + attn_mix)
        eng += n_items * unembed
    return naive, eng


# ----------------------------------------------------------------------------------------
def main() -> None:
    p = base_parser(__doc__, default_threads=None, repeats=3, warmup=0)
    p.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default float16 on CUDA, float32 on CPU")
    p.add_argument("--prompts", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--keeps", type=float, nargs="+", default=[1, 0.5, 0.2, 0.1, 0.05])
    p.add_argument("--batch-size", type=int, default=256, help="naive loop: prompts per forward")
    p.add_argument("--engine-batch", type=int, default=None,
                   help="engine: rows (prompt x configuration) per forward; default 512 CPU, 1024 CUDA")
    p.add_argument("--svd-method", default="gram",
                   help="the engine's decomposition method, or 'auto': the fastest of the timed methods "
                        "whose truncation error vs float64 LAPACK is <= 1e-5")
    p.add_argument("--skip-naive", action="store_true", help="time only the engine")
    p.add_argument("--naive-sample", type=int, default=0,
                   help="time the naive loop on this many configurations spread over the grid and scale "
                        "to the whole grid (every naive configuration costs the same: one SVD of the same "
                        "shape and one full forward); 0: the whole grid")
    args = p.parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    n = args.prompts or (256 if cuda else 64)
    T = args.tokens
    eng_batch = args.engine_batch or (1024 if cuda else 512)
    ge = import_engine()
    from mechtrunc.core.decomposition import SVDCache, truncation_basis
    from mechtrunc.core.interventions import Truncate, rank_for_keep

    t0 = time.perf_counter()
    model = build(args.shape, args.device, dtype, args.seed)
    L, d, heads, V = SHAPES[args.shape]
    print(machine_line(device))
    print(f"built {args.shape}-shaped GPT-NeoX ({sum(q.numel() for q in model.parameters()) / 1e6:.0f} M params, "
          f"{dtype}) in {time.perf_counter() - t0:.1f} s")

    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, V, (n, T), generator=g)
    answer = torch.randint(0, V, (n,), generator=g)
    comp = torch.randint(0, V, (n,), generator=g)
    pos = torch.full((n,), T - 1)
    from mechtrunc.core.prompts import PromptSet

    prompts = PromptSet(tokens=tokens, rows=torch.arange(n), pos=pos, answer=answer, competitors=comp[:, None],
                        competitor_names=("the",))
    tokens_d, pos_d, answer_d, comp_d = (t.to(device) for t in (tokens, pos, answer, comp))
    configs = [(l, m, k) for l in range(L) for m in ("mlp.W_in", "mlp.W_out") for k in args.keeps]
    r_full = d
    ranks = [rank_for_keep(k, r_full) for _, _, k in configs]
    truncs = {c: Truncate(c[1], layer=c[0], keep=c[2]) for c in configs}

    # matmul rate at the model's dtype
    m = 4096 if cuda else 1024
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 50 if cuda else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    rate = reps * m ** 3 / (time.perf_counter() - t0)  # multiply-adds per second
    del a, b
    print(f"matmul rate ({m}^3, {dtype}): {2 * rate / 1e12:.2f} TFLOP/s")

    naive_macs, eng_macs = mac_counts(L, d, 4 * d, V, n, T, n, configs, ranks)
    print(f"grid: {L} layers x 2 MLP matrices x {len(args.keeps)} keeps = {len(configs)} configurations "
          f"({sum(r < r_full for r in ranks)} non-identity), {n} prompts x {T} tokens")
    print(f"multiply-adds: naive {naive_macs / 1e12:.2f} T, engine {eng_macs / 1e12:.2f} T, "
          f"ratio (arithmetic bound) {naive_macs / eng_macs:.2f}x")
    print(f"floor: engine multiply-adds at the measured matmul rate = {eng_macs / rate:.2f} s; "
          f"naive at that rate = {naive_macs / rate:.2f} s")

    # decomposition methods on one matrix: time, and the error of the truncated matrix at the
    # grid's ranks relative to float64 LAPACK (||W_k - W_k(ref)|| / ||W||, the worst keep)
    W = model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.detach().T  # x @ W, [d, 4d]
    cut = sorted({r for r in ranks if 0 < r < r_full})
    rmax = cut[-1]
    U64, _, _ = torch.linalg.svd(W.double().cpu(), full_matrices=False)
    W64 = W.double().cpu()
    ref = {k: U64[:, :k] @ (U64[:, :k].T @ W64) for k in cut}
    methods = ["gram", "gram32", "gesdd"] + (["gesvd", "gesvdj"] if cuda else [])
    timed_methods = {}
    for meth in methods:
        try:
            truncation_basis(W, rmax, meth)  # warm-up (cuSOLVER handles, workspaces)
            sync(device)
            t0 = time.perf_counter()
            Q, S = truncation_basis(W, rmax, meth)
            sync(device)
            dt = time.perf_counter() - t0
        except Exception as e:  # a driver that fails at this shape must not end the run
            print(f"decomposition {meth:7s}: failed ({type(e).__name__}: {e})")
            continue
        Qc = Q.double().cpu()
        err = max(float((Qc[:, :k] @ (Qc[:, :k].T @ W64) - ref[k]).norm() / W64.norm()) for k in cut)
        timed_methods[meth] = (dt, err)
        print(f"decomposition {meth:7s} of a {tuple(W.shape)} {str(W.dtype)[6:]} weight on {device.type}: "
              f"{dt * 1e3:8.1f} ms, truncation error vs float64 LAPACK {err:.1e} (worst of ranks {cut})")
    del U64, W64, ref
    if args.svd_method == "auto":
        ok = {m: t for m, (t, e) in timed_methods.items() if e <= 1e-5}
        args.svd_method = min(ok, key=ok.get) if ok else "gram"
        print(f"svd-method auto: using {args.svd_method!r}")

    # warm-up
    clean_forward(model, tokens_d, args.batch_size)
    last = [c for c in configs if c[0] == L - 1]
    list(ge.run_grid(model, prompts, [truncs[c] for c in last], batch_size=eng_batch, svd_method=args.svd_method))
    sync(device)

    mem = None
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        clean_forward(model, tokens_d, args.batch_size)
        sync(device)
        mem = torch.cuda.max_memory_allocated(device)

    class TimedCache(SVDCache):
        seconds = 0.0

        def get(self, W, rank):
            sync(device)
            t = time.perf_counter()
            out = super().get(W, rank)
            sync(device)
            self.seconds += time.perf_counter() - t
            return out

    t_naive, t_eng, details, naive_svd = [], [], [], []
    if args.naive_sample and args.naive_sample < len(configs):
        import random

        pick = sorted(random.Random(args.seed).sample(range(len(configs)), args.naive_sample))
        naive_configs = [configs[i] for i in pick]
        print(f"naive loop timed on {len(naive_configs)} of {len(configs)} configurations "
              f"(layers {sorted({c[0] for c in naive_configs})}, keeps {sorted({c[2] for c in naive_configs})}), "
              f"scaled by {len(configs) / len(naive_configs):.1f}")
    else:
        naive_configs = configs
    scale = len(configs) / len(naive_configs)
    table_diff = None
    for rep in range(args.repeats):
        if not args.skip_naive:
            sync(device)
            t0 = time.perf_counter()
            naive_rows, t_svd = naive_loop(model, tokens_d, pos_d, answer_d, comp_d, naive_configs,
                                           args.batch_size, device)
            t_naive.append((time.perf_counter() - t0) * scale)
            naive_svd.append(t_svd * scale)
        cache = TimedCache(None, args.svd_method)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        eng_rows = {(r.layer, r.matrix, r.keep): r.metrics
                    for r in ge.run_grid(model, prompts, list(truncs.values()), batch_size=eng_batch, svd_cache=cache)}
        sync(device)
        t_eng.append(time.perf_counter() - t0)
        details.append((cache.seconds, torch.cuda.max_memory_allocated(device) if cuda else None))
        if not args.skip_naive:
            table_diff = max(abs(naive_rows[c][k] - eng_rows[c][k]) for c in naive_configs for k in naive_rows[c])
            fwd_ratio = (t_naive[-1] - naive_svd[-1]) / (t_eng[-1] - cache.seconds)
            print(f"repeat {rep}: naive {t_naive[-1]:8.2f} s (SVDs {naive_svd[-1]:.2f} s), engine {t_eng[-1]:7.2f} s "
                  f"(decompositions {cache.seconds:.2f} s), ratio {t_naive[-1] / t_eng[-1]:.2f}x "
                  f"(without decompositions on either side {fwd_ratio:.2f}x), "
                  f"max |table difference| {table_diff:.1e}")
        else:
            print(f"repeat {rep}: engine {t_eng[-1]:7.2f} s (decompositions {cache.seconds:.2f} s)")
        sys.stdout.flush()

    # a disk cache: a second grid on the same weights reads the decompositions back (shown on
    # the whole grid on CUDA, on the last layer's configurations on CPU to save time)
    demo = configs if cuda else last
    with tempfile.TemporaryDirectory() as tmp:
        warm = TimedCache(tmp, args.svd_method)
        list(ge.run_grid(model, prompts, [truncs[c] for c in demo], batch_size=eng_batch, svd_cache=warm))
        sync(device)
        cold_write = warm.seconds
        warm2 = TimedCache(tmp, args.svd_method)
        t0 = time.perf_counter()
        list(ge.run_grid(model, prompts, [truncs[c] for c in demo], batch_size=eng_batch, svd_cache=warm2))
        sync(device)
        t_warm = time.perf_counter() - t0
    print(f"disk cache ({len(demo)} configurations): first grid spends {cold_write:.2f} s in decompositions "
          f"(hash + compute + save); rerun {t_warm:.2f} s with {warm2.n_computed} computed, {warm2.n_loaded} "
          f"loaded ({warm2.seconds:.2f} s hashing + loading)")

    e_med = median(t_eng)
    svd_med = median([s for s, _ in details])
    print(f"engine time split (median): decompositions {svd_med:.2f} s, forward passes and metrics "
          f"{e_med - svd_med:.2f} s (floor {eng_macs / rate:.2f} s at the measured matmul rate); "
          f"host-device copies: prompts once, and one scalar read per metric per configuration")
    if cuda:
        peak = max(pk for _, pk in details)
        print(f"peak GPU memory: engine {peak / 2**30:.2f} GiB, one clean forward (batch {args.batch_size}) "
              f"+ model {mem / 2**30:.2f} GiB, ratio {peak / mem:.2f} (target <= 1.3)")
    if args.skip_naive:
        return
    ratios = [a / b for a, b in zip(t_naive, t_eng)]
    print(f"naive loop: min {min(t_naive):.2f} s, median {median(t_naive):.2f} s "
          f"(of which SVDs: median {median(naive_svd):.2f} s)")
    print(f"engine:     min {min(t_eng):.2f} s, median {e_med:.2f} s")
    print(f"speed-up over {len(ratios)} repeats: min {min(ratios):.2f}x, median {median(ratios):.2f}x; "
          f"arithmetic bound {naive_macs / eng_macs:.2f}x")
    target = 10.0 if cuda else CPU_TARGETS.get(args.shape, 3.0)
    ok = median(ratios) >= target and table_diff is not None and table_diff <= (1e-5 if dtype == torch.float32 else 5e-2)
    result(f"sweep_engine_{args.shape}_{device.type}_speedup_vs_naive", median(ratios), target=f">={target:g}",
           ok=ok, check=args.check)


if __name__ == "__main__":
    main()
