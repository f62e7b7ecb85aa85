"""Project the time of a full checkpoint study from measured per-checkpoint costs.

The full Pythia-1.4B study of the paper's checkpoint figure: 154 checkpoints x 24 layers x
2 MLP matrices x 6 keeps (240 evaluated configurations per checkpoint, keep = 1 being the
identity), 256 prompts x 24 tokens.  This script writes a handful of random Pythia-shaped
checkpoints to local disk (``save_pretrained``, the dtype of the run), then for each one
measures, as ``mechtrunc.studies.checkpoint_study`` spends them:

- load: ``load_model(DIR, device, dtype)`` (disk -> host -> device, bridge boot);
- svd: with ``--mode weight`` or ``hook``, the exact SVD of every grid matrix (computed once per
  checkpoint and cached); with ``--mode engine`` (the default, as in ``checkpoint_study``) the
  engine's own decompositions happen inside the grid step and this is 0;
- grid: ``evaluate_grid`` (the baseline + every configuration).

It then projects the whole study: on one GPU with the local executor (the next checkpoint is
loaded while the current one is evaluated, so a checkpoint costs max(load, svd + grid)), and on
N GPUs through Ray (one task per checkpoint, ceil(154 / N) rounds of load + svd + grid, plus the
workers' start-up).  A last, end-to-end ``checkpoint_study(..., grid=...)`` over the saved
checkpoints checks the per-checkpoint model against a real run.

Caveats printed with the numbers: the checkpoints were just written, so their files are in the
page cache (a cold read from disk is bounded by ``--disk-gbps``; the "cold" projection uses
it); real Pythia checkpoints must already be on local disk (154 x 2.9 GB for 1.4B in float16);
Ray start-up is an assumption (``--ray-startup-s``), not measured here.

    python benchmarks/project_checkpoint_study.py --device cuda --shape 1.4b     # GPU, ~3 min
    python benchmarks/project_checkpoint_study.py --shape tiny                   # CPU smoke run
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from _common import base_parser, machine_line, setup, sync

print = functools.partial(print, flush=True)  # partial output survives a timeout

SHAPES = {  # layers, d_model, heads, vocab
    "tiny": (2, 64, 4, 512),
    "160m": (12, 768, 12, 50304),
    "1.4b": (24, 2048, 16, 50304),
}


def save_checkpoints(root: Path, shape: str, k: int, device: str, dtype: torch.dtype) -> list[Path]:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mechtrunc.models.testing import word_level_tokenizer_dir

    n_layers, d, heads, vocab = SHAPES[shape]
    tok = word_level_tokenizer_dir(root / "tokenizer", [f"w{i}" for i in range(min(vocab, 4096))], special_token="w0")
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=heads,
                        intermediate_size=4 * d, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    dirs = []
    for i in range(k):
        torch.manual_seed(i)
        with torch.device(device):
            model = GPTNeoXForCausalLM(cfg).to(dtype).eval()
        d_out = root / f"step{1000 * (i + 1)}"
        model.save_pretrained(d_out)
        for f in tok.iterdir():
            shutil.copy(f, d_out / f.name)
        del model
        dirs.append(d_out)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return dirs


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def main() -> None:
    p = base_parser(__doc__, default_threads=None, repeats=1, warmup=0)
    p.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default float16 on GPU, float32 on CPU")
    p.add_argument("--checkpoints", type=int, default=3, help="checkpoints written and measured")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--keeps", type=float, nargs="+", default=[1, 0.5, 0.2, 0.1, 0.05, 0.01])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--total-checkpoints", type=int, default=154, help="checkpoints in the projected study")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the projected Ray run")
    p.add_argument("--ray-startup-s", type=float, default=30.0,
                   help="assumed Ray cluster + worker start-up (imports) in the projection")
    p.add_argument("--disk-gbps", type=float, default=2.0, help="assumed cold read bandwidth of the local disk")
    p.add_argument("--no-validate", action="store_true", help="skip the end-to-end checkpoint_study run")
    p.add_argument("--mode", choices=("engine", "weight", "hook"), default="engine",
                   help="how each checkpoint's grid is evaluated (default engine, as checkpoint_study does)")
    p.add_argument("--workdir", default=None, help="where to write the checkpoints (default a temporary dir)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()
    device = setup(args)
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))

    import mechtrunc as mt
    from mechtrunc.models.hf import free_model, load_model
    from mechtrunc.studies import Grid, checkpoint_study, evaluate_grid

    print(machine_line(device))
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mechtrunc_proj_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs = save_checkpoints(root, args.shape, args.checkpoints, args.device, dtype)
    t_save = time.perf_counter() - t0
    n_layers, d, heads, vocab = SHAPES[args.shape]
    size_gb = dir_bytes(dirs[0]) / 1e9
    print(f"wrote {len(dirs)} random {args.shape}-shaped checkpoints ({size_gb:.2f} GB each, {dtype}) "
          f"in {t_save:.1f} s")

    g = torch.Generator().manual_seed(args.seed)
    n, T = args.prompts, args.tokens
    v = min(vocab, 4096)
    prompts = mt.PromptSet(tokens=torch.randint(0, v, (n, T), generator=g), rows=torch.arange(n),
                           pos=torch.full((n,), T - 1), answer=torch.randint(0, v, (n,), generator=g),
                           competitors=torch.randint(0, v, (n, 1), generator=g), competitor_names=("the",))
    grid = Grid(matrices=("mlp.W_in", "mlp.W_out"), keeps=tuple(args.keeps), mode=args.mode)
    n_configs = n_layers * 2 * len(args.keeps)
    n_eval = n_layers * 2 * sum(1 for k in args.keeps if k < 1)

    rows = []
    for i, dpath in enumerate(dirs):
        sync(device)
        t0 = time.perf_counter()
        model = load_model(dpath, device=args.device, dtype=dtype)
        sync(device)
        t_load = time.perf_counter() - t0
        if i == 0:  # warm-up of kernels / allocator on the first checkpoint, untimed
            mt.evaluate(model, prompts, batch_size=args.batch_size)
        adapter = mt.adapt(model)
        sync(device)
        t0 = time.perf_counter()
        if grid.mode != "engine":  # the reference modes reuse one cached SVD per matrix
            for layer in range(n_layers):
                for m in grid.matrices:
                    adapter.svd(adapter.matrix(m, layer), "exact")
        sync(device)
        t_svd = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = evaluate_grid(model, prompts, grid, batch_size=args.batch_size)
        sync(device)
        t_grid = time.perf_counter() - t0
        assert len(out) == 1 + n_configs
        free_model(model)
        del model, adapter
        rows.append({"checkpoint": dpath.name, "load_s": t_load, "svd_s": t_svd, "grid_s": t_grid})
        print(f"  {dpath.name}: load {t_load:7.2f} s   svd {t_svd:7.2f} s   grid {t_grid:7.2f} s "
              f"({n_eval} evaluated configurations + baseline)")

    # the first checkpoint paid one-off costs (imports, kernel selection): use the later ones when there are
    steady = rows[1:] if len(rows) > 1 else rows
    mean = {k: sum(r[k] for r in steady) / len(steady) for k in ("load_s", "svd_s", "grid_s")}
    load, svd, grd = mean["load_s"], mean["svd_s"], mean["grid_s"]
    cold_load = max(load, size_gb / args.disk_gbps)
    N, G = args.total_checkpoints, args.gpus
    one_seq = N * (load + svd + grd)
    one_pref = load + N * max(load, svd + grd)
    one_pref_cold = cold_load + N * max(cold_load, svd + grd)
    rounds = math.ceil(N / G)
    ray_warm = args.ray_startup_s + rounds * (load + svd + grd)
    # pessimistic: the G concurrent loads share one disk's bandwidth
    ray_cold = args.ray_startup_s + rounds * (max(cold_load, G * size_gb / args.disk_gbps) + svd + grd)
    proj = {
        "mode": grid.mode, "shape": args.shape, "device": str(device), "dtype": str(dtype), "checkpoint_gb": size_gb,
        "prompts": n, "tokens": T, "layers": n_layers, "keeps": args.keeps, "configurations": n_configs,
        "evaluated_configurations": n_eval, "measured": rows, "per_checkpoint_mean": mean,
        "projection_s": {"one_gpu_no_prefetch": one_seq, "one_gpu_prefetch": one_pref,
                         "one_gpu_prefetch_cold_disk": one_pref_cold, f"ray_{G}_gpus": ray_warm,
                         f"ray_{G}_gpus_cold_shared_disk": ray_cold},
        "assumptions": {"ray_startup_s": args.ray_startup_s, "disk_gbps": args.disk_gbps,
                        "total_checkpoints": N, "gpus": G},
    }
    print(f"per checkpoint (mean of {len(steady)}): load {load:.2f} s, svd {svd:.2f} s, grid {grd:.2f} s "
          f"({n_eval} configurations, {n} prompts x {T} tokens)")
    print(f"projected {N}-checkpoint study ({args.shape} shape, grid {n_layers} x 2 x {len(args.keeps)}):")
    print(f"  one device, local executor, no prefetch : {one_seq / 60:8.1f} min")
    print(f"  one device, local executor, prefetch    : {one_pref / 60:8.1f} min   "
          f"(cold disk at {args.disk_gbps} GB/s: {one_pref_cold / 60:.1f} min)")
    print(f"  {G} devices, Ray, one task per checkpoint: {ray_warm / 60:8.1f} min   "
          f"(loads sharing one {args.disk_gbps} GB/s disk: {ray_cold / 60:.1f} min; start-up {args.ray_startup_s:.0f} s assumed)")

    if not args.no_validate:
        t0 = time.perf_counter()
        steps = [int(p.name.removeprefix("step")) for p in dirs]
        checkpoint_study(root, steps, prompts, grid=grid, batch_size=args.batch_size, out=root / "study",
                         progress=False, device=args.device, dtype=str(dtype).removeprefix("torch."))
        sync(device)
        wall = time.perf_counter() - t0
        predicted = load + len(dirs) * max(load, svd + grd)
        proj["validation"] = {"checkpoints": len(dirs), "wall_s": wall, "predicted_s": predicted}
        print(f"end-to-end checkpoint_study over the {len(dirs)} checkpoints (local executor, prefetch): "
              f"{wall:.1f} s; the per-checkpoint model predicts {predicted:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(proj, indent=2))
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
