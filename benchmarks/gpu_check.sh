#!/usr/bin/env bash
# The device checks, as one script (run from the repository root on a GPU machine); each step is
# independent and logs to $OUT (or ./gpu_out):
#   1. the `paper` preset to 1250 iterations (the paper-notes reference point), its truncation
#      table, then extended to 5000 iterations (--extend) and the table again;
#   2. the grid engine against the naive LASER loop at the Pythia-1.4B shape (240 configurations);
#   3. the projection of the full Pythia-1.4B checkpoint study from measured per-checkpoint costs.
# Needs transformer-lens importable (docs/benchmarks.md: "Reproducing on the GPU machine").
set -u -o pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, mechtrunc; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
paper() {  # $1 = steps, then extra options (--extend: train the run in $OUT/paper on)
    local start=$(date +%s)
    python3 -m mechtrunc.cli toy train --preset paper --steps "$1" "${@:2}" --device cuda --precision bf16 \
        --out "$OUT/paper" --no-progress 2>&1 | tail -n 12
    echo "paper preset to step $1: $(( $(date +%s) - start )) s wall"
    python3 analyses/toy_truncation_table.py --model "$OUT/paper" --out "$OUT/paper_$1" --device cuda
}
if [ "${SKIP_PAPER:-0}" != 1 ]; then
    paper 1250 2>&1 | tee "$OUT/paper_1250.log"
    paper 5000 --extend 2>&1 | tee "$OUT/paper_5000.log"
    cp "$OUT/paper/history.csv" "$OUT/paper_history.csv" 2>/dev/null
    cp "$OUT/paper_1250/toy_truncation.csv" "$OUT/paper_1250_truncation.csv" 2>/dev/null
    cp "$OUT/paper_5000/toy_truncation.csv" "$OUT/paper_5000_truncation.csv" 2>/dev/null
fi
if [ "${SKIP_ENGINE:-0}" != 1 ]; then
    timeout 240 python3 benchmarks/bench_sweep_engine.py --shape 1.4b --device cuda --repeats 1 \
        --svd-method auto 2>&1 | grep -v -i warn | tee "$OUT/engine_1.4b.log"
fi
if [ "${SKIP_PROJECTION:-0}" != 1 ]; then
    timeout 200 python3 benchmarks/project_checkpoint_study.py --device cuda --shape 1.4b --checkpoints 2 \
        --no-validate --json "$OUT/projection_1.4b.json" 2>&1 | grep -v -i warn | tee "$OUT/projection_1.4b.log"
fi
