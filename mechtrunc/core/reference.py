"""What the ``cpu`` preset's toy model gives on any machine, and on which machine an exact number
was produced.

A thousand training steps amplify rounding differences, so the same seed of the ``cpu`` preset
ends with different numbers on different CPUs and torch kernels (full-model accuracy of seed 0:
0.587 on an AMD EPYC with AVX2 kernels, 0.593 on an Intel Xeon with AVX-512 ones).  What holds
anywhere is a band over seeds:

- :data:`CPU_PRESET_BANDS`: ``(variant, metric) -> (low, high)`` for the truncation table of the
  ``cpu`` preset (rank rule ``authors``, 256 clean test sequences, variants labelled as
  :func:`mechtrunc.toy_truncation_table` labels them).  Each band contains seeds 0, 1 and 2 on every
  machine measured and the released model's numbers at those seeds; docs/results.md states the
  measurements.  ``mechtrunc demo`` prints its numbers beside these bands and the slow test
  ``tests/test_docs_results.py`` asserts them.
- :data:`TOY_VARIANT_LABELS`: the keys of :func:`mechtrunc.models.toy_training.evaluate_toy` (and of a toy
  run's ``final``) -> the table labels of the bands.
- :func:`machine_fingerprint`: what decides the last digits of a number computed on this machine
  (CPU model, torch version, the kernel ISA torch dispatches to, MKL and oneDNN settings); the
  scripts that write docs/data record it in ``docs/data/provenance.json``, and exact numbers are
  compared only where the fingerprint of the running machine equals the recorded one
  (:func:`same_machine`).

Standard library at module top (torch is imported inside :func:`machine_fingerprint`).
"""

from __future__ import annotations

import os
import platform
from typing import Mapping

__all__ = ["CPU_PRESET_BANDS", "TOY_VARIANT_LABELS", "band", "in_band", "machine_fingerprint",
           "FINGERPRINT_KEYS", "same_machine", "fingerprint_differences"]

#: (variant, metric) -> (low, high) over seeds 0, 1, 2 of the ``cpu`` preset, on any machine
CPU_PRESET_BANDS: dict[tuple[str, str], tuple[float, float]] = {
    ("full model", "accuracy"): (0.35, 0.80),  # knife-edge: P(noise) is about P(correct)
    ("full model", "p_noise"): (0.40, 0.60),  # about alpha = 0.5
    ("full model", "p_answer"): (0.40, 0.65),
    ("FFN L1 removed", "accuracy"): (0.95, 1.0),
    ("FFN L1 removed", "p_noise"): (0.0, 0.05),
    ("FFN L1 removed", "p_answer"): (0.60, 0.78),
    # each of the next three contains the released model's numbers and excludes what an
    # N(0, 1/d) unembedding gives (W_in keep 0.1 P(noise) .07-.10, W_out .81-.83)
    ("mlp.W_in L1 keep 0.1", "p_noise"): (0.15, 0.45),
    ("mlp.W_out L1 keep 0.1", "p_noise"): (0.85, 1.0),
    ("FFN L0 removed", "accuracy"): (0.0, 0.2),
    ("attn.W_V L1 keep 0.1", "accuracy"): (0.0, 0.1),
}

#: keys of a toy run's final metrics (``evaluate_toy``) -> the truncation-table labels of the bands
TOY_VARIANT_LABELS: dict[str, str] = {"full": "full model", "last_ffn_removed": "FFN L1 removed"}


def band(variant: str, metric: str) -> tuple[float, float] | None:
    """The band of ``metric`` for ``variant`` (a table label or a key of :data:`TOY_VARIANT_LABELS`),
    or None where none is stated."""
    return CPU_PRESET_BANDS.get((TOY_VARIANT_LABELS.get(variant, variant), metric))


def in_band(value: float, variant: str, metric: str) -> bool | None:
    """Whether ``value`` lies in the band (None where no band is stated)."""
    b = band(variant, metric)
    return None if b is None else b[0] <= value <= b[1]


#: the entries of :func:`machine_fingerprint` that must be equal for two runs to give equal numbers
FINGERPRINT_KEYS = ("machine", "cpu_model", "cpus", "torch", "cpu_capability", "mkl", "onednn", "env")

#: environment variables that change which kernels MKL and oneDNN use (``ATEN_CPU_CAPABILITY``
#: is recorded apart: its effect is ``cpu_capability``)
_KERNEL_ENV = ("MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _build_line(config: str, marker: str) -> str | None:
    for line in config.splitlines():
        if marker in line:
            return line.strip(" -")
    return None


def machine_fingerprint() -> dict:
    """What decides the last digits of a number computed here: ``machine`` (architecture),
    ``cpu_model``, ``cpus`` (logical CPUs), ``torch`` (version), ``cpu_capability`` (the kernel
    ISA torch dispatches to: ``AVX2``, ``AVX512``, ``DEFAULT``...), ``mkl`` and ``onednn`` (the
    versions torch was built with, or None), ``env`` (the MKL / oneDNN kernel-selecting
    environment variables that are set) and, not compared, ``aten_cpu_capability`` (the
    variable that asked for ``cpu_capability``, or None) and ``threads`` (torch's intra-op
    threads: they can move the last digits of an evaluation, not the training of the one-thread
    ``cpu`` preset)."""
    import torch

    config = torch.__config__.show()
    return {
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": _build_line(config, "Math Kernel Library") if torch.backends.mkl.is_available() else None,
        "onednn": _build_line(config, "MKL-DNN") if torch.backends.mkldnn.is_available() else None,
        "env": {k: os.environ[k] for k in _KERNEL_ENV if os.environ.get(k)},
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY") or None,
        "threads": torch.get_num_threads(),
    }


def fingerprint_differences(recorded: Mapping, current: Mapping) -> list[str]:
    """The entries of :data:`FINGERPRINT_KEYS` in which two fingerprints differ, as
    ``"key: recorded -> current"`` (empty: the same machine and kernels)."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in FINGERPRINT_KEYS
            if recorded.get(k) != current.get(k)]


def same_machine(recorded: Mapping, current: Mapping | None = None) -> bool:
    """Whether a number recorded under fingerprint ``recorded`` can be expected to come out
    equal here (``current``: default this machine's :func:`machine_fingerprint`)."""
    return not fingerprint_differences(recorded, machine_fingerprint() if current is None else current)
