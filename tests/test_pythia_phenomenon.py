"""The paper's phenomenon on a Pythia architecture, end to end through the Pythia path.

A small Hugging Face GPT-NeoX (parallel attention + MLP, rotary on 25% of head dims, LayerNorm,
untied unembedding) is trained on noisy in-context recall (alpha 0.5, masked loss at repeated
triggers), saved with ``save_pretrained`` together with a character tokenizer, loaded back with
``mechtrunc.models.hf.load_model`` and studied with ``truncation_study``.  On the clean test set
the full model still puts about half of its mass on the noise token (it learned the generic
trigger -> noise association); removing the last layer's MLP (``keep=0`` on its ``W_out``, or
ablating its output) raises accuracy and lowers P(noise), as on the paper's toy model.

The training (600 steps, about 3 minutes on one thread) runs in the suite's background process
(conftest ``phenomenon_neox``: ``python tests/test_pythia_phenomenon.py DIR``, from collection
on, on the core the rest of the suite leaves idle); the test, which runs last, studies what it
saved.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

import mechtrunc as mt
from mechtrunc.models.hf import load_model
from mechtrunc.studies import best_configuration, truncation_study
from mechtrunc.models.testing import train_neox_recall
from mechtrunc.tasks.recall import RecallConfig, RecallTask

# recipe (see docs/pythia.md): d_model 128, 2 layers, 4 heads, T = 64, batch 64, AdamW lr 1e-3
RECIPE = dict(n_layers=2, d_model=128, n_heads=4, steps=600, batch_size=64, lr=1e-3, seed=0)
TASK = RecallConfig(alpha=0.5, seq_len=64)
N_TEST = 256


def train(directory: Path) -> None:
    """Train the recipe into ``directory/neox_recall`` (``save_pretrained``) and save the trained
    model's own logits at the clean test items and the training time in ``directory/trained.pt``."""
    t0 = time.perf_counter()
    hf_model, task, _ = train_neox_recall(directory / "neox_recall", task_config=TASK, **RECIPE)
    seconds = time.perf_counter() - t0
    prompts = task.test_set(N_TEST).to_prompts()
    with torch.no_grad():
        ref = hf_model(prompts.tokens).logits[prompts.rows, prompts.pos]
    torch.save({"logits": ref, "seconds": seconds, "threads": torch.get_num_threads()}, directory / "trained.pt")


@pytest.mark.slow
def test_removing_last_mlp_helps_trained_neox(phenomenon_neox):
    """The margins below hold on one thread (the background's) and on two (full accuracy 0.571 /
    0.536, MLP removed 1.000 / 1.000)."""
    out = phenomenon_neox / "neox_recall"
    trained = torch.load(phenomenon_neox / "trained.pt")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()

    bridge = load_model(out)
    assert bridge.cfg.n_layers == 2 and bridge.cfg.d_vocab == 65 and not bridge.training
    task = RecallTask(TASK)
    prompts = task.test_set(N_TEST).to_prompts()  # clean (alpha = 0); answer = the in-context token
    # the loaded model computes what the trained one computed before it was saved
    assert (mt.item_logits(bridge, prompts) - trained["logits"]).abs().max() < 1e-3

    df = truncation_study(bridge, prompts, layers=[1], matrices=("mlp.W_in", "mlp.W_out"),
                          keeps=(1, 0.5, 0.1, 0), progress=False)
    full = df[df.baseline].iloc[0]
    removed = df[(df.matrix == "mlp.W_out") & (df.keep == 0)].iloc[0]
    ablated = mt.evaluate(bridge, prompts, mt.Ablate("mlp", layer=1)).iloc[0]
    report = (f"trained in {trained['seconds']:.0f}s on {trained['threads']} thread(s); "
              f"full acc {full.accuracy:.3f} P(noise) {full.p_noise:.3f}; "
              f"W_out keep=0 acc {removed.accuracy:.3f} P(noise) {removed.p_noise:.3f}; "
              f"ablated acc {ablated.accuracy:.3f} P(noise) {ablated.p_noise:.3f}")
    print(report)

    # the full model learned the noise association: a large share of mass on the noise token
    assert full.p_noise > 0.3, report
    for variant in (removed, ablated):
        assert variant.accuracy > full.accuracy + 0.1, report
        assert variant.accuracy > 0.9, report
        assert variant.p_noise < full.p_noise - 0.2, report
        assert variant.p_answer > full.p_answer, report
    best = best_configuration(df, "logit_diff_noise")
    assert best["layer"] == 1 and best["improvement"] > 0, (best, report)


if __name__ == "__main__":  # the background job of conftest.phenomenon_neox
    train(Path(sys.argv[1]))
