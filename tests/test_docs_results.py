"""The toy numbers of docs/results.md: every generated block equals its rendering from the CSV a
committed script wrote (fast), and in the slow suite a fresh run of the current code at seeds 0, 1,
2 of the ``cpu`` preset sits inside the bands of :mod:`mechtrunc.core.reference` (which hold on any
machine) and equals docs/data where docs/data/provenance.json says the CSV was produced on a
machine with this one's fingerprint (CPU, torch, kernels); elsewhere only the bands are asserted,
and the test says so."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

import mechtrunc as mt
from mechtrunc.core.reference import CPU_PRESET_BANDS as BANDS
from mechtrunc.core.reference import TOY_VARIANT_LABELS, fingerprint_differences, machine_fingerprint
from mechtrunc.core.results import VARIANT_METRICS, read_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))

import _docs  # noqa: E402


@pytest.mark.parametrize("name", _docs.all_blocks())
def test_results_block_matches_its_csv(name):
    block = _docs.read_block(name)
    page = _docs.doc_of(name).relative_to(ROOT)
    script = _docs.script_of(name)
    assert block is not None, f"{page} lost its generated block {name!r}"
    assert block == _docs.render(name), f"block {name!r} differs from docs/data: run `python analyses/{script}`"


def _close(fresh: pd.DataFrame, doc: pd.DataFrame, key: str, cols, atol: float = 5e-3, exact: bool = True) -> None:
    """``fresh`` has the rows of ``doc`` (matched on ``key``) and, when ``exact``, their numbers."""
    doc = doc.set_index(key)
    assert sorted(fresh[key]) == sorted(doc.index), (list(fresh[key]), list(doc.index))
    if not exact:
        return
    for _, row in fresh.iterrows():
        for c in cols:
            assert row[c] == pytest.approx(doc.loc[row[key], c], abs=atol), (row[key], c)


#: the CSVs of docs/data that the slow test recomputes
RECOMPUTED = ("cpu_seeds_truncation.csv", "cpu_noise_components.csv", "cpu_attribution.csv", "cpu_patching.csv",
              "cpu_path_patching.csv", "cpu_lens_components.csv", "cpu_logit_lens.csv", "cpu_heldout.csv")


def comparable(csv: str, here: dict | None = None) -> list[str]:
    """Why docs/data's ``csv`` cannot be expected to equal a fresh run on this machine (empty: it
    can; ``here``: this machine's fingerprint)."""
    record = _docs.provenance_of(csv)
    if record is None:
        return [f"docs/data/provenance.json has no record of {csv}"]
    return fingerprint_differences(record["fingerprint"], machine_fingerprint() if here is None else here)


def test_provenance_records_every_recomputed_csv():
    """docs/data/provenance.json says, for every CSV the slow test recomputes, which script wrote
    it on which machine and kernels: a complete fingerprint, a committed script."""
    for csv in RECOMPUTED:
        record = _docs.provenance_of(csv)
        assert record is not None, f"{csv} has no provenance: run `python analyses/make_results.py`"
        assert (ROOT / "analyses" / record["script"]).exists(), record
        fp = record["fingerprint"]
        assert set(machine_fingerprint()) <= set(fp), (csv, fp)
        assert fp["cpu_model"] and fp["torch"] and fp["cpu_capability"], (csv, fp)


