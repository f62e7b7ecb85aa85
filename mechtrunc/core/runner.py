"""Forward passes over a :class:`~mechtrunc.core.prompts.PromptSet`, in batches, keeping only what
is read: the logits at each item's position and, on request, activations at those positions."""

from __future__ import annotations

import contextlib

import torch
from jaxtyping import Float
from torch import Tensor

from mechtrunc.core.adapters import adapt
from mechtrunc.core.interventions import Intervention, batch_rows, intervene
from mechtrunc.core.prompts import PromptSet

__all__ = ["item_logits", "run_items", "check_prompts"]


def check_prompts(model, prompts: PromptSet) -> None:
    """ValueError when ``prompts`` do not fit ``model`` (a model or its adapter): longer than
    its context, or token ids outside its vocabularies."""
    adapter = adapt(model)
    n_ctx = adapter.n_ctx
    if n_ctx is not None and prompts.tokens.shape[1] > n_ctx:
        raise ValueError(
            f"the prompts are {prompts.tokens.shape[1]} tokens long but the model's context is {n_ctx} tokens: "
            "shorten the prompts"
        )
    n_in = getattr(adapter, "d_vocab_in", adapter.d_vocab)  # the memory's inputs are not its outputs
    for name, t, n in (("tokens", prompts.tokens, n_in), ("answer", prompts.answer, adapter.d_vocab),
                       ("competitors", prompts.competitors, adapter.d_vocab)):
        if t.numel() and int(t.max()) >= n:
            raise ValueError(
                f"{name} holds token id {int(t.max())}, outside the model's vocabulary (valid ids 0..{n - 1})"
            )


@torch.no_grad()
def run_items(
    model, prompts: PromptSet, *interventions: Intervention, capture: tuple[str, ...] = (),
    batch_size: int = 64,
) -> tuple[Float[Tensor, "item vocab"], dict[str, Tensor]]:
    """Logits at every read item, and the activations of the ``capture`` hooks at the items'
    (sequence, position), both in item order.  Interventions are active during the run."""
    adapter = adapt(model)
    device = adapter.device
    check_prompts(adapter, prompts)
    logits_out: list[Tensor] = []
    order: list[Tensor] = []
    acts: dict[str, list[Tensor]] = {name: [] for name in capture}
    n_seq = prompts.n_sequences
    with intervene(model, *interventions):
        for start, (items, chunk) in zip(range(0, n_seq, batch_size), prompts.batches(batch_size)):
            order.append(items.cpu())
            chunk = chunk.to(device)
            store: dict[str, Tensor] = {}
            with contextlib.ExitStack() as stack:
                stack.enter_context(batch_rows(torch.arange(start, start + chunk.n_sequences), n_seq))
                for name in capture:
                    grab = lambda out, name=name, c=chunk: store.__setitem__(name, out[c.rows, c.pos].detach())
                    stack.enter_context(adapter.hooked(name, grab))
                logits = adapter.forward(chunk.tokens)
            logits_out.append(logits[chunk.rows, chunk.pos].float())
            for name in capture:
                acts[name].append(store[name].float())
    # chunks follow sequence order; put the results back in item order
    inverse = torch.argsort(torch.cat(order)) if order else torch.zeros(0, dtype=torch.long)
    put = lambda parts: torch.cat(parts)[inverse.to(parts[0].device)]
    if not logits_out:
        raise ValueError("the prompt set has no sequences")
    return put(logits_out), {k: put(v) for k, v in acts.items()}


def item_logits(model, prompts: PromptSet, *interventions: Intervention, batch_size: int = 64):
    """Logits ``[item, vocab]`` at every read item, with interventions active."""
    return run_items(model, prompts, *interventions, batch_size=batch_size)[0]
