"""Figures and circuit visualisations that work offline.

- :func:`attention_html`: a circuitsvis attention-head view written as a self-contained HTML
  file (the bundled JavaScript is inlined, so it renders from ``file://`` with no network).
- :func:`plot_history`: the toy training curves (accuracy and P(noise), full model vs FFN removed).
- :func:`plot_attribution`: a bar chart of an :func:`~mechtrunc.attribution.attribute_change` table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from mechtrunc.adapters import adapt

__all__ = ["attention_html", "plot_history", "plot_attribution"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def attention_html(model, tokens, layer: int, path: str | Path, str_tokens: list[str] | None = None) -> Path:
    """Write the attention patterns of every head of ``layer`` on one sequence (``tokens``:
    [pos] or [1, pos]) to a self-contained HTML file; returns the path."""
    import circuitsvis

    adapter = adapt(model)
    adapter.check_layer(layer)
    toks = torch.as_tensor(tokens).reshape(1, -1).to(adapter.device)
    store = {}
    with adapter.hooked(f"blocks.{layer}.attn.hook_pattern", lambda p: store.__setitem__("p", p.detach())):
        adapter.forward(toks)
    pattern = store["p"][0].float().cpu()  # [head, q, k]
    if str_tokens is None:
        tok = getattr(adapter.model, "tokenizer", None)
        str_tokens = ([tok.decode([t]) for t in toks[0].tolist()] if tok is not None
                      else [str(t) for t in toks[0].tolist()])
    if len(str_tokens) != pattern.shape[-1]:
        raise ValueError(f"{len(str_tokens)} token labels for a sequence of {pattern.shape[-1]} tokens")
    rendered = circuitsvis.attention.attention_heads(attention=pattern, tokens=list(str_tokens))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>layer {layer} attention</title>"
                    f"</head><body>\n{rendered.local_src}\n</body></html>\n")
    return path


def plot_history(history: pd.DataFrame, path: str | Path) -> Path:
    """Training curves of a toy run: clean accuracy and P(noise), full vs last FFN removed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, style in (("full", "-"), ("ffn2_removed", "--")):
        if f"{variant}_accuracy" not in history:
            continue
        axes[0].plot(history["step"], history[f"{variant}_accuracy"], style, label=variant)
        axes[1].plot(history["step"], history[f"{variant}_p_noise"], style, label=variant)
    axes[0].set(xlabel="step", ylabel="clean accuracy", ylim=(0, 1.02), title="accuracy at repeated triggers")
    axes[1].set(xlabel="step", ylabel="P(noise token)", ylim=(0, 1.02), title="probability of the noise token")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_attribution(change: pd.DataFrame, path: str | Path, competitor: str | None = None, top: int = 20) -> Path:
    """Horizontal bars of the clean and intervened attribution of the largest changes."""
    plt = _pyplot()
    df = change[change["kind"] != "total"]
    if competitor is not None:
        df = df[df["competitor"] == competitor]
    else:
        df = df[df["competitor"] == df["competitor"].iloc[0]]
    df = df.reindex(df["change"].abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(df) + 1.5))
    y = range(len(df))
    ax.barh([i + 0.2 for i in y], df["clean"], height=0.4, label="clean")
    ax.barh([i - 0.2 for i in y], df["intervened"], height=0.4, label="intervened")
    ax.set_yticks(list(y), df["component"])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("direct logit attribution (answer - competitor)")
    ax.legend()
    return _save(plt, fig, path)
