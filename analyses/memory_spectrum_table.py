"""Where does the noise association sit in the spectrum of a trained linear associative memory?

Varies alpha, N (inputs), d and the scale of a random initial W one at a time around a base
configuration (N = V = 64, d = 128, alpha = 0.3, Gaussian embeddings, W = 0 at start), trains by
full-batch gradient descent on the population loss (lr = N, so each input's logits move at the
same speed whatever N), or by minibatch SGD (batch 16 or 256, same lr, seeded), and at steps 10, 100 and 1000 locates the component of W and of
W - W_init most aligned with the noise output direction (mechtrunc.models.memory.spectrum_summary).
At each of those steps it checks what the location predicts with the library's interventions:
LASER (mt.Truncate("W", keep=...)) versus removing the noise component of W
(mt.RemoveComponents).

Writes memory_spectrum_table.csv (one row per configuration, step, matrix) and
memory_truncation_check.csv (one row per configuration and step: clean P(noise), P(correct) of
the full memory, after LASER keep 0.1 and 0.5, and after removing the noise component; and the
first steps where P(noise) and P(correct) are halfway from chance 1/V to alpha and 1 - alpha,
-1 for never).

    python analyses/memory_spectrum_table.py --out docs/memory
"""

from __future__ import annotations

import pandas as pd

import mechtrunc as mt
from _memory import BASE, Timer, parser, setup

STEPS = 1000
LOG_STEPS = [1, 10, 100, 1000]
GRID = ([("alpha", a) for a in (0.02, 0.05, 0.1, 0.3, 0.5, 0.8)]
        + [("n_inputs", n) for n in (16, 256, 512)]
        + [("d", d) for d in (32, 64, 256)]
        + [("init_scale", s) for s in (1.0, 10.0, 30.0)]
        + [("sgd_batch", b) for b in (16, 256)])


def config_for(factor: str, value) -> mt.MemoryConfig:
    kw = dict(BASE)
    if factor == "init_scale":
        kw.update(init="random", init_scale=value)
    elif factor == "sgd_batch":
        pass
    elif factor != "base":
        kw[factor] = value
    return mt.MemoryConfig(**kw)


def main() -> None:
    args = parser(__doc__).parse_args()
    out = setup(args)
    tables, checks = [], []
    with Timer() as timer:
        for factor, value in [("base", None)] + GRID:
            cfg = config_for(factor, value)
            desc = {"factor": factor, "alpha": cfg.alpha, "N": cfg.n_inputs, "d": cfg.d,
                    "init_scale": cfg.init_scale if cfg.init == "random" else 0.0,
                    "method": "sgd" if factor == "sgd_batch" else "gd", "batch": value if factor == "sgd_batch" else 0}
            train_kw = dict(method="sgd", batch_size=value, seed=0) if factor == "sgd_batch" else {}
            model, done, hist = mt.LinearMemory(cfg), 0, []
            for step in LOG_STEPS:  # train on in segments (GD is deterministic), check at each step
                run = mt.train_memory(model, steps=step - done, lr=float(cfg.n_inputs), log_every=1,
                                      spectrum_steps=[step - done], **(dict(train_kw, seed=step) if train_kw else {}))
                hist.append(run.history.assign(step=run.history["step"] + done))
                done = step
                tables.append(mt.memory.spectrum_summary(run.spectra.assign(step=step)).assign(**desc))
                i = mt.memory.noise_component(mt.memory.spectrum(model))
                variants = {"full": [], "laser_0.1": [mt.Truncate("W", keep=0.1)],
                            "laser_0.5": [mt.Truncate("W", keep=0.5)],
                            "remove_noise": [mt.RemoveComponents("W", indices=[i])]}
                row = dict(desc, step=step, noise_index=i)
                for name, ivs in variants.items():
                    m = mt.memory.clean_metrics(model, *ivs)
                    row[f"p_noise_{name}"], row[f"p_answer_{name}"] = m["p_noise"], m["p_answer"]
                checks.append(row)
            # order of learning: first step where P(noise), resp. P(correct), is halfway from chance
            # (1/V) to its population optimum (alpha, resp. 1 - alpha)
            h = pd.concat(hist, ignore_index=True)
            first = lambda ok: int(h.loc[ok, "step"].iloc[0]) if ok.any() else -1
            chance = 1 / cfg.n_outputs
            for row in checks[-len(LOG_STEPS):]:
                row["step_noise_half"] = first(h["p_noise"] >= chance + (cfg.alpha - chance) / 2)
                row["step_answer_half"] = first(h["p_answer"] >= chance + (1 - cfg.alpha - chance) / 2)
    table = pd.concat(tables, ignore_index=True)
    cols = ["factor", "alpha", "N", "d", "init_scale", "method", "batch", "step", "matrix"]
    table = table[cols + [c for c in table.columns if c not in cols]]
    check = pd.DataFrame(checks)
    table.to_csv(out / "memory_spectrum_table.csv", index=False)
    check.to_csv(out / "memory_truncation_check.csv", index=False)
    pd.set_option("display.width", 250)
    show = table[table["step"] == STEPS]
    print(show[cols[:-2] + ["matrix", "noise_index", "n_nonzero", "noise_align", "noise_sv", "top_sv", "gap", "location"]]
          .round(3).to_string(index=False))
    print()
    print(table[table["step"].isin([1, 10])][cols[:-2] + ["step", "matrix", "noise_index", "n_nonzero", "noise_align", "noise_sv", "top_sv", "gap", "location"]]
          .round(3).to_string(index=False))
    print()
    print(check[check["step"].isin([10, STEPS])].round(3).to_string(index=False))
    print(f"\n{len(GRID) + 1} configurations in {timer.seconds:.1f} s -> {out}")


if __name__ == "__main__":
    main()
