"""SVD sensitivity: the LASER paper truncates with ``torch.svd_lowrank(q=rank,
niter=2)`` (``svd="laser"``); how far does that move the truncated weights and the metrics from
the exact truncation (float64 reference), and does the chosen configuration change?

Two models, rank rule ``authors`` (the released code's ``int(keep x d_model)``), keeps 0.05, 0.1,
0.2, 0.5, methods ``exact`` and ``laser``:

- the toy ``cpu``-preset model (``--model``, trained there with seed 0 when missing, as
  ``make demo`` does), its FFN L1 ``W_in`` / ``W_out`` on the 256 clean test sequences;
- a random Pythia-shaped GPT-NeoX (70m shape, seed 0, Pythia's shipped tokenizer), the
  ``W_in`` / ``W_out`` of layer 2 (0-based) on 16 IOI prompts (its 50,304-token unembedding
  makes each evaluation cost about a second on 2 cores).

- the project's own language model (docs/lm.md): the ``small`` preset at seed 0, 3,000 steps
  (``--lm-run``, default ``runs/lm/default-L4-s0``, the run ``analyses/lm_study.py`` trains;
  trained there, resumably, when missing: about 15 minutes of one core), the ``W_in`` /
  ``W_out`` of every layer at the final checkpoint on the study's 200 held-out IOI *eval*
  prompts; best configuration by P(answer) (a metric the study's trap, ``logit_diff_the``,
  showed cannot be trusted to choose, docs/lm.md).

Writes ``svd_sensitivity_toy.csv``, ``svd_sensitivity_pythia.csv``, ``svd_sensitivity_lm.csv``
(one row per truncation and method, :func:`mechtrunc.studies.svd_sensitivity.svd_sensitivity`)
and ``svd_sensitivity_best.csv`` (the best configuration per model and method) to ``--data``,
and rewrites the generated blocks of docs/results.md.  About 3 minutes on 2 cores when the toy
model must be trained, 1 minute otherwise, plus the language model's training when its run is
missing.

    python analyses/svd_sensitivity.py
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it pins the reference kernels before torch loads)
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

import mechtrunc as mt  # noqa: E402
import _docs  # noqa: E402
from mechtrunc.studies.svd_sensitivity import best_by_method, svd_sensitivity  # noqa: E402
from mechtrunc.models.testing import build_random_pythia  # noqa: E402

KEEPS = (0.05, 0.1, 0.2, 0.5)
MATRICES = ("mlp.W_in", "mlp.W_out")
METHODS = ("exact", "laser")
PYTHIA_LAYERS = (2,)
N_IOI = 16


def toy(args) -> pd.DataFrame:
    model, cfg, task, test = _common.load_toy(args)
    grid = [(1, m, k) for m in MATRICES for k in KEEPS]  # layer 1: the paper's layer-2 FFN
    return svd_sensitivity(model, test.to_prompts(), grid, methods=METHODS, rule="authors")


def pythia() -> pd.DataFrame:
    with tempfile.TemporaryDirectory(prefix="svd_sensitivity_") as tmp:
        path = build_random_pythia("70m", tokenizer_dir=mt.hf.tokenizer_dir(), out_dir=tmp, seed=0)
        model = mt.hf.load_model(str(path))
    prompts = mt.ioi_prompts(model.tokenizer, n=N_IOI, seed=0)
    grid = [(layer, m, k) for layer in PYTHIA_LAYERS for m in MATRICES for k in KEEPS]
    return svd_sensitivity(model, prompts, grid, methods=METHODS, rule="authors")


LM_SPEC = ("default", 4, 0, 3000)  # corpus, layers, seed, steps: analyses/lm_study.py's study model at seed 0
N_LM = 200


def lm(args) -> pd.DataFrame:
    import lm_study
    from mechtrunc.models.lm import train_lm
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.studies import lm as S

    run = Path(args.lm_run)
    cfg = lm_study.run_config(*LM_SPEC)
    if not (run / f"step{cfg.steps}").is_dir():
        print(f"training the language model into {run} (resumable; about 15 minutes of one core)")
    train_lm(cfg, run, progress=False)  # a finished run is only checked, not retrained
    model = mt.hf.load_model(run / f"step{cfg.steps}", local_files_only=True)
    prompts = S.lm_study_prompts(lm_tokenizer(), cfg.corpus, n=N_LM, seed=0)["ioi/eval"]
    grid = [(layer, m, k) for layer in range(cfg.n_layers) for m in MATRICES for k in KEEPS]
    return svd_sensitivity(model, prompts, grid, methods=METHODS, rule="authors")


def main() -> None:
    p = _common.toy_parser(__doc__)
    p.add_argument("--data", default=str(_docs.DATA), help="where the CSVs go (default docs/data)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/results.md's blocks")
    p.add_argument("--lm-run", default="runs/lm/default-L4-s0",
                   help="the language-model run (trained there when missing; default runs/lm/default-L4-s0)")
    args = p.parse_args()
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    tables = {}
    for name, fn in (("toy", lambda: toy(args)), ("pythia", pythia), ("lm", lambda: lm(args))):
        t0 = time.perf_counter()
        tables[name] = fn()
        tables[name].to_csv(data / f"svd_sensitivity_{name}.csv", index=False)
        print(f"{name}: {time.perf_counter() - t0:.0f} s")
    metrics = {"toy": "logit_diff_noise", "pythia": "logit_diff_the", "lm": "p_answer"}
    best = pd.concat([best_by_method(tables[n], metrics[n]).assign(model=n) for n in tables], ignore_index=True)
    best.to_csv(data / "svd_sensitivity_best.csv", index=False)
    if not args.no_docs and data.resolve() == _docs.DATA.resolve():
        for name in _docs.SVD_BLOCKS:
            _docs.write_block(name)
            print(f"--- {name}\n{_docs.render(name)}\n")


if __name__ == "__main__":
    main()
