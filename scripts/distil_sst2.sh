#!/usr/bin/env bash
# The SST-2 ApproxNets of the full budget: ÷4 (all 12 heads) and ÷8 (one head), each distilled for
# 5 epochs of SST-2 train at lr 1e-4, clip 0.5 (official recipe: AdamW 1e-4, 15 epochs, clip 0.5).
# Resumable: rerun the same command and each run continues from its latest checkpoint.
#   bash scripts/distil_sst2.sh [WORK_DIR]        (default /tmp/sttabt-approx-sst2)
# About 35 min (÷4) + 25 min (÷8) on one core of the project's 2-core VM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=${1:-/tmp/sttabt-approx-sst2}
threads=${THREADS:-1}
mkdir -p "$work"
for spec in "4 12" "8 1"; do
    set -- $spec
    out="$work/approx_f$1_h$2"
    resume=(); [ -d "$out/checkpoints" ] && resume=(--resume)
    start=$(date +%s)
    OMP_NUM_THREADS=$threads .venv/bin/sttabt-edge train approx --model ../shared/models/minilm-l6-sst2 \
        --data ../shared/data/glue/SST-2 --out "$out" --factor "$1" --heads "$2" \
        --config benchmarks/recipes/approx_sst2.json "${resume[@]}" > "$out.log" 2>&1
    echo "approx f$1 h$2: $(( $(date +%s) - start )) s" >> "$work/wall_times.txt"
done
