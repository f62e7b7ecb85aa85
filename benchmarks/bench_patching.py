"""Cost of a full layer x head activation-patching scan against the forward passes it needs.

``mechtrunc.patching_scan(model, clean, corrupted, sites=("z",), positions={})`` on a random
Pythia-160m-shaped GPT-NeoX (12 layers, d 768, 12 heads, vocabulary 50304) booted as a
TransformerLens bridge, with 64 prompt pairs of 8 random tokens: 144 head patches (every
position of one head at a time), denoising.  The scan needs ``4 + 144`` forward passes of 64
sequences: the clean and corrupted runs recorded once, their two baseline metrics, then one
forward per patch (with 64 pairs and ``batch_size=64`` each forward holds one patch; a smaller
prompt set packs several patches per forward).

The floor is written without mechtrunc: the same number of plain Hugging Face forward passes of
the same batches (``hf_model(tokens)``, no hooks, no bridge; ``--floor-sample`` of them are timed
and scaled to the count, since each costs the same), and, for reference, a hand-written
plain-torch scan on the Hugging Face model (a forward pre-hook on each layer's ``attention.dense``
that swaps one head's slice of its input, the merged ``z``, for the clean run's; ``--hand``).
Target: the scan within 3x the floor.

    python benchmarks/bench_patching.py            # about 8 minutes on 2 cores
    python benchmarks/bench_patching.py --hand     # also the hand-written scan
    python benchmarks/bench_patching.py --pairs 8 --length 8 --vocab 4096 --threads 1   # a quick look
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from _common import base_parser, machine_line, median, print_table, setup, sync, timed

TARGET = 3.0


def build(args, tmp: Path):
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from mechtrunc.models.testing import word_level_tokenizer_dir

    vocab = args.vocab
    tok_dir = word_level_tokenizer_dir(tmp, [f"w{i}" for i in range(vocab - 1)] + ["<unk>"], unk_token="<unk>",
                                       special_token="<unk>")
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False, attention_dropout=0.0,
                        hidden_dropout=0.0)
    torch.manual_seed(args.seed)
    hf = GPTNeoXForCausalLM(cfg).eval()
    bridge = TransformerBridge.boot_transformers("EleutherAI/pythia-160m", hf_model=hf,
                                                 tokenizer=AutoTokenizer.from_pretrained(str(tok_dir)), device="cpu")
    bridge.eval()
    return hf, bridge


@torch.no_grad()
def plain_forwards(hf, tokens, n: int, rows: int | None = None) -> None:
    """``4`` forwards of ``tokens`` (the recordings and baselines), then ``n - 4`` of ``rows``
    rows (``tokens`` repeated): the batch shapes the scan runs."""
    big = tokens.repeat((rows or tokens.shape[0]) // tokens.shape[0], 1)
    for i in range(n):
        hf(tokens if i < 4 else big)


@torch.no_grad()
def plain_scan(hf, clean, corrupted, n_layers: int, n_heads: int) -> torch.Tensor:
    """Denoising head patches by hand: the logits' last position per (layer, head)."""
    d_head = hf.config.hidden_size // n_heads
    store = {}
    hooks = [hf.gpt_neox.layers[l].attention.dense.register_forward_pre_hook(
        lambda m, a, l=l: store.__setitem__(l, a[0].detach().clone())) for l in range(n_layers)]
    hf(clean)
    for h in hooks:
        h.remove()
    out = []
    for l in range(n_layers):
        dense = hf.gpt_neox.layers[l].attention.dense
        for head in range(n_heads):
            sl = slice(head * d_head, (head + 1) * d_head)

            def swap(m, a, l=l, sl=sl):
                z = a[0].clone()
                z[..., sl] = store[l][..., sl]
                return (z,)

            handle = dense.register_forward_pre_hook(swap)
            out.append(hf(corrupted).logits[:, -1].float())
            handle.remove()
    return torch.stack(out)


