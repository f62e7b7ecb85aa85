#!/usr/bin/env bash
# The device checks, as one script (run from the repository root on a GPU machine):
#   1. the `paper` preset (5000 iterations, bf16 autocast) with its evaluation history;
#   2. (the training-step benchmark at paper shapes is benchmarks/run_all.sh cuda);
#   3. the toy truncation table on the paper-trained model;
#   4. the truncation study on a Pythia-1.4B-shaped random model vs a naive LASER loop.
# Outputs go to $OUT (or ./gpu_out). Needs transformer-lens importable (see docs/benchmarks.md).
set -u -o pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, mechtrunc; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
start=$(date +%s)
python -m mechtrunc.cli toy train --preset paper --device cuda --precision bf16 --out "$OUT/paper" --no-progress 2>&1 | tee "$OUT/paper_train.log"
echo "paper preset wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/paper_train.log"
rm -f "$OUT/paper/checkpoint.pt"
python analyses/toy_truncation_table.py --model "$OUT/paper" --out "$OUT" --device cuda 2>&1 | tee "$OUT/paper_table.log"
python benchmarks/bench_pythia_study.py --device cuda --shape 1.4b 2>&1 | grep -v -i warn | tee "$OUT/pythia_gpu.log"
