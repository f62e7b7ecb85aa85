"""Pythia loading, checkpoints and the truncation / checkpoint studies, offline.

A random Pythia-shaped GPT-NeoX (2 layers, d_model 64, Pythia's real 50k-token tokenizer) is
written with ``build_random_pythia`` and loaded back through ``load_model`` like a real one.
"""

from __future__ import annotations

import gc
import json
import time
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch

import mechtrunc as mt
import mechtrunc.studies.grid as studies_grid
from mechtrunc.models.hf import (
    PYTHIA_SIZES, ModelNotAvailableError, check_step, load_model, pythia_config, pythia_steps,
)
from mechtrunc.studies import as_truncate, best_configuration, checkpoint_study, summarise_study, truncation_study
from mechtrunc.models.testing import build_random_pythia
from mechtrunc.analysis.viz import checkpoint_plot, truncation_heatmap

SHAPE = {"size": "14m", "hidden_size": 64, "num_attention_heads": 4}
KEEPS = (1, 0.5, 0.1, 0)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def random_dir(pythia_tokenizer_dir, tmp_path_factory):
    return build_random_pythia(SHAPE, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("random_pythia"), seed=0, n_layers=2)


@pytest.fixture(scope="module")
def bridge(random_dir):
    return load_model(random_dir)


@pytest.fixture(scope="module")
def ioi(bridge):
    from mechtrunc.tasks.ioi import ioi_prompts

    return ioi_prompts(bridge.tokenizer, n=16, seed=0)


@pytest.fixture(scope="module")
def factual(bridge):
    from mechtrunc.tasks.factual import factual_prompts

    return factual_prompts(bridge.tokenizer).subset_sequences(slice(0, 16))


class _Counter:
    """Wraps ``mechtrunc.studies.grid.evaluate`` (what the grid engine calls) and counts calls."""

    def __init__(self):
        self.calls = []
        self._orig = studies_grid.evaluate

    def __call__(self, model, prompts, *ivs, **kw):
        self.calls.append(tuple(iv.label for iv in ivs))
        return self._orig(model, prompts, *ivs, **kw)


@pytest.fixture(scope="module")
def ioi_study(bridge, ioi):
    counter = _Counter()
    studies_grid.evaluate = counter
    try:
        df = truncation_study(bridge, ioi, keeps=KEEPS, progress=False, mode="weight")  # one evaluate each
    finally:
        studies_grid.evaluate = counter._orig
    return df, counter.calls


# ----------------------------------------------------------------------------------------
# sizes and checkpoints
# ----------------------------------------------------------------------------------------
def test_steps_match_transformer_lens_labels():
    steps = pythia_steps()
    assert len(steps) == 154
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-2:] == [142000, 143000]
    from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels

    labels, kind = get_checkpoint_labels("EleutherAI/pythia-70m")
    assert labels == steps and kind == "step"


def test_sizes_reproduce_published_parameter_counts():
    from transformers import GPTNeoXForCausalLM

    published = {"14m": 14_067_712, "31m": 30_494_720, "70m": 70_426_624, "160m": 162_322_944,
                 "410m": 405_334_016, "1b": 1_011_781_632, "1.4b": 1_414_647_808, "2.8b": 2_775_208_960,
                 "6.9b": 6_857_302_016, "12b": 11_846_072_320}
    assert set(PYTHIA_SIZES) == set(published)
    assert PYTHIA_SIZES["160m"][:3] == (12, 768, 12) and PYTHIA_SIZES["1b"][:3] == (16, 2048, 8)
    for size, total in published.items():
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(pythia_config(size))
        assert sum(p.numel() for p in model.parameters()) == total, size
        s = PYTHIA_SIZES[size]
        assert model.config.intermediate_size == 4 * s.d_model and model.config.use_parallel_residual
        assert not model.config.tie_word_embeddings


