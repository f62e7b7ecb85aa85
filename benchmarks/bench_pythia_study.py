"""Time the LASER truncation study on a Pythia-shaped random GPT-NeoX, against a naive loop
measured in the same run.

The naive loop is what LASER's own scripts do for each (layer, matrix, keep): a fresh SVD of
the weight, write the low-rank product into the weight, a full evaluation pass, restore.
``mechtrunc.studies.truncation_study`` does the same edits but computes each matrix's SVD once
(cached across keeps) and skips keep = 1 (the identity, evaluated once as the baseline).
Both evaluate the same random prompts (256 prompts x 24 tokens by default).

    python benchmarks/bench_pythia_study.py --device cuda --shape 1.4b     # on a GPU
    python benchmarks/bench_pythia_study.py --shape tiny                   # CPU smoke run
"""

from __future__ import annotations

import tempfile
import time

import torch

import mechtrunc as mt
from mechtrunc.studies import truncation_study
from _common import base_parser, machine_line, result, setup, sync

SHAPES = {  # layers, d_model, heads
    "tiny": (4, 128, 4),
    "160m": (12, 768, 12),
    "1.4b": (24, 2048, 16),
}


def build(shape: str, device: str, dtype: torch.dtype, vocab: int):
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from mechtrunc.models.testing import word_level_tokenizer_dir

    n_layers, d, heads = SHAPES[shape]
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=heads,
                        intermediate_size=4 * d, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False)
    with torch.device(device):
        hf = GPTNeoXForCausalLM(cfg).to(dtype).eval()
    tmp = word_level_tokenizer_dir(tempfile.mkdtemp(), [f"w{i}" for i in range(vocab)], special_token="w0")
    bridge = TransformerBridge.boot_transformers("EleutherAI/pythia-1.4b", hf_model=hf,
                                                 tokenizer=AutoTokenizer.from_pretrained(tmp), device=device, dtype=dtype)
    bridge.eval()
    return bridge


def naive_loop(model, prompts, configs, batch_size: int) -> float:
    """LASER's way: fresh SVD, dense write-back and a full evaluation per configuration."""
    adapter = mt.adapt(model)
    t0 = time.perf_counter()
    for layer, matrix, keep in configs:
        site = adapter.matrix(matrix, layer)
        saved = site.param.detach().clone()
        W = site.get().float()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        k = mt.rank_for_keep(keep, S.shape[0])
        site.set((U[:, :k] * S[:k]) @ Vh[:k])
        mt.evaluate(model, prompts, batch_size=batch_size)
        with torch.no_grad():
            site.param.copy_(saved)
    sync(torch.device(adapter.device))
    return time.perf_counter() - t0


def main() -> None:
    p = base_parser(__doc__, default_threads=None, repeats=1, warmup=0)
    p.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default float16 on GPU, float32 on CPU")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--keeps", type=float, nargs="+", default=[1, 0.5, 0.2, 0.1, 0.05])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50304)
    args = p.parse_args()
    device = setup(args)
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    t0 = time.perf_counter()
    model = build(args.shape, args.device, dtype, args.vocab)
    print(machine_line(device))
    print(f"built {args.shape}-shaped GPT-NeoX ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, "
          f"{dtype}) in {time.perf_counter() - t0:.1f} s")
    g = torch.Generator().manual_seed(args.seed)
    n, T = args.prompts, args.tokens
    prompts = mt.PromptSet(tokens=torch.randint(0, args.vocab, (n, T), generator=g), rows=torch.arange(n),
                           pos=torch.full((n,), T - 1), answer=torch.randint(0, args.vocab, (n,), generator=g),
                           competitors=torch.randint(0, args.vocab, (n, 1), generator=g), competitor_names=("the",))
    n_layers = SHAPES[args.shape][0]
    mt.evaluate(model, prompts, batch_size=args.batch_size)  # warm-up
    sync(device)

    t0 = time.perf_counter()
    df = truncation_study(model, prompts, keeps=args.keeps, batch_size=args.batch_size, progress=False)
    sync(device)
    t_study = time.perf_counter() - t0
    configs = [(l, m, k) for l in range(n_layers) for m in ("mlp.W_in", "mlp.W_out") for k in args.keeps]
    t_naive = naive_loop(model, prompts, configs, args.batch_size)
    t0 = time.perf_counter()
    truncation_study(model, prompts, keeps=args.keeps, batch_size=args.batch_size, progress=False, mode="hook")
    sync(device)
    t_hook = time.perf_counter() - t0
    print(f"grid: {n_layers} layers x 2 MLP matrices x {len(args.keeps)} keeps = {len(configs)} configurations, "
          f"{n} prompts x {T} tokens")
    print(f"naive loop (fresh SVD + edit + eval per configuration): {t_naive:8.2f} s")
    print(f"mechtrunc truncation_study, weight mode:                {t_study:8.2f} s  ({len(df)} rows)")
    print(f"mechtrunc truncation_study, hook mode:                  {t_hook:8.2f} s")
    speedup = t_naive / t_study
    result(f"pythia_study_{args.shape}_speedup_vs_naive", speedup, target=">=1", ok=speedup >= 1.0, check=args.check)


if __name__ == "__main__":
    main()
