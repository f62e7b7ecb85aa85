"""benchmarks/bench_lm_train.py: its FLOP count is the model's, its bad usage exits 2 naming the valid presets."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_lm_train.py"


@pytest.fixture(scope="module")
def bench():
    # the script imports its sibling ``_common``, a name analyses/ uses for another module: put the
    # benchmarks' one in sys.modules only while the script loads, and restore whatever was there
    before = sys.modules.pop("_common", None)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_lm_train", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("_common", None)
        if before is not None:
            sys.modules["_common"] = before


@pytest.mark.parametrize("preset", ["small", "fast"])
def test_flops_per_token_counts_the_models_matrix_products(bench, preset):
    import torch

    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.models.lm.train import build_model, lm_preset

    cfg = lm_preset(preset)
    model = build_model(cfg, len(lm_tokenizer()))
    # every nn.Linear weight is a matrix product; the input embedding is a lookup
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    flops, n = bench.flops_per_token(cfg.n_layers, cfg.d_model, cfg.ctx, len(lm_tokenizer()))
    assert n == linear == 953_600
    assert flops == 6 * n + 12 * cfg.n_layers * cfg.ctx * cfg.d_model
    assert round(flops / 1e6, 2) == {"small": 6.11, "fast": 6.51}[preset]


@pytest.mark.parametrize("argv, message", [
    (["--new", "medium"], "unknown CPU preset 'medium'; valid: nano, small, fast"),
    (["--reference", "gpu"], "unknown CPU preset 'gpu'; valid: nano, small, fast"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "cuda"], "--device 'cuda': this benchmark times CPU training only (cpu)"),
    (["--new", "small"], "--new and --reference are both 'small'; name two presets"),
    (["--shapes", "32by128"], "--shapes '32by128': expected BATCHxCTX, two positive integers such as 32x128"),
    (["--shapes", "1x64"], "--shapes 1x64: processes must be an integer in 1..1 (each process trains on a share"),
])
def test_bad_usage_exits_2_naming_the_valid_values(bench, argv, message, capsys):
    """In process (each case in a fresh interpreter would cost seconds of imports); the script's
    own entry point is run once below."""
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err, err


def test_the_script_exits_2_on_bad_usage_without_a_traceback():
    r = subprocess.run([sys.executable, str(SCRIPT), "--new", "medium"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown CPU preset 'medium'" in r.stderr and "Traceback" not in r.stderr, r.stderr
