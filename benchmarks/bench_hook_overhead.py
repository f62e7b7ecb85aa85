"""Cost of an active hook intervention: forward with ``mechtrunc.ProjectOut`` vs a plain forward.

The intervention is ``ProjectOut(site="mlp_out", layer=1, directions=D)`` (``D``: ``--n-dirs``
random directions), applied with ``with mechtrunc.intervene(model, ...)``, inference only
(``torch.no_grad``).  Two ways of paying for it are timed: "active" (the block is entered, then
the forwards are timed: the cost of the hook itself, which is what the target is about) and
"enter+exit per forward" (QR of the directions, hook registration and removal at every forward,
the worst case for a user who wraps each batch in its own block).  Models:

(a) the paper's toy model (``mechtrunc.ToyTransformer``, d 256, batch 64, T 256), and
(b) a small random GPT-NeoX (Pythia-70m-shaped: d 512, 6 layers, 8 heads, d_mlp 2048, partial
    rotary, parallel attention + MLP; vocabulary 4096 for speed) booted offline as a
    TransformerLens ``TransformerBridge`` with a word-level tokenizer saved in a temporary
    directory, as ``tests/conftest.py`` does.

``--breakdown`` adds a row with a do-nothing hook at the same site (hook machinery only), so the
intervention's cost splits into "a hook is present" and "the projection itself".  Repeats of the
variants are interleaved (rotating order) and the ratio is the median over repeats of
``t(variant) / t(plain)`` measured back to back (the ratio of the fastest repeats is printed
too).  Target: "active" ratio <= 1.1 for each model.

    python benchmarks/bench_hook_overhead.py
    python benchmarks/bench_hook_overhead.py --device cuda --breakdown
    python benchmarks/bench_hook_overhead.py --models toy
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

from _common import base_parser, machine_line, median, print_table, result, setup, spread, sync, timed

TARGET = 1.1


def word_level_tokenizer_dir(directory: Path, vocab_size: int) -> Path:
    """The word-level tokenizer the tests use ("w0".., "<unk>"), saved on disk for the bridge."""
    from mechtrunc.models.testing import word_level_tokenizer_dir as save

    tokens = [f"w{i}" for i in range(vocab_size - 1)] + ["<unk>"]
    return save(directory, tokens, unk_token="<unk>", special_token="<unk>")


def build_toy(args, device):
    from mechtrunc import ToyConfig, ToyTransformer

    model = ToyTransformer(ToyConfig(d_model=args.toy_d, n_ctx=args.toy_seq, d_vocab=65, seed=args.seed))
    tokens = torch.randint(0, 65, (args.toy_batch, args.toy_seq), generator=torch.Generator().manual_seed(args.seed))
    desc = f"toy: d {args.toy_d}, 2 layers, batch {args.toy_batch}, T {args.toy_seq}"
    return model.to(device).eval(), tokens.to(device), desc


def build_neox(args, device, tmp: Path):
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    tok_dir = word_level_tokenizer_dir(tmp / "tokenizer", args.neox_vocab)
    torch.manual_seed(args.seed)
    cfg = GPTNeoXConfig(vocab_size=args.neox_vocab, hidden_size=args.neox_d, num_hidden_layers=args.neox_layers,
                        num_attention_heads=8, intermediate_size=4 * args.neox_d, rotary_pct=0.25,
                        max_position_embeddings=2048, use_parallel_residual=True,
                        attention_dropout=0.0, hidden_dropout=0.0)
    hf = GPTNeoXForCausalLM(cfg).to(device).eval()  # boot_transformers does not move a given model
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    bridge = TransformerBridge.boot_transformers("EleutherAI/pythia-70m", hf_model=hf, tokenizer=tok,
                                                 device=str(device))
    bridge.eval()
    tokens = torch.randint(0, args.neox_vocab, (args.neox_batch, args.neox_seq),
                           generator=torch.Generator().manual_seed(args.seed))
    desc = (f"GPT-NeoX bridge: d {args.neox_d}, {args.neox_layers} layers, 8 heads, vocab {args.neox_vocab}, "
            f"batch {args.neox_batch}, T {args.neox_seq}")
    return bridge, tokens.to(device), desc


def bench_model(name, model, tokens, desc, args, device):
    import mechtrunc as mt

    adapter = mt.adapt(model)
    g = torch.Generator().manual_seed(args.seed + 1)
    dirs = torch.randn(args.n_dirs, adapter.d_model, generator=g).to(device)
    iv = mt.ProjectOut(site="mlp_out", layer=1, directions=dirs)
    hook_name = adapter.site_hook("mlp_out", 1)

    def fwd():
        with torch.no_grad():
            return adapter.forward(tokens)

    def fwd_entering():
        with torch.no_grad(), mt.intervene(model, iv):
            return adapter.forward(tokens)

    # name -> (context entered around the timed forwards, forward)
    variants = {
        "plain forward": (nullcontext, fwd),
        "ProjectOut active": (lambda: mt.intervene(model, iv), fwd),
        "ProjectOut, enter+exit per forward": (nullcontext, fwd_entering),
    }
    if args.breakdown:
        variants["no-op hook at mlp_out L1"] = (lambda: adapter.hooked(hook_name, lambda act: None), fwd)

    # the intervention must change the output and leave the model as it was
    base = fwd()
    edited = fwd_entering()
    after = fwd()
    assert not torch.allclose(base, edited), "ProjectOut did not change the logits"
    assert torch.equal(base, after), "the model was not restored after the intervention"

    def run(name):
        ctx, fn = variants[name]
        with ctx():
            return timed(lambda: [fn() for _ in range(inner)], device) / inner

    inner = args.inner if args.inner is not None else (1 if device.type == "cpu" else 20)
    for _ in range(args.warmup):
        for n in variants:
            run(n)
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            times[n].append(run(n))
    ref = times[names[0]]
    paired = {n: median([a / b for a, b in zip(times[n], ref)]) for n in names}
    best = {n: min(t) / min(ref) for n, t in times.items()}
    print(f"({name}) {desc}; {args.n_dirs} directions; {args.repeats} interleaved repeats x {inner} forwards")
    print_table(["variant", "median ms/forward", "min..max ms", "ratio to plain (paired median)", "ratio of minima"],
                [[n, f"{median(t) * 1e3:.2f}", spread(t), f"{paired[n]:.3f}", f"{best[n]:.3f}"]
                 for n, t in times.items()])
    print()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for n in names:
            ctx, fn = variants[n]
            with ctx(), profile(activities=acts) as prof:
                fn()
                sync(device)
            print(f"--- profile: {name}, {n} ---")
            print(prof.key_averages().table(sort_by=sort, row_limit=12))
    return paired["ProjectOut active"], paired["ProjectOut, enter+exit per forward"]


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0], default_threads=None, repeats=5, warmup=1)
    p.add_argument("--models", default="toy,neox", help="comma-separated subset of: toy, neox")
    p.add_argument("--n-dirs", type=int, default=4, help="number of directions projected out")
    p.add_argument("--toy-d", type=int, default=256)
    p.add_argument("--toy-batch", type=int, default=64)
    p.add_argument("--toy-seq", type=int, default=256)
    p.add_argument("--neox-d", type=int, default=512)
    p.add_argument("--neox-layers", type=int, default=6)
    p.add_argument("--neox-vocab", type=int, default=4096)
    p.add_argument("--neox-batch", type=int, default=16)
    p.add_argument("--neox-seq", type=int, default=128)
    p.add_argument("--inner", type=int, default=None, help="forwards per timed repeat (default 1 on CPU, 20 on GPU)")
    p.add_argument("--breakdown", action="store_true", help="also time a do-nothing hook at the same site")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per variant")
    args = p.parse_args()
    device = setup(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ("toy", "neox"):
            p.error(f"unknown model {m!r}; valid: toy, neox")

    print(machine_line(device))
    print()
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="mechtrunc_bench_") as tmp:
        for m in models:
            model, tokens, desc = build_toy(args, device) if m == "toy" else build_neox(args, device, Path(tmp))
            ratios[m] = bench_model(m, model, tokens, desc, args, device)
            del model
    for m, (r, r_enter) in ratios.items():
        print(f"{m}: forward with ProjectOut active / plain forward = {r:.3f} (target <= {TARGET}); "
              f"entering and leaving the block at every forward: {r_enter:.3f}")
    worst = max(r for r, _ in ratios.values())
    result(f"hook_overhead[{'+'.join(ratios)},{device.type}]", worst, f"<={TARGET}", worst <= TARGET, args.check)


if __name__ == "__main__":
    main()
