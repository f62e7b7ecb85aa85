"""One training step of ``mechtrunc.ToyTransformer`` vs a bare-PyTorch model of the same shape.

A step is: forward, cross-entropy at the loss-mask positions (count >= 2), backward, optimiser
step -- exactly what ``mechtrunc.models.toy_training.train`` does per iteration, minus data generation
(the batches are generated once, before timing, and both implementations see the same ones).

The bare model, written here, is the paper's architecture as a competent engineer would write it
without hooks: 2 layers, no LayerNorm, one head with d_head = d_model, W_Q the identity (so the
query is the residual stream itself), trained W_K, W_V, W_O, frozen random token embedding,
unembedding and absolute positions, ReLU FFN of width 4 d, no biases, and
``F.scaled_dot_product_attention(is_causal=True)``.  It starts from mechtrunc's weights, and the
script checks that both give the same logits before timing.

Presets: ``cpu`` (d 64, T 128, batch 64, AdamW lr 1e-3) and ``paper`` (d 256, T 256, batch 512,
SGD lr 0.03, momentum 0.9, weight decay 1e-4; meant for a GPU).  The two implementations'
repeats are interleaved (alternating which goes first) to cancel drift; the ratio is the median
over repeats of mechtrunc's time over the bare time of the same repeat.  Target: mechtrunc step
time <= 1.2x the bare step.

    python benchmarks/bench_train_step.py
    python benchmarks/bench_train_step.py --device cuda --preset paper
    python benchmarks/bench_train_step.py --profile      # where the time goes, per implementation
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from _common import base_parser, machine_line, median, print_table, result, setup, spread, sync, timed

TARGET = 1.2

PRESETS = {
    "cpu": dict(d_model=64, seq_len=128, batch=64, optimizer="adamw", lr=1e-3, momentum=0.0, weight_decay=0.0),
    "paper": dict(d_model=256, seq_len=256, batch=512, optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4),
}


class BareToy(nn.Module):
    """The paper's toy Transformer in plain PyTorch (no hooks, no einsum, no identity matmul)."""

    def __init__(self, d_model: int, d_vocab: int, n_ctx: int, n_layers: int = 2):
        super().__init__()
        d = d_model
        self.register_buffer("W_E", torch.randn(d_vocab, d))
        self.register_buffer("W_pos", torch.randn(n_ctx, d))
        self.register_buffer("W_U", torch.randn(d, d_vocab) / math.sqrt(d))
        self.W_K = nn.ParameterList(nn.Parameter(torch.empty(d, d)) for _ in range(n_layers))
        self.W_V = nn.ParameterList(nn.Parameter(torch.empty(d, d)) for _ in range(n_layers))
        self.W_O = nn.ParameterList(nn.Parameter(torch.empty(d, d)) for _ in range(n_layers))
        self.W_in = nn.ParameterList(nn.Parameter(torch.empty(d, 4 * d)) for _ in range(n_layers))
        self.W_out = nn.ParameterList(nn.Parameter(torch.empty(4 * d, d)) for _ in range(n_layers))

    @torch.no_grad()
    def load_from(self, toy) -> "BareToy":
        """Copy the weights of a ``mechtrunc.ToyTransformer`` (single head)."""
        self.W_E.copy_(toy.W_E)
        self.W_pos.copy_(toy.W_pos)
        self.W_U.copy_(toy.W_U)
        for l, block in enumerate(toy.blocks):
            self.W_K[l].copy_(block.attn.W_K[0])
            self.W_V[l].copy_(block.attn.W_V[0])
            self.W_O[l].copy_(block.attn.W_O[0])
            self.W_in[l].copy_(block.mlp.W_in)
            self.W_out[l].copy_(block.mlp.W_out)
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        p = tokens.shape[1]
        x = self.W_E[tokens] + self.W_pos[:p]
        for W_K, W_V, W_O, W_in, W_out in zip(self.W_K, self.W_V, self.W_O, self.W_in, self.W_out):
            q = x.unsqueeze(1)  # W_Q = identity; one head: [batch, 1, pos, d]
            k = (x @ W_K).unsqueeze(1)
            v = (x @ W_V).unsqueeze(1)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
            x = x + z @ W_O
            x = x + F.relu(x @ W_in) @ W_out
        return x @ self.W_U


# --- diagnosis: mechtrunc's attention with parts of its overhead removed (patched per instance at run
# time, mechtrunc itself is untouched; same maths and same hook points) ----------------------------
def _attn_skip_identity_q(self, x):
    """As ``mechtrunc.models.toy.Attention.forward`` (no-hook path) but q = x instead of x @ I."""
    b, p, _ = x.shape
    h, dh = self.W_K.shape[0], self.W_K.shape[2]
    q = self.hook_q(x.view(b, p, h, dh))
    k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K))
    v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V))
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       scale=self.scale).transpose(1, 2)
    z = self.hook_z(z)
    return torch.einsum("bphe,hed->bpd", z, self.W_O)


def _attn_matmul(self, x):
    """q = x (identity W_Q), plain 2-D matmuls instead of einsum for K, V, O."""
    b, p, d = x.shape
    h, dh = self.W_K.shape[0], self.W_K.shape[2]
    q = self.hook_q(x.view(b, p, h, dh))
    k = self.hook_k((x @ self.W_K.permute(1, 0, 2).reshape(d, h * dh)).view(b, p, h, dh))
    v = self.hook_v((x @ self.W_V.permute(1, 0, 2).reshape(d, h * dh)).view(b, p, h, dh))
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       scale=self.scale).transpose(1, 2)
    z = self.hook_z(z)
    return z.reshape(b, p, h * dh) @ self.W_O.reshape(h * dh, d)