def test_check_step_lists_nearest_valid_steps():
    assert check_step(0) == 0 and check_step(512) == 512 and check_step("143000") == 143000
    with pytest.raises(ValueError, match=r"nearest valid steps: 1000, 2000"):
        check_step(1500)
    with pytest.raises(ValueError, match=r"nearest valid steps: 2, 4"):
        check_step(3)
    with pytest.raises(ValueError, match=r"nearest valid steps: 143000\b"):
        check_step(150000)
    with pytest.raises(ValueError, match="integer"):
        check_step(2.5)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"1000, 2000") as info:
        load_model("EleutherAI/pythia-70m", step=1500)
    assert not isinstance(info.value, ModelNotAvailableError)  # rejected before any loading
    assert time.perf_counter() - t0 < 5


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------
def test_random_pythia_directory_is_pythia_shaped(random_dir):
    cfg = json.loads((Path(random_dir) / "config.json").read_text())
    assert cfg["model_type"] == "gpt_neox" and cfg["use_parallel_residual"] is True
    assert cfg["vocab_size"] == 50304 and cfg["tie_word_embeddings"] is False
    assert cfg["intermediate_size"] == 4 * cfg["hidden_size"] == 256 and cfg["num_hidden_layers"] == 2
    rotary = cfg.get("rope_parameters", {}).get("partial_rotary_factor", cfg.get("rotary_pct"))
    assert rotary == 0.25
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(random_dir))
    assert tok.encode(" Mary", add_special_tokens=False) == [6393]
    assert tok.encode(" the", add_special_tokens=False) == [253]
    assert tok.eos_token == "<|endoftext|>"


