"""`mechtrunc demo` (make demo) prints its numbers beside the bands over seeds of
:mod:`mechtrunc.core.reference`, says which are outside, and names the machine and kernels."""

from __future__ import annotations

import re

from mechtrunc.cli.toy import format_band_table
from mechtrunc.core.reference import CPU_PRESET_BANDS, TOY_VARIANT_LABELS, band
from mechtrunc.core.results import VARIANT_METRICS


def _final(inside: bool) -> dict:
    mid = {key: {m: sum(band(key, m)) / 2 for m in VARIANT_METRICS} for key in TOY_VARIANT_LABELS}
    if not inside:
        mid["last_ffn_removed"]["accuracy"] = 0.5
    return mid


def test_band_table_puts_each_documented_band_under_its_number():
    lines = format_band_table(_final(inside=True)).splitlines()
    for key in TOY_VARIANT_LABELS:
        row = next(i for i, line in enumerate(lines) if line.startswith(key + " "))
        bands = lines[row + 1].split()
        assert bands[0] == "band"
        assert bands[1:] == [f"{band(key, m)[0]:.2f}-{band(key, m)[1]:.2f}" for m in VARIANT_METRICS]
    assert lines[-1] == "every number is inside its band"


def test_band_table_names_a_number_outside_its_band():
    last = format_band_table(_final(inside=False)).splitlines()[-1]
    lo, hi = CPU_PRESET_BANDS[("FFN L1 removed", "accuracy")]
    assert last == f"outside its band: last_ffn_removed accuracy 0.500 (band {lo:.2f}-{hi:.2f})"


def test_demo_prints_its_numbers_beside_the_bands(tmp_path, monkeypatch, capsys):
    """The demo's output (a cpu preset shrunk to seconds) holds the band table of its own final
    numbers and names the machine and kernels that produced them."""
    import mechtrunc.models.toy_training as training
    from mechtrunc.cli import main
    from mechtrunc.core.reference import machine_fingerprint

    real_preset, real_train, results = training.preset, training.train, []
    monkeypatch.setattr(training, "preset", lambda name, **kw: real_preset(
        name, **{**kw, "d_model": 16, "seq_len": 32, "steps": 20, "eval_every": 10, "batch_size": 8, "test_size": 16}))
    monkeypatch.setattr(training, "train", lambda *a, **kw: results.append(real_train(*a, **kw)) or results[-1])
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    fp = machine_fingerprint()
    assert f"({fp['cpu_model']}, torch {fp['torch']}, {fp['cpu_capability']} kernels)" in printed
    assert format_band_table(results[0].final) in printed
    assert "docs/results.md" in printed