def patched_copy(toy, forward):
    import copy
    import types

    clone = copy.deepcopy(toy)
    for block in clone.blocks:
        block.attn.forward = types.MethodType(forward, block.attn)
    return clone


def make_optimizer(params, cfg):
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0], default_threads=None, repeats=7, warmup=3)
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--steps-per-repeat", type=int, default=None,
                   help="steps timed together per repeat (default 3 on CPU, 10 on GPU)")
    p.add_argument("--n-batches", type=int, default=4, help="distinct pre-generated batches, cycled")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="fp32; tf32 matmuls (GPU); bf16 autocast around the forward")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per implementation")
    p.add_argument("--diagnose", action="store_true",
                   help="also time mechtrunc's model with its attention patched at run time: without the identity "
                        "W_Q matmul, and with plain matmuls instead of einsum (attributes the overhead)")
    args = p.parse_args()
    device = setup(args)
    cfg = PRESETS[args.preset]
    if args.steps_per_repeat is None:
        args.steps_per_repeat = 3 if device.type == "cpu" else 10
    if args.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from mechtrunc import RecallConfig, RecallTask, ToyConfig, ToyTransformer
    from mechtrunc.core.metrics import masked_cross_entropy

    task = RecallTask(RecallConfig(alpha=0.5, k=1, seq_len=cfg["seq_len"]), device=device)
    batches = [task.sample(cfg["batch"], seed=args.seed + i) for i in range(args.n_batches)]
    batches = [(b.inputs, b.targets, b.loss_mask) for b in batches]

    toy = ToyTransformer(ToyConfig(d_model=cfg["d_model"], d_vocab=task.config.d_vocab, n_ctx=cfg["seq_len"],
                                   seed=args.seed)).to(device).train()
    bare = BareToy(cfg["d_model"], task.config.d_vocab, cfg["seq_len"]).to(device).load_from(toy).train()
    n_toy = sum(p.numel() for p in toy.parameters() if p.requires_grad)
    n_bare = sum(p.numel() for p in bare.parameters())
    assert n_toy == n_bare, (n_toy, n_bare)
    with torch.no_grad():
        a, b = toy(batches[0][0]), bare(batches[0][0])
        max_diff = (a - b).abs().max().item()
    tol = 1e-3 * max(1.0, a.abs().max().item()) if args.precision == "fp32" else 5e-2 * a.abs().max().item()
    if not max_diff <= tol:
        raise SystemExit(f"bare and mechtrunc models disagree: max |logit diff| = {max_diff:.3g} > {tol:.3g}")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    impls = {
        "mechtrunc ToyTransformer": (toy, make_optimizer([p for p in toy.parameters() if p.requires_grad], cfg),
                                     lambda logits, t, m: masked_cross_entropy(logits, t, m)),
        "bare PyTorch": (bare, make_optimizer(list(bare.parameters()), cfg),
                         lambda logits, t, m: F.cross_entropy(logits[m].float(), t[m])),
    }
    if args.diagnose:
        for label, fwd in (("diag: mechtrunc, q = x (no x @ I)", _attn_skip_identity_q),
                           ("diag: mechtrunc, q = x + matmul not einsum", _attn_matmul)):
            m = patched_copy(toy, fwd)
            with torch.no_grad():
                assert (m(batches[0][0]) - a).abs().max().item() <= tol, label
            impls[label] = (m, make_optimizer([p for p in m.parameters() if p.requires_grad], cfg),
                            lambda logits, t, m_: masked_cross_entropy(logits, t, m_))
    counters = {name: 0 for name in impls}

    def step(name):
        model, opt, loss_fn = impls[name]
        inputs, targets, mask = batches[counters[name] % len(batches)]
        counters[name] += 1
        with autocast:
            logits = model(inputs)
        loss = loss_fn(logits, targets, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def steps(name, n):
        for _ in range(n):
            step(name)

    for name in impls:
        steps(name, args.warmup)
    times = {name: [] for name in impls}
    names = list(impls)
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(lambda: steps(name, args.steps_per_repeat), device) / args.steps_per_repeat)

    # the ratio: median over repeats of (mechtrunc / bare) measured back to back, robust to drift
    ratio = median([a / b for a, b in zip(times[names[0]], times[names[1]])])
    print(machine_line(device))
    print(f"preset {args.preset}: d_model {cfg['d_model']}, seq_len {cfg['seq_len']}, batch {cfg['batch']}, "
          f"{cfg['optimizer']}, precision {args.precision}; {n_toy:,} trained parameters; "
          f"initial max |logit diff| {max_diff:.2e}")
    print(f"{args.repeats} interleaved repeats x {args.steps_per_repeat} steps, median per step")
    print()
    bare_t = times[names[1]]
    print_table(["implementation", "median ms/step", "min..max ms", "steps/s", "ratio to bare (paired median)",
                 "ratio of minima"],
                [[n, f"{median(t) * 1e3:.2f}", spread(t), f"{1 / median(t):.1f}",
                  f"{median([a / b for a, b in zip(t, bare_t)]):.3f}", f"{min(t) / min(bare_t):.3f}"]
                 for n, t in times.items()])
    print()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for name in names[:2]:
            with profile(activities=acts) as prof:
                steps(name, args.steps_per_repeat)
                sync(device)
            print(f"--- profile: {name}, {args.steps_per_repeat} steps ---")
            print(prof.key_averages().table(sort_by=sort, row_limit=15))

    result(f"train_step[{args.preset},{device.type}]", ratio, f"<={TARGET}", ratio <= TARGET, args.check)


if __name__ == "__main__":
    main()