def main() -> None:
    p = base_parser(__doc__, default_threads=None, repeats=1, warmup=1)
    p.add_argument("--pairs", type=int, default=64, help="prompt pairs")
    p.add_argument("--length", type=int, default=8, help="tokens per prompt")
    p.add_argument("--floor-sample", type=int, default=24,
                   help="plain forwards timed for the floor (scaled to the scan's count; 0: all of them)")
    p.add_argument("--vocab", type=int, default=50304, help="vocabulary (Pythia-160m: 50304)")
    p.add_argument("--hand", action="store_true", help="also time the hand-written plain-torch scan")
    args = p.parse_args()
    device = setup(args)
    if device.type != "cpu":
        sys.exit("this benchmark runs on the CPU")
    import mechtrunc as mt
    from mechtrunc.core.prompts import PromptSet

    with tempfile.TemporaryDirectory() as tmp:
        hf, bridge = build(args, Path(tmp))
        g = torch.Generator().manual_seed(args.seed)
        n, T = args.pairs, args.length
        clean_tokens = torch.randint(0, args.vocab, (n, T), generator=g)
        corrupted = torch.randint(0, args.vocab, (n, T), generator=g)
        clean = PromptSet(clean_tokens, torch.arange(n), torch.full((n,), T - 1),
                          torch.randint(0, args.vocab, (n,), generator=g), torch.randint(0, args.vocab, (n, 1), generator=g))
        L, H = 12, 12
        scans = []
        scan = lambda: scans.append(mt.patching_scan(bridge, clean, corrupted, sites=("z",), positions={},
                                                     batch_size=64))
        for _ in range(args.warmup):
            plain_forwards(hf, clean_tokens, 2)
            mt.item_logits(bridge, clean)
        # the forward passes the scan needs: 2 recordings + 2 baselines, then one per group of
        # patches (copies of the prompts per forward: 64 // pairs, at least 1)
        per = max(1, 64 // n)
        n_fwd = 4 + -(-(L * H) // per)
        rows_per = n * per
        t_scan, t_floor, t_hand = [], [], []
        for _ in range(args.repeats):
            k = n_fwd if args.floor_sample <= 0 else min(n_fwd, 4 + args.floor_sample)
            t_floor.append(timed(lambda: plain_forwards(hf, clean_tokens, k, rows_per), device) * n_fwd / k)
            t_scan.append(timed(scan, device))
            if args.hand:
                t_hand.append(timed(lambda: plain_scan(hf, clean_tokens, corrupted, L, H), device))
            print(f"repeat: floor {t_floor[-1]:.1f} s, scan {t_scan[-1]:.1f} s", flush=True)
        df = scans[-1]
        assert df.attrs["forwards"] == n_fwd, (df.attrs["forwards"], n_fwd)
        sync(device)
    print(machine_line(device))
    print(f"{len(df)} head patches on {n} pairs x {T} tokens; {n_fwd} forward passes ({rows_per} rows each after "
          f"the recordings); repeats {args.repeats}")
    ratio = median(t_scan) / median(t_floor)
    rows = [[f"floor: {n_fwd} plain HF forwards (same batches)", f"{median(t_floor):.2f}",
             f"{1e3 * median(t_floor) / n_fwd:.1f}", "1.00"]]
    if t_hand:
        rows.append(["hand-written plain-torch scan (146 forwards)", f"{median(t_hand):.2f}",
                     f"{1e3 * median(t_hand) / 146:.1f}", f"{median(t_hand) / median(t_floor):.2f}"])
    rows.append(["mt.patching_scan (bridge)", f"{median(t_scan):.2f}", f"{1e3 * median(t_scan) / n_fwd:.1f}",
                 f"{ratio:.2f}"])
    print_table(["run", "seconds", "per forward (ms)", "ratio to the floor"], rows)
    ok = ratio <= TARGET
    print(f"target: scan <= {TARGET}x the floor: {'PASS' if ok else 'FAIL'} ({ratio:.2f}x)")
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
