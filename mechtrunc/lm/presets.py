"""Light constants (standard library only) for the language model of :mod:`mechtrunc.lm`: the
corpus presets and the model/training presets.  The command line reads its choices from here, so
``mechtrunc lm --help`` never imports torch or numpy."""

from __future__ import annotations

#: corpus presets (CorpusConfig fields); "rare_the" is the control where "to the" is rare
CORPUS_PRESETS: dict[str, dict] = {
    "default": dict(),
    "rare_the": dict(to_the_share=0.1, ioi_the_share=0.0),
}

#: model + training presets (LMConfig fields).  nano: the test model (<= 60 s on 2 CPU cores);
#: small: the study model (<= 10 min on 2 CPU cores); gpu: a larger model for an accelerator.
#: One torch thread: at these widths a second thread only spin-waits (12x slower per step when
#: the cores are shared, measured); run two seeds side by side to use two cores.
LM_PRESETS: dict[str, dict] = {
    "nano": dict(n_layers=2, d_model=64, n_heads=4, ctx=64, batch_size=8, steps=200, lr=3e-3,
                 checkpoint_interval=50, threads=1),
    "small": dict(n_layers=4, d_model=128, n_heads=4, ctx=64, batch_size=16, steps=3000, lr=1e-3,
                  checkpoint_interval=250, threads=1),
    "gpu": dict(n_layers=8, d_model=512, n_heads=8, ctx=256, batch_size=64, steps=20000, lr=6e-4,
                checkpoint_interval=1000, device="cuda", precision="bf16", threads=None),
}


def check_preset(name: str, table: dict, what: str) -> dict:
    """The preset ``name`` of ``table``, or ValueError naming the valid ones."""
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; valid presets: {', '.join(table)}")
    return dict(table[name])
