import torch
import mechtrunc as mt


def _tokens(n=3, p=10, vocab=500, seed=0):
    return torch.randint(0, vocab, (n, p), generator=torch.Generator().manual_seed(seed))


def test_hook_equals_weight_mode_all_matrices(neox_bridge, gpt2_bridge, random_toy):
    for model, vocab in ((neox_bridge, 500), (gpt2_bridge, 500), (random_toy, 65)):
        toks = _tokens(vocab=vocab, p=12)
        for m in mt.MATRICES:
            a = mt.adapt(model)
            with mt.intervene(model, mt.Truncate(m, layer=1, keep=0.25)):
                w = a.forward(toks).detach()
            with mt.intervene(model, mt.Truncate(m, layer=1, keep=0.25, mode="hook")):
                h = a.forward(toks).detach()
            base = a.forward(toks).detach()
            assert (w - h).abs().max() < 1e-4, (type(model).__name__, m, (w - h).abs().max())
            assert (w - base).abs().max() > 1e-4, (type(model).__name__, m)
