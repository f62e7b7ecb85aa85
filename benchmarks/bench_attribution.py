"""Cost of attribution patching (node AtP, EAP-IG) against the forward floor and exact patching.

On a random Pythia-160m-shaped GPT-NeoX (d 768, 12 heads, MLP 3072, vocabulary 50304; ``--layers``
12 by default, fewer for a quicker look: every cost here is linear in the layer count) booted as
a TransformerLens bridge, with ``--pairs`` prompt pairs of ``--length`` random tokens, one batch:

- floor: a plain Hugging Face forward of the batch (no hooks, no bridge), and a forward+backward
  (the gradient of the summed last-position logit difference with respect to the input
  embeddings, as attribution patching takes gradients with respect to activations);
- ``mechtrunc.analysis.circuits.attribution_scan`` of every head (``z``) and every MLP (``mlp_out``),
  position ``all``, denoising: AtP, and EAP-IG on the inputs with ``--ig-steps`` steps;
- ``mechtrunc.patching_scan`` of the same rows (exact patching: one forward per patch).

The passes each method runs are counted, not assumed: a forward pre-hook on the model's final
layer norm counts forwards, and ``torch.autograd.grad`` is wrapped to count backwards; the
targets are AtP <= 3 forward(+backward) passes per batch and EAP-IG <= k + 2.

The projection of a 154-checkpoint Pythia-1.4B study (node AtP + EAP-IG per checkpoint) on one
GPU is FLOP arithmetic, not a GPU measurement: the measured passes per checkpoint times the
FLOPs of a 1.4B pass on the same batch (``2 x parameters x tokens`` forward, the measured
backward/forward time ratio for the backward) divided by an assumed effective GPU throughput
(``--gpu-tflops``), plus loading each checkpoint (``--load-s``) when it is not hidden behind the
previous one's compute (the local executor prefetches).  The CPU's own measured FLOP rate is
printed for comparison.

    python benchmarks/bench_attribution.py                       # ~4 minutes on 2 cores
    python benchmarks/bench_attribution.py --layers 2 --vocab 4096 --pairs 8 --threads 1   # a quick look
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from _common import base_parser, machine_line, median, print_table, setup, timed

#: passes per batch allowed: node AtP, and EAP-IG beyond its k steps
ATP_MAX_PASSES, IG_EXTRA_PASSES = 3, 2
#: Pythia-1.4B: layers, d_model, vocabulary (non-embedding parameters ~ 12 L d^2)
PYTHIA_1_4B = (24, 2048, 50304)
N_CHECKPOINTS = 154


def build(layers: int, vocab: int, seed: int, tmp: Path):
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from mechtrunc.models.testing import word_level_tokenizer_dir

    tok_dir = word_level_tokenizer_dir(tmp, [f"w{i}" for i in range(vocab - 1)] + ["<unk>"], unk_token="<unk>",
                                       special_token="<unk>")
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=3072, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False, attention_dropout=0.0,
                        hidden_dropout=0.0)
    torch.manual_seed(seed)
    hf = GPTNeoXForCausalLM(cfg).eval()
    bridge = TransformerBridge.boot_transformers("EleutherAI/pythia-160m", hf_model=hf,
                                                 tokenizer=AutoTokenizer.from_pretrained(str(tok_dir)), device="cpu")
    bridge.eval()
    return hf, bridge


@contextmanager
def count_passes(module: torch.nn.Module):
    """``{"forward": n, "backward": m}`` filled while the block runs: forwards of ``module``
    (counted at a forward pre-hook) and calls of ``torch.autograd.grad`` (each one backward)."""
    counts = {"forward": 0, "backward": 0}
    handle = module.register_forward_pre_hook(lambda m, a: counts.__setitem__("forward", counts["forward"] + 1))
    real = torch.autograd.grad

    def grad(*a, **kw):
        counts["backward"] += 1
        return real(*a, **kw)

    torch.autograd.grad = grad
    try:
        yield counts
    finally:
        torch.autograd.grad = real
        handle.remove()


def final_norm(hf) -> torch.nn.Module:
    """The module every forward of the Hugging Face model runs once: its final layer norm."""
    return hf.gpt_neox.final_layer_norm


def prompts(n: int, length: int, vocab: int, seed: int):
    from mechtrunc.core.prompts import PromptSet

    g = torch.Generator().manual_seed(seed)
    clean_tokens = torch.randint(0, vocab, (n, length), generator=g)
    corrupted = torch.randint(0, vocab, (n, length), generator=g)
    clean = PromptSet(clean_tokens, torch.arange(n), torch.full((n,), length - 1),
                      torch.randint(0, vocab, (n,), generator=g), torch.randint(0, vocab, (n, 1), generator=g))
    return clean, corrupted


def floor_runs(hf, clean):
    """(forward, forward+backward) of the batch on the plain Hugging Face model."""
    tokens = clean.tokens
    rows = torch.arange(tokens.shape[0])

    @torch.no_grad()
    def fwd():
        hf(tokens)

    def fwd_bwd():
        emb = hf.gpt_neox.embed_in(tokens).detach().requires_grad_(True)
        logits = hf(inputs_embeds=emb).logits[rows, clean.pos]
        metric = logits.gather(1, clean.answer[:, None]) - logits.gather(1, clean.competitors)
        torch.autograd.grad(metric.sum(), emb)

    return fwd, fwd_bwd


def n_params(layers: int, d: int) -> int:
    """Non-embedding parameters of a GPT-NeoX block stack (attention 4 d^2, MLP 8 d^2) plus the
    unembedding, the parameters a forward multiplies by once per token."""
    return layers * 12 * d * d


def main() -> None:
    p = base_parser(__doc__, default_threads=None, repeats=1, warmup=1)
    p.add_argument("--layers", type=int, default=12, help="layers of the Pythia-160m-shaped model (160m: 12)")
    p.add_argument("--vocab", type=int, default=50304, help="vocabulary (Pythia-160m: 50304)")
    p.add_argument("--pairs", type=int, default=16, help="prompt pairs (one batch)")
    p.add_argument("--length", type=int, default=8, help="tokens per prompt")
    p.add_argument("--ig-steps", type=int, default=5, help="EAP-IG interpolation steps k")
    p.add_argument("--gpu-tflops", type=float, default=200.0,
                   help="assumed effective GPU throughput for the projection (TFLOP/s actually achieved)")
    p.add_argument("--load-s", type=float, default=6.0,
                   help="assumed seconds to load one Pythia-1.4B checkpoint (2.9 GB in float16) onto the GPU")
    p.add_argument("--study-tokens", type=int, default=256 * 24,
                   help="tokens per checkpoint of the projected study (default 256 prompts x 24 tokens)")
    p.add_argument("--loaded", action="store_true", help="say in the output that the machine was loaded")
    args = p.parse_args()
    device = setup(args)
    if device.type != "cpu":
        sys.exit("this benchmark runs on the CPU")
    from mechtrunc.analysis.circuits import attribution_scan
    from mechtrunc.analysis.patching import patching_scan

    n, T, k = args.pairs, args.length, args.ig_steps
    common = dict(sites=("z", "mlp_out"), positions={}, batch_size=n, n_boot=10)
    with tempfile.TemporaryDirectory() as tmp:
        hf, bridge = build(args.layers, args.vocab, args.seed, Path(tmp))
        clean, corrupted = prompts(n, T, args.vocab, args.seed)
        fwd, fwd_bwd = floor_runs(hf, clean)
        runs = {
            "atp": lambda: attribution_scan(bridge, clean, corrupted, method="atp", **common),
            "ig": lambda: attribution_scan(bridge, clean, corrupted, method="ig-inputs", steps=k, **common),
            "exact": lambda: patching_scan(bridge, clean, corrupted, **common),
        }
        for _ in range(args.warmup):
            fwd()
            fwd_bwd()
            runs["atp"]()
        passes, times = {}, {name: [] for name in ("fwd", "fwd_bwd", *runs)}
        for name, fn in runs.items():
            with count_passes(final_norm(hf)) as c:
                df = fn()
            passes[name] = dict(c, rows=len(df))
        for _ in range(args.repeats):
            times["fwd"].append(timed(fwd, device))
            times["fwd_bwd"].append(timed(fwd_bwd, device))
            for name, fn in runs.items():
                times[name].append(timed(fn, device))
                print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
    t = {name: median(v) for name, v in times.items()}
    print(machine_line(device) + ("; the machine was loaded by other jobs during the run" if args.loaded else ""))
    print(f"Pythia-160m-shaped GPT-NeoX with {args.layers} layers (d 768, 12 heads, vocabulary {args.vocab}), random "
          f"weights; {n} prompt pairs x {T} tokens in one batch; {passes['atp']['rows']} nodes (every head and MLP, "
          f"position all, denoising); repeats {args.repeats}, median")
    rows = [["plain HF forward (floor)", "1 / 0", f"{t['fwd']:.3f}", "1.00"],
            ["plain HF forward+backward (floor)", "1 / 1", f"{t['fwd_bwd']:.3f}", f"{t['fwd_bwd'] / t['fwd']:.2f}"]]
    labels = {"atp": "node AtP (attribution_scan atp)", "ig": f"EAP-IG k={k} (attribution_scan ig-inputs)",
              "exact": "exact patching (patching_scan)"}
    for name in runs:
        c = passes[name]
        rows.append([labels[name], f"{c['forward']} / {c['backward']}", f"{t[name]:.3f}", f"{t[name] / t['fwd']:.2f}"])
    print_table(["run", "forwards / backwards per batch", "seconds", "x forward floor"], rows)
    atp_ok = passes["atp"]["forward"] <= ATP_MAX_PASSES and passes["atp"]["backward"] <= ATP_MAX_PASSES
    ig_ok = passes["ig"]["forward"] <= k + IG_EXTRA_PASSES and passes["ig"]["backward"] <= k + IG_EXTRA_PASSES
    print(f"target: node AtP <= {ATP_MAX_PASSES} forward(+backward) passes per batch: "
          f"{'PASS' if atp_ok else 'FAIL'} ({passes['atp']['forward']} forwards, {passes['atp']['backward']} backward)")
    print(f"target: EAP-IG k={k} <= k + {IG_EXTRA_PASSES} = {k + IG_EXTRA_PASSES} passes per batch: "
          f"{'PASS' if ig_ok else 'FAIL'} ({passes['ig']['forward']} forwards, {passes['ig']['backward']} backwards)")
    print(f"speed-up over exact patching of the same {passes['atp']['rows']} nodes: AtP {t['exact'] / t['atp']:.1f}x, "
          f"EAP-IG {t['exact'] / t['ig']:.1f}x")

    # --- projection: a 154-checkpoint Pythia-1.4B study (AtP + EAP-IG per checkpoint) on one GPU
    cpu_flops = 2 * n_params(args.layers, 768) * n * T / t["fwd"]
    tokens = args.study_tokens
    bwd_ratio = max(t["fwd_bwd"] / t["fwd"] - 1.0, 0.0)  # backward cost in forwards (measured)
    L, d, _ = PYTHIA_1_4B
    fwd_flops = 2 * n_params(L, d) * tokens
    per_ckpt_passes = {name: passes[name]["forward"] + bwd_ratio * passes[name]["backward"] for name in ("atp", "ig")}
    # exact patching scales with the component count: (L heads x 16 + L MLPs) patches of 1.4B
    exact_scale = (L * 16 + L) / max(passes["exact"]["rows"], 1)
    per_ckpt_passes["exact"] = 4 + (passes["exact"]["forward"] - 4) * exact_scale
    print(f"\nprojection (FLOP arithmetic, no GPU measured): {N_CHECKPOINTS} Pythia-1.4B checkpoints, {tokens} prompt "
          f"tokens each; a 1.4B forward = 2 x {n_params(L, d) / 1e9:.2f}e9 non-embedding parameters x tokens "
          f"= {fwd_flops / 1e12:.3f} TFLOP; backward = {bwd_ratio:.2f} forwards (measured here); assumed GPU "
          f"{args.gpu_tflops:.0f} TFLOP/s effective; load {args.load_s:.1f} s per checkpoint, overlapped with the "
          f"previous checkpoint's compute (local executor prefetch). This CPU ran {cpu_flops / 1e9:.1f} GFLOP/s "
          f"on the forward floor.")
    prow = []
    for name, label in (("atp", "node AtP"), ("ig", f"EAP-IG k={k}"), ("atp+ig", "AtP + EAP-IG"),
                        ("exact", "exact patching (heads + MLPs)")):
        fp = per_ckpt_passes["atp"] + per_ckpt_passes["ig"] if name == "atp+ig" else per_ckpt_passes[name]
        compute = fp * fwd_flops / (args.gpu_tflops * 1e12)
        per = max(compute, args.load_s)
        total = args.load_s + (N_CHECKPOINTS - 1) * per + compute
        prow.append([label, f"{fp:.1f}", f"{compute * 1e3:.1f}", f"{per:.2f}", f"{total / 60:.1f}"])
    print_table(["per checkpoint", "forward-equivalents", "GPU compute (ms)", "wall per checkpoint (s)",
                 f"{N_CHECKPOINTS} checkpoints (min)"], prow)
    print("(the compute column is linear in the prompt tokens; where it is below the load time, loading the "
          "checkpoints bounds the study)")
    if not (atp_ok and ig_ok):
        sys.exit(1 if args.check else 0)


if __name__ == "__main__":
    main()
