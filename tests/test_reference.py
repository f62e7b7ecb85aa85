"""mechtrunc.core.reference: the bands over seeds of the cpu preset and the machine fingerprint that
decides whether two runs can give equal numbers."""

from __future__ import annotations

import torch

from mechtrunc.core.reference import (CPU_PRESET_BANDS, FINGERPRINT_KEYS, band, fingerprint_differences, in_band,
                                 machine_fingerprint, same_machine)


def test_bands_are_found_under_table_labels_and_toy_keys():
    assert band("last_ffn_removed", "accuracy") == band("FFN L1 removed", "accuracy") == (0.95, 1.0)
    assert band("full", "p_noise") == CPU_PRESET_BANDS[("full model", "p_noise")]
    assert band("full", "logit_diff_noise") is None and in_band(3.0, "full", "logit_diff_noise") is None
    assert in_band(0.97, "last_ffn_removed", "accuracy") is True and in_band(0.9, "last_ffn_removed", "accuracy") is False
    assert all(0 <= lo < hi <= 1 for lo, hi in CPU_PRESET_BANDS.values())


def test_fingerprint_names_the_kernels_torch_uses(monkeypatch):
    fp = machine_fingerprint()
    assert set(FINGERPRINT_KEYS) <= set(fp)
    assert fp["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and fp["torch"] == torch.__version__
    assert same_machine(fp) and fingerprint_differences(fp, fp) == []
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    limited = machine_fingerprint()
    assert limited["env"] == {**fp["env"], "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert fingerprint_differences(fp, limited) == [f"env: {fp['env']!r} -> {limited['env']!r}"]
    assert not same_machine(fp, limited)