def test_comparable_only_on_the_recorded_fingerprint(monkeypatch):
    """The exact comparison is made only where CPU model, torch and kernels all match the record;
    one differing entry (another CPU, AVX-512 kernels, another torch) turns it off, naming it."""
    record = machine_fingerprint()
    monkeypatch.setattr(_docs, "provenance_of", lambda csv: {"fingerprint": record} if csv.startswith("cpu_") else None)
    assert comparable("cpu_seeds_truncation.csv", dict(record)) == []
    assert comparable("cpu_seeds_truncation.csv") == []  # this machine
    for key, other in (("cpu_model", "Intel(R) Xeon(R) Platinum 8481C"), ("cpu_capability", "AVX512"),
                       ("torch", "2.6.0+cpu"), ("env", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"})):
        why = comparable("cpu_seeds_truncation.csv", {**record, key: other})
        assert len(why) == 1 and why[0].startswith(f"{key}: "), why
    assert comparable("no_such.csv", record) == ["docs/data/provenance.json has no record of no_such.csv"]


def test_scripts_record_the_machine_of_each_csv_they_write(tmp_path, monkeypatch):
    """record_written records this machine's fingerprint for each CSV of docs/data written since
    a time, keeps the other records, and ignores files elsewhere."""
    import json
    import time

    monkeypatch.setattr(_docs, "DATA", tmp_path)
    monkeypatch.setattr(_docs, "PROVENANCE", tmp_path / "provenance.json")
    (tmp_path / "old.csv").write_text("a\n1\n")
    _docs.record_provenance("old_script.py", [tmp_path / "old.csv", tmp_path.parent / "elsewhere.csv"])
    started = time.time()
    (tmp_path / "new.csv").write_text("a\n2\n")
    assert _docs.record_written("make_results.py", since=started) == ["new.csv"]
    files = json.loads((tmp_path / "provenance.json").read_text())["files"]
    assert sorted(files) == ["new.csv", "old.csv"]
    assert files["old.csv"]["script"] == "old_script.py" and files["new.csv"]["script"] == "make_results.py"
    assert _docs.provenance_of("new.csv")["fingerprint"] == machine_fingerprint()


def test_committed_seed_numbers_sit_in_the_bands():
    """The bands the demo prints and the slow test asserts contain the committed numbers of every
    seed, and cover every metric the demo prints for both of its variants."""
    doc = pd.read_csv(_docs.DATA / "cpu_seeds_truncation.csv")
    for (variant, metric), (lo, hi) in BANDS.items():
        values = doc.loc[doc["variant"] == variant, metric]
        assert len(values) == 3 and values.between(lo, hi).all(), (variant, metric, list(values))
    assert {(label, m) for label in TOY_VARIANT_LABELS.values() for m in VARIANT_METRICS} <= set(BANDS)


@pytest.mark.slow
def test_cpu_preset_at_three_seeds_matches_released_model_and_docs(demo_toy, cpu_seeds_1_2):
    import causal_toy
    import lens_toy
    import toy_attribution
    import toy_heldout
    import toy_noise_components
    import toy_seeds_table

    # seeds 0, 1 and 2 trained in the suite's background process through the committed script
    # that wrote docs/data (conftest.demo_toy and conftest.cpu_seeds_1_2, started when this test
    # was collected; it runs last, and studies seed 0 while seeds 1 and 2 may still train); seed
    # 0 is shared with the patching test; the cpu preset uses one thread
    r = demo_toy
    task = mt.RecallTask(r.config.recall_config())
    tables = [toy_seeds_table.seed_table(r.model, r.config, task, 0)]
    # the demo's model: the toy analyses of docs/results.md and docs/causal.md
    test = task.test_set(r.config.test_size, seed=r.config.seed + 10_000)
    _, noise_table = toy_noise_components.compute(r.model, r.config, task, test)
    attribution = toy_attribution.compute(r.model, r.config, task, test)
    lens = lens_toy.compute(r.model, r.config, task, test)
    causal = causal_toy.compute(r.model, r.config, task)
    heldout = toy_heldout.compute(r.model, test)
    demo = r.final
    fresh = pd.concat([*tables, cpu_seeds_1_2()], ignore_index=True)
    print(fresh.round(3).to_string(index=False))

    # what holds on any machine: the bands over seeds (mechtrunc.core.reference, printed by the demo)
    for (variant, metric), (lo, hi) in BANDS.items():
        values = fresh.loc[fresh["variant"] == variant, metric]
        assert len(values) == 3 and values.between(lo, hi).all(), (variant, metric, list(values))
    # the demo's numbers are the seed-0 rows of the table computed in this run
    seed0 = fresh[fresh["seed"] == 0].set_index("variant")
    for key, label in TOY_VARIANT_LABELS.items():
        for m in VARIANT_METRICS:
            assert demo[key][m] == pytest.approx(seed0.loc[label, m], abs=1e-6), (key, m)
    # the headline survives held-out selection: every split's eval-half interval excludes zero
    ev = heldout[heldout["part"] == "eval"]
    assert (~ev["baseline"].astype(bool)).all() and (ev["ci_low"] > 0).all(), ev

    # docs/data (hence docs/results.md and docs/causal.md) was produced by the current code: the
    # same numbers where docs/data/provenance.json records this machine's fingerprint for the
    # CSV; on another CPU or other kernels the last digits differ, and only the rows are compared
    here = machine_fingerprint()
    exact = {csv: not comparable(csv, here) for csv in RECOMPUTED}
    doc = pd.read_csv(_docs.DATA / "cpu_seeds_truncation.csv")
    for seed in (0, 1, 2):
        _close(fresh[fresh["seed"] == seed], doc[doc["seed"] == seed], "variant", ["accuracy", "p_noise", "p_answer"],
               exact=exact["cpu_seeds_truncation.csv"])
    _close(noise_table, read_table(_docs.DATA / "cpu_noise_components.csv"), "variant",
           ["accuracy", "p_noise", "p_answer", "train_distribution_loss"], exact=exact["cpu_noise_components.csv"])
    _close(attribution, pd.read_csv(_docs.DATA / "cpu_attribution.csv"), "component", ["clean", "intervened"], atol=0.02,
           exact=exact["cpu_attribution.csv"])
    _close_on(causal["scan"], "cpu_patching.csv", ["direction", "site", "layer", "position"], ["value", "effect"],
              exact=exact)
    _close_on(causal["paths"], "cpu_path_patching.csv", ["direction", "sender_layer", "sender_head", "receiver"],
              ["value", "effect"], exact=exact)
    _close_on(lens["components"], "cpu_lens_components.csv", ["matrix", "layer", "component"],
              ["generic_score", "activation_score"], exact=exact)
    _close_on(lens["logit"], "cpu_logit_lens.csv", ["label", "layer", "site"], ["accuracy", "p_answer", "p_noise"],
              exact=exact)
    _close_on(heldout, "cpu_heldout.csv", ["split_seed", "part", "config"], ["truncated", "change", "ci_low", "ci_high"],
              exact=exact)
    if all(exact.values()):
        print(f"docs/data compared number by number: this machine's fingerprint is the recorded one ({here})")
    else:
        why = {csv: comparable(csv, here) for csv, same in exact.items() if not same}
        message = (f"docs/data not compared number by number for {sorted(why)}: produced on another machine or "
                   f"with other kernels ({next(iter(why.values()))}); asserted the bands over seeds and the rows only")
        print(message)
        warnings.warn(message, stacklevel=1)


def _close_on(fresh: pd.DataFrame, csv: str, keys: list[str], cols: list[str], exact: dict, atol: float = 5e-3) -> None:
    """``fresh`` has the rows of the docs CSV ``csv`` (matched on ``keys``) and, where
    ``exact[csv]``, its numbers in ``cols``."""
    doc = pd.read_csv(_docs.DATA / csv)
    label = lambda df: df[keys].astype(str).agg("|".join, axis=1)
    _close(fresh.assign(_key=label(fresh)), doc.assign(_key=label(doc)), "_key", cols, atol, exact=exact[csv])
