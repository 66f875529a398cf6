#!/usr/bin/env bash
# SST-2 (MiniLM-SST2, dev 872): the concrete variants on one budget, with the distilled ÷4 ApproxNet of
# scripts/distil_sst2.sh: ours (straight-through) with the union and the constant init schedules, and the
# official variant (its one shared init), each at target retention 0.3 for STEPS (500) steps at batch 32, plus the
# training-free union top-k at the same retention. Retention is calibrated on unlabeled dev inputs.
#   bash scripts/concrete_variants_sst2.sh [APPROX_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
approx=${1:-/work/runs/approx-sst2/approx_f4_h12}
steps=${2:-500}
for spec in "ste union" "official shared" "ste constant"; do
    set -- $spec
    start=$(date +%s)
    .venv/bin/python benchmarks/train_sst2.py --budget medium --methods concrete sttabt-topk --targets 0.3 \
        --approx "$approx" --sparse-steps "$steps" --calib-on eval --concrete "$1" --init-schedule "$2" \
        --work "/tmp/sttabt-concrete-variants/$1_$2" \
        --out "benchmarks/results/concrete_variants_sst2_$1_$2.json"
    echo "concrete $1 $2: $(( $(date +%s) - start )) s"
done