def test_load_local_directory_raw_weights(random_dir, bridge):
    from safetensors.torch import load_file
    from transformer_lens import TransformerBridge
    from transformers import AutoModelForCausalLM

    assert isinstance(bridge, TransformerBridge) and not bridge.training
    assert (bridge.cfg.n_layers, bridge.cfg.d_model, bridge.cfg.n_heads, bridge.cfg.d_vocab) == (2, 64, 4, 50304)
    # raw Hugging Face weights, bit for bit (no LayerNorm folding, no centring)
    saved = load_file(str(Path(random_dir) / "model.safetensors"))
    a = mt.adapt(bridge)
    for layer in range(2):
        assert torch.equal(a.matrix("mlp.W_in", layer).get(), saved[f"gpt_neox.layers.{layer}.mlp.dense_h_to_4h.weight"].T)
        assert torch.equal(a.matrix("mlp.W_out", layer).get(), saved[f"gpt_neox.layers.{layer}.mlp.dense_4h_to_h.weight"].T)
    assert torch.equal(a.final_ln()[0], saved["gpt_neox.final_layer_norm.weight"])
    hf = AutoModelForCausalLM.from_pretrained(str(random_dir), attn_implementation="eager").eval()
    tokens = torch.tensor([bridge.tokenizer.encode("When Mary and John went to the store, John gave a drink to")])
    with torch.no_grad():
        assert (bridge(tokens) - hf(tokens).logits).abs().max() < 1e-5
    with pytest.raises(ValueError, match="local directory"):
        load_model(random_dir, step=1000)
    with pytest.raises(ModelNotAvailableError, match="no such model directory"):
        load_model(str(Path(random_dir) / "missing"))
    half = load_model(random_dir, dtype="bfloat16")
    assert next(half.original_model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(random_dir, dtype="float8")


def test_loading_from_disk_prints_no_progress_bar(random_dir, tmp_path, capfd, monkeypatch):
    """transformers prints a "Loading weights" bar on every from_pretrained; load_model turns it
    off while it reads from disk (also for each checkpoint of a study with progress=False) and
    leaves the setting as it was."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as tf_logging

    from mechtrunc.tasks.factual import factual_prompts

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert tf_logging.is_progress_bar_enabled()
    AutoModelForCausalLM.from_pretrained(str(random_dir))
    assert "Loading weights" in capfd.readouterr().err  # what a plain load prints (the test can fail)

    model = load_model(random_dir)
    out = capfd.readouterr()
    assert "Loading weights" not in out.err + out.out and "%|" not in out.err + out.out, out.err
    assert tf_logging.is_progress_bar_enabled()  # restored

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "step0").symlink_to(Path(random_dir).resolve(), target_is_directory=True)
    df = checkpoint_study(str(tmp_path / "ck"), [0], factual_prompts(model.tokenizer).subset_sequences(slice(0, 4)),
                          progress=False)
    assert df["variant"].tolist() == ["full"]
    out = capfd.readouterr()
    assert "Loading weights" not in out.err + out.out and "%|" not in out.err + out.out, out.err
    assert tf_logging.is_progress_bar_enabled()


def test_load_gpt2_style_directory(small_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    hf.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(small_tokenizer_dir)).save_pretrained(tmp_path)
    bridge = load_model(tmp_path)
    tokens = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (bridge(tokens) - hf(tokens).logits).abs().max() < 1e-4
    before = mt.adapt(bridge).matrix("mlp.W_in", 1).param.detach().clone()
    with mt.intervene(bridge, mt.Truncate("mlp.W_in", layer=1, keep=0.25)):
        assert not torch.equal(mt.adapt(bridge).matrix("mlp.W_in", 1).param, before)
    assert torch.equal(mt.adapt(bridge).matrix("mlp.W_in", 1).param, before)


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, so the model is never found locally (no skip when it is)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


def test_offline_not_cached_error_is_fast_and_helpful(empty_hf_cache):
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("EleutherAI/pythia-70m", step=1000)
    assert time.perf_counter() - t0 < 20
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "EleutherAI/pythia-70m" in msg and "step1000" in msg
    assert "huggingface-cli download EleutherAI/pythia-70m --revision step1000" in msg
    assert "save_pretrained" in msg and "HF_HOME" in msg


def test_unreachable_hub_error_is_fast(monkeypatch, empty_hf_cache):
    """Without offline mode, an unreachable hub is detected by one quick probe, not retried."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="unreachable") as info:
        load_model("EleutherAI/pythia-160m", step=2000)
    assert time.perf_counter() - t0 < 20
    assert "step2000" in str(info.value)


# ----------------------------------------------------------------------------------------
# the bridge with mechtrunc
# ----------------------------------------------------------------------------------------
def test_truncate_and_attribute_on_loaded_bridge(bridge, ioi):
    a = mt.adapt(bridge)
    before = a.matrix("mlp.W_out", 1).param.detach().clone()
    full = mt.item_logits(bridge, ioi)
    iv = mt.Truncate("mlp.W_out", layer=1, keep=0.1)
    trunc = mt.item_logits(bridge, ioi, iv)
    assert (full - trunc).abs().max() > 1e-4
    assert torch.equal(a.matrix("mlp.W_out", 1).param, before)  # restored bit for bit
    for ivs in ((), (iv,)):
        df = mt.attribute(bridge, ioi, *ivs)
        assert set(df["competitor"]) == {"the", "subject"}
        for comp, diff in df.attrs["logit_diff"].items():
            total = df[(df.kind == "total") & (df.competitor == comp)]["attribution"].item()
            assert abs(total - diff) < 1e-4, (ivs, comp, total, diff)
        assert len(df[(df.kind == "head") & (df.competitor == "the")]) == 2 * 4


# ----------------------------------------------------------------------------------------
# truncation study
# ----------------------------------------------------------------------------------------
def test_truncation_study_grid_and_baseline(ioi_study):
    df, calls = ioi_study
    assert len(df) == 1 + 2 * 2 * len(KEEPS)
    base = df[df.baseline]
    assert len(base) == 1 and base["matrix"].item() == "none" and pd.isna(base["layer"].item())
    grid = df[~df.baseline]
    assert set(map(tuple, grid[["layer", "matrix", "keep"]].astype(object).values.tolist())) == {
        (layer, m, float(k)) for layer in (0, 1) for m in ("mlp.W_in", "mlp.W_out") for k in KEEPS}
    for col in ("accuracy", "p_answer", "loss", "p_the", "acc_vs_the", "logit_diff_the", "p_subject",
                "acc_vs_subject", "logit_diff_subject", "rank", "max_rank", "identity", "intervention"):
        assert col in df.columns, col
    assert dict(zip(grid["keep"], grid["rank"])) == {1.0: 64, 0.5: 32, 0.1: 6, 0.0: 0}
    metric_cols = ["accuracy", "p_answer", "p_the", "logit_diff_the", "logit_diff_subject"]
    ones = grid[grid.keep == 1]
    assert ones["identity"].all() and not grid[grid.keep < 1]["identity"].any()
    for _, row in ones.iterrows():
        assert row[metric_cols].tolist() == base[metric_cols].iloc[0].tolist()
    assert (grid[grid.keep < 1]["logit_diff_the"] != base["logit_diff_the"].item()).all()
    # one baseline evaluation, none for the identity rows
    assert len(calls) == 1 + 2 * 2 * (len(KEEPS) - 1) and calls[0] == ()


def test_truncation_study_factual(bridge, factual):
    df = truncation_study(bridge, factual, layers=[1], matrices="mlp.W_out", keeps=(1, 0.2), progress=False)
    assert len(df) == 3 and "p_the" in df.columns and "p_subject" not in df.columns
    row = df[df.keep == 0.2].iloc[0]
    with mt.intervene(bridge, mt.Truncate("mlp.W_out", layer=1, keep=0.2)):
        direct = mt.evaluate(bridge, factual)
    assert abs(direct["logit_diff_the"].item() - row["logit_diff_the"]) < 1e-6


def test_truncation_study_validates_everything_requested(bridge, ioi):
    with pytest.raises(ValueError, match="out of range"):
        truncation_study(bridge, ioi, layers=[0, 2], progress=False)
    with pytest.raises(ValueError, match="unknown matrix"):
        truncation_study(bridge, ioi, matrices=["mlp.W_up"], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        truncation_study(bridge, ioi, keeps=[0.5, 1.5], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        truncation_study(bridge, ioi, keeps=[-0.1], progress=False)
    with pytest.raises(ValueError, match="rank rule"):
        truncation_study(bridge, ioi, rule="floor", progress=False)


def test_truncation_study_resumes(bridge, ioi, tmp_path, monkeypatch):
    kw = dict(layers=[1], keeps=(1, 0.5, 0.2, 0.1, 0), progress=False, out=tmp_path, mode="weight")
    first = _Counter()
    monkeypatch.setattr(studies_grid, "evaluate", first)
    df1 = truncation_study(bridge, ioi, **kw)
    assert len(first.calls) == 1 + 2 * 4
    assert (tmp_path / "truncation.csv").is_file() and (tmp_path / "truncation.parquet").is_file()

    rows_path = tmp_path / "rows.jsonl"
    lines = rows_path.read_text().splitlines()
    assert len(lines) == 1 + 2 * 5
    dropped = [json.loads(x) for x in lines if '"identity": false' in x and '"baseline": false' in x][1:4]
    kept = [x for x in lines if json.loads(x) not in dropped]
    rows_path.write_text("\n".join(kept) + '\n{"baseline": false, "layer": 1, "matr')  # a half-written line
    second = _Counter()
    monkeypatch.setattr(studies_grid, "evaluate", second)
    with pytest.warns(UserWarning, match="unreadable"):
        df2 = truncation_study(bridge, ioi, **kw)
    assert sorted(second.calls) == sorted((f"truncate L1.{r['matrix']} keep={float(r['keep'])}",) for r in dropped)
    cols = [c for c in df1.columns if c != "seconds"]
    pd.testing.assert_frame_equal(df1[cols], df2[cols])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "truncation.parquet")[cols], df2[cols])

    third = _Counter()  # nothing left to do; a larger grid computes only the new rows
    monkeypatch.setattr(studies_grid, "evaluate", third)
    truncation_study(bridge, ioi, **kw)
    assert third.calls == []
    df3 = truncation_study(bridge, ioi, **{**kw, "keeps": (1, 0.5, 0.2, 0.1, 0, 0.05)})
    assert len(third.calls) == 2 and len(df3) == 1 + 2 * 6
    with pytest.raises(ValueError, match="different settings"):
        truncation_study(bridge, ioi, **{**kw, "rule": "authors"})


def test_best_configuration_heatmap_and_report(bridge, ioi, ioi_study, tmp_path):
    df, _ = ioi_study
    best = best_configuration(df, "logit_diff_the")
    grid = df[~df.baseline]
    assert best["value"] == grid["logit_diff_the"].max()
    assert best["baseline_value"] == df[df.baseline]["logit_diff_the"].item()
    assert best["improvement"] == pytest.approx(best["value"] - best["baseline_value"])
    worst = best_configuration(df, "logit_diff_the", higher_is_better=False)
    assert worst["value"] == grid["logit_diff_the"].min()
    assert as_truncate(best) == mt.Truncate(best["matrix"], layer=best["layer"], keep=best["keep"])
    with pytest.raises(ValueError, match="unknown metric"):
        best_configuration(df, "logit_diff_noise")

    png = truncation_heatmap(df, "logit_diff_the", tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    rep = summarise_study(bridge, ioi, df, "logit_diff_the", tmp_path / "report")
    paths = rep.paths
    assert set(paths) == {"heatmap", "best", "attribution", "attribution_by_layer"}
    assert all(Path(p).is_file() for p in paths.values())
    summary = json.loads(paths["best"].read_text())
    assert summary == json.loads(json.dumps(rep.best))  # returned: what best.json holds, not read back
    assert summary["best"]["layer"] == best["layer"] and summary["truncated"]["logit_diff_the"] == best["value"]
    change = pd.read_csv(paths["attribution"])
    assert list(rep.attribution["component"]) == list(change["component"])
    assert rep.attribution["change"].to_numpy() == pytest.approx(change["change"].to_numpy())
    by_layer = pd.read_csv(paths["attribution_by_layer"])
    assert rep.attribution_by_layer["change"].to_numpy() == pytest.approx(by_layer["change"].to_numpy())
    assert {"L0H0", "L1H3", "L1.mlp", "total"} <= set(change["component"])
    total = change[(change.component == "total") & (change.competitor == "the")]["change"].item()
    assert total == pytest.approx(best["value"] - best["baseline_value"], abs=1e-4)


# ----------------------------------------------------------------------------------------
# checkpoint study
# ----------------------------------------------------------------------------------------
def test_checkpoint_study_with_fake_checkpoints(random_dir, pythia_tokenizer_dir, tmp_path):
    from mechtrunc.tasks.factual import factual_prompts

    later = build_random_pythia(SHAPE, tokenizer_dir=pythia_tokenizer_dir, out_dir=tmp_path / "later",
                                seed=1, n_layers=2)
    dirs = {0: random_dir, 1000: later}
    loads, refs = [], []

    def load(step):
        loads.append(step)
        model = load_model(dirs[step])
        refs.append(weakref.ref(model))
        return model

    prompts_fn = lambda tok: factual_prompts(tok).subset_sequences(slice(0, 12))
    iv = mt.Truncate("mlp.W_in", layer=1, keep=0.1)
    out = tmp_path / "ckpt"
    df = checkpoint_study(load, [0, 1000], prompts_fn, iv, out=out, progress=False)
    assert loads == [0, 1000]
    assert df[["step", "variant"]].values.tolist() == [[0, "full"], [0, "truncated"], [1000, "full"], [1000, "truncated"]]
    assert {"p_answer", "p_the", "logit_diff_the", "accuracy", "intervention"} <= set(df.columns)
    full = df[df.variant == "full"].set_index("step")
    trunc = df[df.variant == "truncated"].set_index("step")
    assert full.loc[0, "logit_diff_the"] != full.loc[1000, "logit_diff_the"]
    assert (full["logit_diff_the"] != trunc["logit_diff_the"]).all()
    assert (out / "checkpoints.csv").is_file() and (out / "checkpoints.parquet").is_file()
    gc.collect()
    assert all(r() is None for r in refs)  # every checkpoint was freed

    # resumable: finished steps are not even loaded
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["step0.parquet", "step1000.parquet"]
    (out / "shards" / "step1000.parquet").unlink()
    loads.clear()
    df2 = checkpoint_study(load, [0, 1000], prompts_fn, iv, out=out, progress=False)
    assert loads == [1000]
    cols = [c for c in df.columns if c != "seconds"]
    pd.testing.assert_frame_equal(df[cols], df2[cols])
    with pytest.raises(ValueError, match="different settings"):
        checkpoint_study(load, [0], prompts_fn, mt.Truncate("mlp.W_in", layer=0, keep=0.1), out=out, progress=False)

    png = checkpoint_plot(df, tmp_path / "ckpt.png", metrics=("p_answer", "p_the"))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_study_by_name_validates_steps_first():
    loads_before = time.perf_counter()
    with pytest.raises(ValueError, match="nearest valid steps: 1000, 2000"):
        checkpoint_study("EleutherAI/pythia-70m", [1000, 1500], "ioi", None, progress=False)
    assert time.perf_counter() - loads_before < 5
