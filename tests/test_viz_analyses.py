"""Figures, offline circuitsvis HTML, and the toy analysis scripts (public API only)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import mechtrunc as mt

ROOT = Path(__file__).resolve().parents[1]


def test_attention_html_is_self_contained(random_toy, tmp_path):
    path = mt.attention_html(random_toy, torch.arange(10), layer=1, path=tmp_path / "attn.html")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert len(html) > 100_000  # the bundled JavaScript is inlined
    assert "<script src=\"http" not in html and "unpkg.com" not in html
    with pytest.raises(ValueError, match="token labels"):
        mt.attention_html(random_toy, torch.arange(5), layer=0, path=tmp_path / "x.html", str_tokens=["a"])
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        mt.attention_html(random_toy, torch.arange(5), layer=7, path=tmp_path / "x.html")


def test_plots_write_png(trained_toy, tmp_path):
    model, task, prompts = trained_toy
    hist = pd.DataFrame({"step": [1, 2], "full_accuracy": [0.1, 0.2], "full_p_noise": [0.5, 0.4],
                         "last_ffn_removed_accuracy": [0.3, 0.9], "last_ffn_removed_p_noise": [0.1, 0.0]})
    p1 = mt.plot_history(hist, tmp_path / "h.png")
    p2 = mt.plot_attribution(mt.attribute_change(model, prompts, mt.Ablate("mlp", layer=1)), tmp_path / "a.png")
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_run")
    cfg = mt.preset("cpu", d_model=16, seq_len=32, steps=40, eval_every=40, test_size=32, batch_size=16)
    mt.train(cfg, out_dir=out, progress=False)
    return out


@pytest.mark.parametrize("script, csv, n_rows", [
    ("toy_truncation_table.py", "toy_truncation.csv", 15),
    ("toy_attribution.py", "toy_attribution.csv", None),
    ("toy_noise_components.py", "toy_noise_components.csv", 8),
])
def test_analysis_scripts(script, csv, n_rows, toy_run, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "analyses" / script), "--model", str(toy_run),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / csv)
    if n_rows is not None:
        assert len(table) == n_rows
    if script == "toy_truncation_table.py":
        rows = table.set_index("variant")
        # keep = 1 is the identity; keep = 0 of either FFN matrix removes the FFN
        assert rows.loc["mlp.W_in L1 keep 1", "accuracy"] == rows.loc["full model", "accuracy"]
        assert rows.loc["mlp.W_out L1 keep 0", "p_noise"] == pytest.approx(rows.loc["FFN L1 removed", "p_noise"], abs=1e-6)
    if script == "toy_attribution.py":
        assert (tmp_path / "toy_attribution.png").exists()
        assert {"component", "clean", "intervened", "change"} <= set(table.columns)
