#!/usr/bin/env bash
# The CPU recipe for a trained STTABT DeiT-Tiny, one CLI command per step (docs/training.md, "DeiT-Tiny on a CPU").
#
#   scripts/recipe_deit.sh BUDGET OUT [TARGET ...]      BUDGET: smoke | medium | full; TARGETs default 0.5
#
# 1. `train approx`: the ÷8 one-head ApproxNet, strong augmentation (benchmarks/recipes/deit_approx.json).
# 2. `train concrete` per retention target, function matching (benchmarks/recipes/deit_function_matching.json):
#    no labels' loss, the teacher sees the student's exact mixed view, the retention held through the soft
#    phase by a Lagrange multiplier; the step schedule is benchmarks/recipes/deit_concrete_<budget>.json.
# Each training step ends with an evaluation on the 500 held-out images (classes the training half never shows),
# with real removal; `metrics.jsonl` in each run dir has it every eval_every steps (accuracy against minutes).
#
# Budgets on one thread of this 2-core CPU (OMP_NUM_THREADS=1; the other core stays free):
#   full    ~27 min ApproxNet (800 steps) + ~60 min per target (700 concrete steps of 32 views)
#   medium  the same ApproxNet + ~17 min per target (200 steps)
#   smoke   a few steps of each at batch 4 on 16 evaluation images: checks the commands (CI), not accuracy
# Every step resumes (--resume) from OUT, so an interrupted recipe continues where it stopped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
MODEL=$SHARED/models/deit-tiny-imagenet
DATA=$SHARED/data/imagenet-sample
RECIPES=benchmarks/recipes

budget=${1:?usage: recipe_deit.sh smoke|medium|full OUT [TARGET ...]}
out=${2:?usage: recipe_deit.sh smoke|medium|full OUT [TARGET ...]}
shift 2
targets=("${@:-0.5}")
case $budget in
    smoke) schedule=medium small=(--steps 5 --batch-size 4 --max-eval-samples 16 --save-every 0) ;;
    medium | full) schedule=$budget small=() ;;
    *) echo "error: budget must be smoke, medium or full, got '$budget'" >&2; exit 2 ;;
esac
mkdir -p "$out"

start=$(date +%s)
"$BIN/sttabt-edge" train approx --model "$MODEL" --data "$DATA" --out "$out/approx" --factor 8 --heads 1 \
    --config $RECIPES/deit_approx.json "${small[@]}" --resume > "$out/approx.json"
echo "approx: $(( $(date +%s) - start )) s, held-out $(python3 -c "import json,sys;r=json.load(open('$out/approx.json'));print({k: round(v, 3) for k, v in r.get('eval', r).items() if isinstance(v, float)})")"

for t in "${targets[@]}"; do
    start=$(date +%s)
    run=$out/concrete_r${t}
    "$BIN/sttabt-edge" train concrete --model "$MODEL" --approx "$out/approx" --data "$DATA" --out "$run" \
        --target-retention "$t" --config $RECIPES/deit_concrete_$schedule.json \
        --sparse-config $RECIPES/deit_function_matching.json "${small[@]}" --resume > "$run.train.json"
    echo "concrete $t: $(( $(date +%s) - start )) s, $(python3 -c "import json;e=json.load(open('$run.train.json'))['eval'];print(f\"held-out top-1 {100 * e['accuracy']:.1f}% at retention {e['retention']:.3f}\")")"
done
