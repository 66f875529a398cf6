#!/usr/bin/env bash
# The latency table in README: dense vs STTABT (keep 0.3, untrained ApproxNet ÷8 with one head: the
# cheapest option in benchmarks/approx_cost.py), batch-1 ONNX exports, `sttabt-edge bench --vs`
# interleaved in worker processes, 2 threads, with ONNX Runtime's thread spinning off (the default),
# on (--spin), and on with warm-cache blocks (--block 5). Writes benchmarks/results/bench_*.json
# (latency) and export_*.json (analytic FLOPs, ORT node counts after optimisation).
# Run it on a quiet machine: a busy neighbour changes the ratios by more than the effects measured.
set -e
cd "$(dirname "$0")/.."
source "${VENV:-.venv}/bin/activate"
D=${BENCH_DIR:-/tmp/sttabt-bench}; mkdir -p $D
R=benchmarks/results
DEIT=../shared/models/deit-tiny-imagenet; IMG=../shared/data/imagenet-sample
MINI=../shared/models/minilm-l6-sst2; SST=../shared/data/glue/SST-2/dev.tsv
APPROX="--keep-ratio 0.3 --approx untrained --approx-factor 8 --approx-heads 1"
sttabt-edge export --model $DEIT --method dense --batch 1 --latency-runs 0 --calib $IMG --out $D/deit_dense.onnx \
    --json $R/export_deit_dense.json > $D/log1 2>&1
sttabt-edge export --model $DEIT $APPROX --batch 1 --latency-runs 0 --calib $IMG --out $D/deit_sttabt.onnx \
    --json $R/export_deit_sttabt.json > $D/log2 2>&1
sttabt-edge export --model $MINI --method dense --batch 1 --latency-runs 0 --calib $SST --out $D/minilm_dense.onnx \
    --json $R/export_minilm_dense.json > $D/log3 2>&1
sttabt-edge export --model $MINI $APPROX --batch 1 --latency-runs 0 --calib $SST --out $D/minilm_sttabt.onnx \
    --json $R/export_minilm_sttabt.json > $D/log4 2>&1
# three settings: spinning off (A B A B), --spin (A B A B), --spin --block 5 (A x5 B x5 per round, cold
# first run of each block dropped: warm caches, as on a device that runs one model)
for MODE in "--no-spin" "--spin" "--spin --block 5"; do
    S=$(echo "$MODE" | sed -e 's/--no-spin//' -e 's/--spin/_spin/' -e 's/ --block /_block/')
    sttabt-edge bench $D/deit_sttabt.onnx --vs $D/deit_dense.onnx --threads 2 --batch 1 --runs 100 $MODE \
        --json $R/bench_deit$S.json --plot $R/bench_deit$S.png | tail -2
    for L in 64 128; do
        sttabt-edge bench $D/minilm_sttabt.onnx --vs $D/minilm_dense.onnx --threads 2 --batch 1 --seq-len $L \
            --runs 100 $MODE --json $R/bench_minilm_$L$S.json | tail -2
    done
done
