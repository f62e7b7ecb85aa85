#!/usr/bin/env bash
# Run every benchmark; each prints a table and a final "RESULT <name> ratio=<x> target=<y> PASS|FAIL" line.
#
#   bash benchmarks/run_all.sh            # CPU (the defaults of each script)
#   bash benchmarks/run_all.sh cuda       # GPU: also the paper-sized training step (fp32 and tf32)
#   CHECK=--check bash benchmarks/run_all.sh   # exit non-zero if any target is missed
#
# Extra arguments after the device are passed to every script (e.g. --threads 1).
set -u -o pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
device="${1:-cpu}"
shift || true
py="${PYTHON:-python}"
check="${CHECK:-}"
status=0
run() {
    echo
    echo "================================================================================"
    echo "\$ $py $*"
    echo "================================================================================"
    "$py" "$@" $check 2>&1 | grep -v -i "warning" | tee -a "$log" || status=1
}
run benchmarks/bench_generator.py --device "$device" "$@"
run benchmarks/bench_train_step.py --device "$device" --preset cpu "$@"
if [[ "$device" == cuda* ]]; then
    run benchmarks/bench_train_step.py --device "$device" --preset paper --profile "$@"
    run benchmarks/bench_train_step.py --device "$device" --preset paper --precision tf32 "$@"
fi
run benchmarks/bench_hook_overhead.py --device "$device" --breakdown "$@"
echo
echo "summary:"
grep '^RESULT' "$log"
exit $status
